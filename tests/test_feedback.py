"""Feedback on long work and portable run folders, on one tiny run trained by ``kit train``: the start line,
progress lines with fold, epoch and overall ETA where stderr is not a terminal, train.log, and no trace of the user's
home directory in run.json, config.yaml, the checkpoints or the bundle's copy of the run."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from kit.cli import main
from kit.rundir import RunDir

HCD = "histopathologic-cancer-detection"
TINY = ["model.name=test_resnet", "model.img_size=32", "n_folds=2", "train.batch_size=8", "train.epochs=2",
        "train.warmup_epochs=0", "train.device=cpu"]


@pytest.fixture(scope="module")
def home_run(demo_data, tmp_path_factory):
    """Data and weights inside a (fake) home directory, the run folder outside it; trained once, output kept."""
    import shutil

    import timm

    root = tmp_path_factory.mktemp("feedback")
    home = root / "home" / "alice"
    data = home / "data" / "hcd"
    shutil.copytree(demo_data(HCD, n=40), data)
    weights = home / "weights" / "test_resnet.pth"
    weights.parent.mkdir(parents=True)
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), weights)
    run = root / "runs" / "r1"
    mp = pytest.MonkeyPatch()
    mp.setenv("HOME", str(home))
    mp.setenv("KIT_PROGRESS_EVERY", "0")
    capture = _Capture()
    with capture:
        code = main(["train", "--competition", HCD, "--data", str(data), "--out", str(run),
                     *[a for s in (*TINY, f"model.weights={weights}") for a in ("--set", s)]])
    mp.undo()
    assert code == 0, capture.err[-2000:]
    return home, run, capture


class _Capture:
    """stdout and stderr to strings (capsys is function-scoped); neither is a terminal."""

    def __enter__(self):
        import io
        import sys

        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
        return self

    def __exit__(self, *exc):
        import sys

        self.out, self.err = sys.stdout.getvalue(), sys.stderr.getvalue()
        sys.stdout, sys.stderr = self.saved


def test_a_start_line_names_device_precision_images_folds_model_and_weights(home_run):
    _, run, cap = home_run
    first = next(line for line in cap.out.splitlines() if line.startswith("kit train "))  # after the pack's lines
    assert first.startswith(f"kit train {run}: cpu, fp32; 40 images (from the pack, 32 px); folds 0,1 of 2; "
                            "2 epochs; test_resnet, weights test_resnet.pth"), first


def test_progress_lines_with_fold_epoch_and_overall_eta_when_not_a_terminal(home_run):
    _, _, cap = home_run
    lines = cap.err.splitlines()
    steps = [s for s in lines if s.startswith("fold 1 epoch 2/2: ") and " steps (" in s]
    assert steps and "ETA" in steps[-1] and "; overall " in steps[-1] and "loss " in steps[-1], lines[:5]
    assert any(s.startswith("fold 0 epoch 1 validation: ") and " imgs (" in s for s in lines)
    assert "run ETA" in cap.out  # the epoch lines carry it too


def test_train_log_holds_everything_printed(home_run):
    _, run, cap = home_run
    log = (run / "train.log").read_text()
    assert log.startswith("# ") and any(line.startswith("kit train ") for line in log.splitlines()[1:6])
    out = cap.out.splitlines()
    started = next(i for i, line in enumerate(out) if line.startswith("kit train "))  # the pack's lines come before
    err = [s for s in cap.err.splitlines() if s and not s.startswith("packed")]  # the pack's progress, before too
    for line in out[started:] + err:
        assert line in log, line
    assert "packed: " in cap.err and "packed: " not in log  # the pack is built before the run folder exists
    assert "CV" in log  # the final table, printed after the training itself


def test_a_process_without_the_lock_writes_nothing_into_the_log(home_run):
    _, run, _ = home_run
    before = (run / "train.log").read_text()
    with RunDir(run).logging():  # a second kit train refused at the lock: it never holds it
        print("a line of another process")
    assert (run / "train.log").read_text() == before
    with RunDir(run).writing(), RunDir(run).logging():
        print("a line of the writer")
    assert (run / "train.log").read_text().endswith("a line of the writer\n")


def test_run_json_config_and_checkpoints_hold_nothing_of_home(home_run):
    home, run, _ = home_run
    info = json.loads((run / "run.json").read_text())
    assert info["data"] == "hcd"  # the data lives in home, the run outside: only the name is kept
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["weights"] == "test_resnet.pth"
    assert saved["kit"]["weights"]["source"] == "file:test_resnet.pth" and len(saved["kit"]["weights"]["sha256"]) == 64
    for path in [run / "run.json", run / "config.yaml", *run.glob("fold*/*.pt"), *run.glob("*.json")]:
        assert str(home).encode() not in path.read_bytes(), path
        assert b"alice" not in path.read_bytes(), path
    ckpt = torch.load(run / "fold0" / "best.pt", weights_only=True)
    assert ckpt["config"]["model"]["weights"] == "test_resnet.pth"
    assert ckpt["extra"]["weights_sha256"] == saved["kit"]["weights"]["sha256"]


def test_the_bundled_copy_of_the_run_holds_nothing_of_home(home_run, tmp_path):
    from kit.bundle import _copy_checkpoints

    home, run, _ = home_run
    _copy_checkpoints(RunDir.open(run), [0, 1], tmp_path / "checkpoints")
    for path in (tmp_path / "checkpoints").rglob("*"):
        if path.is_file():
            assert b"alice" not in path.read_bytes(), path


def test_paths_inside_the_same_tree_are_stored_relative_and_resolved_back(demo_data, tmp_path, monkeypatch):
    from kit.config import load_config
    from kit.io import portable_path, resolve_stored_path

    monkeypatch.setenv("HOME", str(tmp_path))
    project = tmp_path / "project"
    weights = project / "weights" / "w.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"not read here")
    run = RunDir(project / "runs" / "r")
    assert portable_path(weights, run.path) == os.path.join("..", "..", "weights", "w.pth")
    cfg = load_config(HCD, overrides=["model.name=test_resnet"])
    from dataclasses import replace

    cfg = replace(cfg, model=replace(cfg.model, weights=str(weights)))
    with run.writing():
        run.write_config(cfg)
        run.save_info(project / "data", [0])
    assert yaml.safe_load(run.config_path.read_text())["model"]["weights"] == "../../weights/w.pth"
    monkeypatch.chdir(tmp_path)  # read back from elsewhere: still the same files
    assert RunDir(project / "runs" / "r").config().model.weights == str(weights)
    assert RunDir(project / "runs" / "r").data_dir() == project / "data"
    assert resolve_stored_path("/abs/old/data", run.path) == resolve_stored_path("/abs/old/data", tmp_path)


def test_prediction_reports_folds_x_views_with_an_overall_eta(home_run, tmp_path, monkeypatch, capsys):
    import shutil

    home, run, _ = home_run
    copy = shutil.copytree(run, tmp_path / "r1")
    monkeypatch.setenv("KIT_PROGRESS_EVERY", "0")
    assert main(["predict", str(copy), "--data", str(home / "data" / "hcd"), "--tta", "2", "--no-report",
                 "--submissions", str(tmp_path / "subs")]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"kit predict {copy}: cpu; folds 0,1; ")
    lines = captured.err.splitlines()
    assert any(s.startswith("fold 1 (2/2) ") and " test images, TTA x2: " in s and " views (" in s
               and "; overall " in s for s in lines), lines
    assert any("out-of-fold images, TTA x2" in s for s in lines)
    assert lines[-1].endswith("; overall 100%, ETA 0s"), lines[-1]
