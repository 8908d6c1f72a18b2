"""Atomic file writes: a reader never sees a half-written file, and an interrupted write loses nothing."""

from __future__ import annotations

import functools
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd


@functools.cache
def _file_mode() -> int:
    """What a plain ``open()`` would create: 0o666 less the umask (mkstemp's files are 0o600, private to the owner)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


TMP_PATTERN = ".*.tmp"
"""The names of atomic_path's temporary files, so that the orphans of a killed writer can be found."""


def remove_orphans(folder: Path) -> int:
    """Delete the temporary files a killed writer left under ``folder``; call it only while no writer is active."""
    orphans = [p for p in Path(folder).rglob(TMP_PATTERN) if p.is_file()]
    for path in orphans:
        path.unlink(missing_ok=True)
    return len(orphans)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _file_mode())
        os.replace(tmp_path, path)  # atomic on POSIX when both are on one filesystem, hence the same folder
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike, **kwargs) -> Path:
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)
