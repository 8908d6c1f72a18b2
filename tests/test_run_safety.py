"""A run folder has one writer at a time, and a checkpoint from elsewhere is data, never code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kit.checkpoint import load_checkpoint
from kit.cli import main
from kit.errors import KitError
from kit.records import RunInfo
from kit.rundir import RunDir, RunLockedError

HCD = "histopathologic-cancer-detection"
TINY = ["model.name=test_resnet", "model.img_size=32", "n_folds=2", "train.batch_size=16", "train.epochs=2",
        "train.warmup_epochs=0",
        "train.device=cpu"]


def _sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def _kit(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kit.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


# ------------------------------------------------------------------------------------------------ the lock
def test_a_second_writer_stops_naming_the_holder(tmp_path, demo_data):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom kit.rundir import RunDir\n"
                               "with RunDir(sys.argv[1]).writing():\n    print('locked', flush=True)\n"
                               "    time.sleep(60)\n", str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"{run} is being written by pid {holder.pid} on .*\(-c "):
            with RunDir(run).writing():
                pass
        trainer = _kit("train", "--competition", HCD, "--data", str(demo_data(HCD, n=40)), "--out", str(run),
                       *_sets(*TINY))
        out, err = trainer.communicate(timeout=120)
        assert trainer.returncode == 1
        assert err.count("\n") == 1 and f"being written by pid {holder.pid}" in err, err
        assert not (run / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    with RunDir(run).writing():  # the holder died: its lock died with it
        pass


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.writing(), run.writing():
        run.save(RunInfo(None, []))
    with pytest.raises(RuntimeError, match="without its lock"):
        run.save(RunInfo(None, []))


def test_two_trainers_started_together_leave_one_consistent_run(tmp_path, demo_data):
    data, run = demo_data(HCD, n=64), tmp_path / "run"
    procs = {seed: _kit("train", "--competition", HCD, "--data", str(data), "--out", str(run),
                        *_sets(*TINY, "train.epochs=3", f"train.seed={seed}")) for seed in (1, 2)}
    results = {seed: (p.wait(timeout=300), p.stderr.read()) for seed, p in procs.items()}
    winners = [seed for seed, (rc, _) in results.items() if rc == 0]
    assert len(winners) == 1, results
    loser_rc, loser_err = results[3 - winners[0]]
    assert loser_rc == 1 and loser_err.count("\n") == 1
    assert "being written by pid" in loser_err or "already holds a run" in loser_err, loser_err
    # the folder is the winner's alone: its config, and checkpoints trained with it
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == winners[0]
    for k in (0, 1):
        assert load_checkpoint(run / f"fold{k}" / "best.pt").config["train"]["seed"] == winners[0]
    assert (run / "scores.json").is_file()


def test_overwrite_replaces_a_run_and_a_failed_start_leaves_nothing(tmp_path, demo_data, capsys):
    data, run = demo_data(HCD, n=40), tmp_path / "run"
    base = ["train", "--competition", HCD, "--data", str(data), "--out", str(run), *_sets(*TINY, "train.epochs=1")]
    # a weights file that is not a state dict fails when the model is built, before anything is written, so the
    # corrected command just works
    (tmp_path / "garbage.pth").write_bytes(b"garbage" * 100)
    assert main([*base, "--set", "model.weights=" + str(tmp_path / "garbage.pth")]) == 1
    assert "cannot be read as a state dict" in capsys.readouterr().err and not run.exists()
    assert main(base) == 0
    assert main(base) == 1 and "already holds a run" in capsys.readouterr().err
    (run / "fold0" / "stray.txt").write_text("from the old run")
    assert main([*base, "--overwrite"]) == 0
    assert not (run / "fold0" / "stray.txt").exists() and (run / "fold0" / "best.pt").is_file()


# ----------------------------------------------------------------------------------------------- checkpoints
class _Payload:
    """Unpickling this runs a shell command: what a malicious best.pt from a shared dataset would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(path: Path, marker: Path) -> None:
    torch.save({"format": "kit-checkpoint", "version": 2, "model_state": {}, "evil": _Payload(marker)}, path)


@pytest.fixture
def run_copy(predicted_runs, tmp_path) -> Path:
    copy = RunDir(shutil.copytree(predicted_runs["hcd_a"].run_dir, tmp_path / "run"))
    original = RunDir(predicted_runs["hcd_a"].run_dir)
    with copy.writing():  # run.json's data folder is relative to the run folder, which moved
        copy.save_info(original.data_dir(), original.load(RunInfo).folds)
    return copy.path


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_a_planted_payload_does_not_run_and_gives_one_line(tmp_path, run_copy, name):
    marker = tmp_path / "pwned"
    _plant(run_copy / "fold0" / name, marker)
    with pytest.raises(KitError, match=rf"fold0/{name}: refused: it needs unpickling of arbitrary Python objects "
                       r"\(posix.system\), which could run code"):
        load_checkpoint(run_copy / "fold0" / name)
    assert not marker.exists()


def test_predict_kernel_and_resume_refuse_a_planted_checkpoint(tmp_path, run_copy, capsys):
    marker = tmp_path / "pwned"
    _plant(run_copy / "fold0" / "best.pt", marker)
    assert main(["predict", str(run_copy), "--tta", "1", "--submissions", str(tmp_path / "subs"), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "best.pt: refused" in err
    data = str(RunDir(run_copy).data_dir())
    assert main(["kernel", "run", "--competition", HCD, "--data", data, "--weights", str(run_copy),
                 "--working", str(tmp_path / "working"), "--tta", "1"]) == 1
    assert "best.pt: refused" in capsys.readouterr().err
    # an interrupted fold resumes from last.pt: a planted one is refused before training goes on
    (run_copy / "fold1" / "result.json").unlink()
    _plant(run_copy / "fold1" / "last.pt", marker)
    assert main(["train", "--resume", str(run_copy)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "last.pt: refused" in err
    assert not marker.exists()


def test_old_and_foreign_checkpoints_get_a_clear_message(tmp_path, run_copy):
    ckpt = load_checkpoint(run_copy / "fold0" / "best.pt")
    old = tmp_path / "old.pt"  # kit 0.1's best.pt: a plain dict without the format marker
    torch.save({"model": {"name": "test_resnet"}, "model_state": ckpt.model_state, "config": ckpt.config}, old)
    with pytest.raises(KitError, match="a checkpoint of an earlier kit version"):
        load_checkpoint(old)
    foreign = tmp_path / "resnet.pth"
    torch.save(ckpt.model_state, foreign)
    with pytest.raises(KitError, match="not a kit checkpoint"):
        load_checkpoint(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file at all" * 10)
    with pytest.raises(KitError, match="not a readable checkpoint"):
        load_checkpoint(garbage)


def test_a_run_folder_check_is_one_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "absent"):
        with pytest.raises(KitError, match="not a kit run folder|not found"):
            RunDir.open(path)
