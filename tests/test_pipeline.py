"""The pipeline layer (kit/pipeline.py): kit predict and the offline kernel share one chain (byte-identical
submissions), and a later step never throws away the predictions of an earlier one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kit.cli import main
from kit.records import RunInfo
from kit.rundir import RunDir

ISIC2018 = "isic-2018-task3"


def _copy(predicted_runs, name: str, dest: Path) -> RunDir:
    """A copy of a session run (they are shared with other tests), its data folder still found from run.json."""
    source = RunDir(predicted_runs[name].run_dir)
    run = RunDir(shutil.copytree(source.path, dest))
    with run.writing():
        run.save_info(source.data_dir(), source.load(RunInfo).folds)
    return run


def _only_submission(folder: Path) -> Path:
    [path] = sorted(folder.glob("*.csv"))
    return path


def test_the_kernel_and_kit_predict_write_the_same_bytes(predicted_runs, tmp_path, capsys):
    """The multiclass run with decision weights applied (--decision on): kit predict fits them on the OOF, the
    kernel (test images only) applies the saved ones; one chain, so one file."""
    run = _copy(predicted_runs, "multi", tmp_path / "multi")
    assert main(["predict", str(run.path), "--tta", "2", "--decision", "on", "--no-report",
                 "--out", str(tmp_path / "local")]) == 0
    assert json.loads((run.path / "decision.json").read_text())["applied"]
    assert main(["kernel", "run", "--competition", ISIC2018, "--data", str(run.data_dir()), "--weights",
                 str(run.path), "--working", str(tmp_path / "working"), "--tta", "2"]) == 0
    capsys.readouterr()
    kernel = (tmp_path / "working" / "submission.csv").read_bytes()
    assert kernel == _only_submission(tmp_path / "local").read_bytes()
    assert len(kernel.splitlines()) == 16  # header and the 15 test images


def _single_fold(predicted_runs, tmp_path) -> RunDir:
    """The multiclass run as `kit train --folds 0` leaves it: fold 0 only."""
    run = _copy(predicted_runs, "multi", tmp_path / "one-fold")
    shutil.rmtree(run.fold_dir(1))
    with run.writing():
        run.save_info(run.data_dir(), [0])
    return run


def test_a_single_fold_run_predicts_without_decision_weights_and_says_why(predicted_runs, tmp_path, capsys):
    run = _single_fold(predicted_runs, tmp_path)
    assert main(["predict", str(run.path), "--tta", "1", "--no-report", "--out", str(tmp_path / "subs")]) == 0
    out = capsys.readouterr().out
    assert "note: decision weights need out-of-fold predictions of at least 2 folds" in out and "skipped" in out
    assert len(list((tmp_path / "subs").glob("*.csv"))) == 1 and not (run.path / "decision.json").exists()


def test_an_explicit_decision_request_fails_after_the_predictions_are_saved(predicted_runs, tmp_path, capsys):
    run = _single_fold(predicted_runs, tmp_path)
    for path in run.path.glob("test_fold*.csv"):
        path.unlink()
    assert main(["predict", str(run.path), "--tta", "1", "--no-report", "--decision", "on",
                 "--out", str(tmp_path / "subs")]) == 1
    [error] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # the rest: data warnings
    assert error.startswith("kit predict: error: --decision on: decision weights need out-of-fold predictions of "
                            "at least 2 folds") and f"`kit ensemble {run.path}` writes their submission" in error
    assert (run.path / "test_fold0.csv").is_file() and (run.path / "predict.json").is_file()
    # the saved predictions make the submission without predicting again
    assert main(["ensemble", str(run.path), "--submissions", str(tmp_path / "subs")]) == 0
    assert len(list((tmp_path / "subs").glob("*.csv"))) == 1
    # a fitted blend cannot nest its CV over one fold: one line, nothing written
    assert main(["ensemble", str(run.path), "--method", "fit", "--out", str(tmp_path / "fit")]) == 1
    assert "needs out-of-fold predictions of at least 2 folds" in capsys.readouterr().err
    assert not (tmp_path / "fit").exists()


def test_predict_on_an_interrupted_run_says_to_resume_it(predicted_runs, tmp_path, capsys):
    run = _copy(predicted_runs, "hcd_a", tmp_path / "hcd")
    (run.fold_dir(1) / "result.json").unlink()
    assert main(["predict", str(run.path), "--tta", "1", "--no-report", "--out", str(tmp_path / "subs")]) == 0
    assert f"fold1 not finished (no result.json): left out; continue it with `kit train --resume {run.path}`" \
        in capsys.readouterr().out
    (run.fold_dir(0) / "result.json").unlink()
    assert main(["predict", str(run.path), "--tta", "1", "--no-report"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"continue it with `kit train --resume {run.path}`" in err
    assert "fold0, fold1 did not finish" in err and "train it with kit train first" not in err


@pytest.mark.parametrize("name", ["predict_and_submit", "ensemble_and_submit", "stack_and_submit"])
def test_the_chains_moved_to_the_pipeline_still_import_from_the_commands(name):
    import importlib

    import kit.pipeline

    command = importlib.import_module(f"kit.commands.{name.split('_')[0]}")
    assert getattr(command, name) is getattr(kit.pipeline, name)
