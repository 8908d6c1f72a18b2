"""The run page report/index.html, opened in a real headless Chromium: it renders the scores and the config, every
picture in report/ decodes (naturalWidth > 0, the error grids and CAMs of other commands too), the browser logs no
error and asks for nothing but the file itself and its inlined data."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from headless_browser import HeadlessChromium, find_chromium
from PIL import Image

from kit.report import write_report
from kit.run_page import PAGE, pictures
from kit.rundir import RunDir

CHROMIUM = find_chromium()
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: bash scripts/install_chromium.sh")


def _with_extra_pictures(run, shared_data):
    """report/ also holds pictures other commands write (an error grid, a CAM in a subfolder): real ISIC images."""
    images = sorted((shared_data / "isic-2018-task3" / "ISIC2018_Task3_Training_Input").glob("*.jpg"))[:2]
    (run / "report" / "cam").mkdir(parents=True, exist_ok=True)
    Image.open(images[0]).save(run / "report" / "errors_no_tta.png")
    shutil.copy(images[1], run / "report" / "cam" / "gradcam_ISIC.jpg")


@needs_browser
@pytest.mark.parametrize("name", ["hcd_a", "multi"])
def test_the_page_renders_every_picture_offline_without_errors(predicted_runs, shared_data, tmp_path, name):
    run = shutil.copytree(predicted_runs[name].run_dir, tmp_path / name)
    _with_extra_pictures(run, shared_data)
    page_path = write_report(run)[-1]
    assert page_path == run / "report" / PAGE
    n_pictures = len(pictures(RunDir(run)))
    with HeadlessChromium(CHROMIUM, tmp_path) as browser:
        page = browser.open(page_path)
    assert page.errors == []
    assert len(page.images) == n_pictures >= 4
    assert all(i["complete"] and i["width"] > 0 for i in page.images), page.images
    assert {i["alt"] for i in page.images} >= {"errors_no_tta.png", "cam/gradcam_ISIC.jpg", "training_curves.png"}
    # offline: the browser asked for the page and its inlined data, nothing from a network
    assert page.requested and all(u.startswith(("file://", "data:")) for u in page.requested), page.requested
    assert not [link for link in page.links if not link.startswith(("data:", "#"))]
    scores = json.loads((run / "scores.json").read_text())
    assert run.name in page.title
    assert "Scores per fold" in page.text and "CV (pooled)" in page.text and f"{scores['cv']:.4f}" in page.text
    assert "TTA x" in page.text and f"competition: {RunDir(run).competition().name}" in page.text
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot)).convert("L"))
    assert shot.shape[0] > 1000 and shot.std() > 5  # a long page with something drawn on it


@needs_browser
def test_the_browser_check_sees_a_broken_picture(tmp_path):
    page_path = tmp_path / "broken.html"
    page_path.write_text("<!DOCTYPE html><html><head><title>t</title></head><body><img src=missing.png alt=m>"
                         "</body></html>")
    with HeadlessChromium(CHROMIUM, tmp_path) as browser:
        page = browser.open(page_path)
    assert page.image_widths == [0]
    assert page.errors  # the failed load of missing.png


def test_a_run_without_tta_says_how_to_get_it(predicted_runs, tmp_path):
    run = shutil.copytree(predicted_runs["hcd_a"].run_dir, tmp_path / "plain")
    for name in ("oof_tta.csv", "scores_tta.json"):
        (run / name).unlink()
    shutil.rmtree(run / "report")
    html = write_report(run)[-1].read_text()
    assert "No TTA scores yet" in html and "kit predict" in html
    assert html.count("<img ") == 2  # roc.png and training_curves.png


@needs_browser
def test_the_readme_screenshot_script_takes_the_page(predicted_runs, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    run = shutil.copytree(predicted_runs["hcd_a"].run_dir, tmp_path / "hcd")
    script = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_run_page.sh"
    env = {**os.environ, "KIT": f"{sys.executable} -m kit"}
    subprocess.run(["bash", str(script), str(run), str(tmp_path / "page.png")], check=True, env=env, timeout=300)
    with Image.open(tmp_path / "page.png") as im:
        assert im.size == (1200, 1500) and np.asarray(im.convert("L")).std() > 5
