"""kit report: the PNGs of a binary and a multiclass run exist and are valid images; the confusion counts are right."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from kit.cli import main
from kit.errors import KitError
from kit.report import confusion_matrix, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_side=200):
    assert path.is_file() and path.stat().st_size > 5_000, path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()  # raises on a truncated or corrupt file
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5  # something is drawn, not a blank canvas


@pytest.mark.parametrize("name, expected", [
    ("hcd_a", ["roc.png", "training_curves.png"]),
    ("multi", ["confusion.png", "recall.png", "training_curves.png"]),
])
def test_report_writes_valid_pngs(predicted_runs, tmp_path, name, expected):
    run = shutil.copytree(predicted_runs[name].run_dir, tmp_path / name)
    shutil.rmtree(run / "report")  # drawn by kit predict already; draw it again from the files alone
    paths = write_report(run)
    assert sorted(p.name for p in paths) == sorted(expected)
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted(expected)  # no temp files left
    for p in paths:
        _assert_png(p)


def test_predict_draws_the_report_too(predicted_runs):
    assert (predicted_runs["hcd_b"].run_dir / "report" / "roc.png").is_file()
    assert (predicted_runs["multi"].run_dir / "report" / "confusion.png").is_file()


def test_report_of_a_run_whose_oof_csv_is_not_gathered_yet(predicted_runs, tmp_path):
    run = shutil.copytree(predicted_runs["hcd_a"].run_dir, tmp_path / "partial")
    (run / "oof.csv").unlink()
    (run / "oof_tta.csv").unlink()
    (run / "fold1" / "history.csv").unlink()
    paths = write_report(run)
    assert [p.name for p in paths] == ["roc.png", "training_curves.png"]
    for p in paths:
        _assert_png(p)


def test_confusion_matrix_counts_match_sklearn():
    rng = np.random.default_rng(0)
    target, pred = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    np.testing.assert_array_equal(confusion_matrix(target, pred, 7),
                                  sk_confusion_matrix(target, pred, labels=list(range(7))))


def test_cli_report_lists_the_files(predicted_runs, tmp_path, capsys):
    run = shutil.copytree(predicted_runs["multi"].run_dir, tmp_path / "multi")
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(run / "report" / n) for n in ("confusion.png", "recall.png", "training_curves.png")]


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(KitError, match="not a kit run folder"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 1
    assert "not a kit run folder" in capsys.readouterr().err
