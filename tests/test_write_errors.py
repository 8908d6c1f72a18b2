"""Faults of the disk and one silent accept, each one clear line naming the path or column (issue 23, item 6).

Tests run as root, which ignores file permissions, so a read-only place is simulated without mounts: a path under a
regular file (the OS refuses to make a folder there: ENOTDIR / EEXIST, as for any unwritable parent), or an OSError
with the errno a read-only or full disk gives, raised by a monkeypatched OS call at the point where the real
write fails. A full disk was first seen for real on a 13 MB tmpfs: pandas' close() raised ENOSPC in kit predict.
"""

from __future__ import annotations

import errno
import os
import shutil

import pandas as pd
import pytest
from conftest import TINY

from kit.cli import main
from kit.io import atomic_path, write_csv_atomic

HCD = "histopathologic-cancer-detection"


def one_line(capsys, *argv: str) -> str:
    """Run ``kit argv``: it fails with one line, no traceback; return that line."""
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kit {argv[0]}: error: "), err
    return lines[0]


def test_folds_out_into_a_place_that_cannot_be_a_folder(demo_data, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "folds.csv"
    line = one_line(capsys, "folds", "-c", HCD, "--data", str(demo_data(HCD, n=20)), "--out", str(out))
    assert f"cannot write {out}" in line and "a file stands where a folder must be" in line


def test_folds_out_into_a_read_only_folder(demo_data, tmp_path, capsys, monkeypatch):
    real_mkstemp = __import__("tempfile").mkstemp

    def read_only(*args, dir=None, **kw):
        if str(dir) == str(tmp_path / "ro"):
            raise OSError(errno.EROFS, "Read-only file system", os.path.join(str(dir), ".folds.csv.x.tmp"))
        return real_mkstemp(*args, dir=dir, **kw)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr("kit.io.tempfile.mkstemp", read_only)
    out = tmp_path / "ro" / "folds.csv"
    line = one_line(capsys, "folds", "-c", HCD, "--data", str(demo_data(HCD, n=20)), "--out", str(out))
    assert line == f"kit folds: error: cannot write {out}: its file system is read-only: choose a writable place"
    assert not out.exists()


def test_train_out_under_a_read_only_folder_writes_nothing(demo_data, tmp_path, capsys, monkeypatch):
    data = demo_data(HCD, n=20)
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "run"
    line = one_line(capsys, "train", "-c", HCD, "--data", str(data), "--out", str(out), "--no-progress",
                    *[a for kv in TINY + ["train.epochs=1"] for a in ("--set", kv)])
    assert f"cannot write {out}" in line and "a file stands where a folder must be" in line

    real_mkdir = type(tmp_path).mkdir

    def denied(self, *args, **kw):
        if str(self).startswith(str(tmp_path / "ro")):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kw)

    monkeypatch.setattr(type(tmp_path), "mkdir", denied)
    out = tmp_path / "ro" / "run"
    line = one_line(capsys, "train", "-c", HCD, "--data", str(data), "--out", str(out), "--no-progress",
                    *[a for kv in TINY + ["train.epochs=1"] for a in ("--set", kv)])
    assert f"cannot write {out}" in line and "permission denied" in line
    assert not (tmp_path / "ro").exists()


def test_predict_on_a_full_disk_names_the_file_and_keeps_the_old_one(predicted_runs, tmp_path, capsys,
                                                                   monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(predicted_runs["hcd_a"].run_dir, run)
    before = (run / "oof_tta.csv").read_bytes()
    real_to_csv = pd.DataFrame.to_csv

    def full(self, path=None, *args, **kw):
        if path is not None and str(path).startswith(str(run)):
            real_to_csv(self, path, *args, **kw)  # the bytes go out, then the close finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_to_csv(self, path, *args, **kw)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    line = one_line(capsys, "predict", str(run), "--tta", "2", "--no-report")
    assert line.startswith(f"kit predict: error: cannot write {run}/") and "no space left on its disk" in line
    assert (run / "oof_tta.csv").read_bytes() == before  # the old file is whole
    assert not list(run.rglob(".*.tmp"))  # and no half-written temporary is left behind


def test_atomic_path_passes_on_errors_that_are_not_refused_writes(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "x.csv"):
            raise FileNotFoundError(errno.ENOENT, "No such file", "some-input.csv")
    write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "ok.csv")
    assert (tmp_path / "ok.csv").read_text() == "a\n1\n"


def test_a_ground_truth_with_a_class_the_competition_lacks_is_refused(shared_data, tmp_path, capsys):
    """The real ISIC 2018 ground truth plus ISIC 2019's UNK, all zeros: the column would be dropped silently."""
    real = shared_data / "isic-2018-task3"
    data = tmp_path / "isic18"
    data.mkdir()
    for name in ("ISIC2018_Task3_Training_GroundTruth.csv", "HAM10000_metadata.csv"):
        shutil.copy(real / name, data / name)
    gt = data / "ISIC2018_Task3_Training_GroundTruth.csv"
    assert main(["folds", "-c", "isic-2018-task3", "--data", str(data), "--out", str(tmp_path / "folds.csv")]) == 0
    df = pd.read_csv(gt, dtype=str)
    df.insert(len(df.columns), "UNK", "0.0")
    df.to_csv(gt, index=False)
    line = one_line(capsys, "folds", "-c", "isic-2018-task3", "--data", str(data), "--out", str(tmp_path / "f.csv"))
    assert line == (f"kit folds: error: {gt}: column 'UNK' holds 0/1 labels like a class, but isic-2018-task3 has "
                    "no class 'UNK' (its classes: MEL, NV, BCC, AKIEC, BKL, DF, VASC): remove the column, or train "
                    "the competition it belongs to")
    assert not (tmp_path / "f.csv").exists()
