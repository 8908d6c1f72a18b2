"""Stopping cleanly and leaving nothing behind: SIGTERM, orphaned temporary files, file modes, bad folds files."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest

from kit.checkpoint import load_checkpoint
from kit.cli import main
from kit.io import write_text_atomic

HCD = "histopathologic-cancer-detection"
TINY = ["model.name=test_resnet", "model.img_size=32", "n_folds=2", "train.batch_size=8", "train.epochs=3",
        "train.warmup_epochs=0", "train.device=cpu"]


def _train_args(data, out, *extra: str) -> list[str]:
    sets = [a for pair in (*TINY, *extra) for a in ("--set", pair)]
    return ["train", "--competition", HCD, "--data", str(data), "--out", str(out), "--no-progress", *sets]


def test_sigterm_stops_like_ctrl_c_with_the_last_checkpoint_intact(demo_data, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "kit.cli", *_train_args(demo_data(HCD, n=160), run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run / "fold0" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not last.is_file():
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)  # what Kaggle sends at its time limit
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1].startswith("kit train: stopped by SIGTERM") and "Traceback" not in err
    assert load_checkpoint(last).training is not None  # readable, and resumable
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "scores.json").is_file()


def test_temporary_files_of_a_killed_writer_are_removed_on_resume(demo_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(demo_data(HCD, n=40), run, "train.epochs=1")) == 0
    orphans = [run / ".oof.csv.abc123.tmp", run / "fold0" / ".last.pt.xyz.tmp"]
    for path in orphans:
        path.write_bytes(b"half a file")
    (run / "fold1" / "result.json").unlink()  # something left to resume
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "removed 2 temporary files" in capsys.readouterr().out
    assert not any(p.exists() for p in orphans)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_respect_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        from kit.io import _file_mode

        _file_mode.cache_clear()
        path = write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
        _file_mode.cache_clear()
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("edit, message", [
    (lambda df: df.assign(fold=df["fold"].where(df.index != 3, "-1")), "line 5: fold '-1' is not a fold number"),
    (lambda df: pd.concat([df, df.iloc[[2]]], ignore_index=True), "duplicate ids in column 'id'"),
])
def test_a_bad_folds_file_is_one_line(demo_data, tmp_path, capsys, edit, message):
    data = demo_data(HCD, n=40)
    folds = tmp_path / "folds.csv"
    assert main(["folds", "--competition", HCD, "--data", str(data), "--out", str(folds), "--n-folds", "2"]) == 0
    edit(pd.read_csv(folds, dtype=str)).to_csv(folds, index=False)
    capsys.readouterr()
    assert main([*_train_args(data, tmp_path / "run"), "--folds-file", str(folds)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(folds) in err
