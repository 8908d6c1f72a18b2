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
    ("multi", ["confusion.png", "confusion_tta.png", "recall.png", "training_curves.png"]),
])
def test_report_writes_valid_pngs(predicted_runs, tmp_path, name, expected):
    run = shutil.copytree(predicted_runs[name].run_dir, tmp_path / name)
    shutil.rmtree(run / "report")  # drawn by kit predict already; draw it again from the files alone
    paths = write_report(run)
    assert sorted(p.name for p in paths) == sorted(expected + ["index.html"])
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted(expected + ["index.html"])  # no temp files
    for p in paths[:-1]:
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
    assert [p.name for p in paths] == ["roc.png", "training_curves.png", "index.html"]
    for p in paths[:-1]:
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
    assert out == [str(run / "report" / n) for n in ("confusion.png", "recall.png", "confusion_tta.png",
                                                     "training_curves.png", "index.html")]


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(KitError, match="not a kit run folder"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 1
    assert "not a kit run folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- what the plots say
def _texts(fig) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        if ax.get_legend():
            parts += [t.get_text() for t in ax.get_legend().get_texts()]
    return "\n".join(parts)


def test_training_curves_show_validation_loss_and_learning_rate(predicted_runs):
    from kit.report import training_curves_figure
    from kit.rundir import RunDir

    run = RunDir(predicted_runs["hcd_a"].run_dir)
    fig = training_curves_figure(run.competition(), run)
    text = _texts(fig)
    assert "fold 0 validation" in text and "learning rate" in text and "validation (dashed)" in text
    lr_ax = fig.axes[2]
    np.testing.assert_allclose(lr_ax.lines[0].get_ydata(), run.history(0)["lr"])


def test_isic_2024_roc_shows_the_pauc_region_and_value():
    import pandas as pd

    from kit.competitions import get_competition
    from kit.metrics import pauc_above_tpr
    from kit.report import roc_figure

    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 200)
    oof = pd.DataFrame({"id": range(200), "fold": np.arange(200) % 2, "target": target,
                        "pred": target + rng.normal(0, 0.8, 200)})
    fig = roc_figure(get_competition("isic-2024-challenge"), oof)
    text = _texts(fig)
    assert "pauc80 region: TPR >= 0.80" in text
    assert "overall, no TTA: AUC " in text and f"pauc80 {pauc_above_tpr(target, oof['pred'].to_numpy()):.4f}" in text
    assert any(abs(p.get_y() - 0.8) < 1e-9 for p in fig.axes[0].patches)  # the shaded band starts at 0.8


def test_multiclass_plots_say_whether_they_show_tta(predicted_runs, tmp_path, monkeypatch):
    from kit import report

    drawn = {}
    monkeypatch.setattr(report, "_save", lambda fig, path: drawn.setdefault(path.name, fig) and path)
    run = shutil.copytree(predicted_runs["multi"].run_dir, tmp_path / "multi")
    write_report(run)
    assert sorted(drawn) == ["confusion.png", "confusion_tta.png", "recall.png", "training_curves.png"]
    views = len(predicted_runs["multi"].tta.views)
    assert "no TTA" in drawn["confusion.png"].axes[0].get_title()
    assert f"TTA x{views}" in drawn["confusion_tta.png"].axes[0].get_title()
    # one recall plot, both side by side, each with its balanced accuracy; the CV in every title
    recall = _texts(drawn["recall.png"])
    assert f"no TTA and TTA x{views}" in recall and recall.count("balanced accuracy") == 2
    for name in ("confusion.png", "confusion_tta.png", "recall.png"):
        assert "CV balanced_accuracy 0." in drawn[name].axes[0].get_title() or \
            "CV balanced_accuracy 1." in drawn[name].axes[0].get_title()


def test_one_epoch_curves_have_an_integer_axis_and_the_cv_in_the_title(predicted_runs):
    """The multiclass run trained one epoch: the axis is around epoch 1 alone, the figure title holds the CV, and
    the constrained layout keeps it apart from the panels' titles."""
    from kit.report import training_curves_figure
    from kit.rundir import RunDir

    run = RunDir(predicted_runs["multi"].run_dir)
    fig = training_curves_figure(run.competition(), run)
    assert fig._suptitle.get_text().endswith(f"CV balanced_accuracy {run.cv()[0]:.4f}")
    for ax in fig.axes[:3]:
        assert ax.get_xlim() == (0.5, 1.5) and [t for t in ax.get_xticks() if 0.5 <= t <= 1.5] == [1.0]
    assert fig.get_layout_engine() is not None
