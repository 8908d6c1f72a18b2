"""A checkpoint that cannot be written (a full disk, a read-only folder) is one line naming the file and the cause,
and the checkpoint already there stays intact."""

from __future__ import annotations

import errno
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from kit.checkpoint import Checkpoint, CheckpointWriteError, ModelDescription, load_checkpoint, save_checkpoint


def _ckpt(n: int, epoch: int = 1) -> Checkpoint:
    return Checkpoint(model=ModelDescription("test_resnet", 1, 32, 0.0, 0), competition="c", task="binary",
                      classes=["0", "1"], input_size=32, mean=[0.5] * 3, std=[0.5] * 3, config={"model": {}},
                      meta_encoder=None, fold=0, epoch=epoch, metric=0.5, model_state={"w": torch.zeros(n)})


DISK_FULL = """
import resource, signal, sys
from pathlib import Path
from kit.checkpoint import save_checkpoint
from kit.errors import KitError
sys.path.insert(0, sys.argv[2])
from test_checkpoint_writes import _ckpt
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # the write fails with EFBIG instead of killing the process
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # a disk that fills up at 200 kB
try:
    save_checkpoint(Path(sys.argv[1]), _ckpt(1_000_000, epoch=2))
except KitError as e:
    print(e)
    sys.exit(1)
"""


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "fold0" / "last.pt"
    save_checkpoint(path, _ckpt(10, epoch=1))
    p = subprocess.run([sys.executable, "-c", DISK_FULL, str(path), str(Path(__file__).parent)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr[-2000:]
    line = p.stdout.strip()
    assert "\n" not in line and line.startswith(f"cannot write checkpoint {path}: ")
    assert "disk is full" in line or "no space left" in line, line
    assert line.endswith("the previous checkpoint there is intact")
    assert load_checkpoint(path).epoch == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_a_read_only_folder_names_the_file_and_the_cause(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint(path, _ckpt(10, epoch=1))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # root ignores file modes: say it as the kernel would
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(path, _ckpt(10, epoch=2))
    assert str(e.value).startswith(f"cannot write checkpoint {path}: read-only file system (")
    monkeypatch.undo()
    assert load_checkpoint(path).epoch == 1


def test_the_cli_prints_one_line(tmp_path, monkeypatch, capsys):
    from kit.cli import main

    def disk_full(args):
        save_checkpoint(tmp_path / "x.pt", _ckpt(10))

    monkeypatch.setattr("kit.commands.competitions.run", disk_full)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 704 vs 598")))
    assert main(["competitions"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kit competitions: error: cannot write checkpoint {tmp_path}")
