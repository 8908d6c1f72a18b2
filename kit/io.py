"""The file primitives every stage shares, each written once: atomic writes (a reader never sees a half-written
file, and an interrupted write loses nothing), atomic directory swaps, figure saving, JSON reading, SHA-256 of
files, and the ``flock`` behind the run folder's and the pack's locks."""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

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


WRITE_ERRNOS = {errno.ENOSPC: "no space left on its disk: free some, then run the command again",
                errno.EDQUOT: "the disk quota is used up: free some space, then run the command again",
                errno.EROFS: "its file system is read-only: choose a writable place",
                errno.EACCES: "permission denied: choose a folder you may write to",
                errno.EPERM: "permission denied: choose a folder you may write to",
                errno.ENOTDIR: "a file stands where a folder must be: choose another path",
                errno.EEXIST: "a file stands where a folder must be: choose another path"}
"""The errors of a write that the user, not kit, must fix, and what to do; files written before are intact."""


def write_error(path: str | os.PathLike, error: OSError,
                temporary: str | os.PathLike | None = None) -> Exception | None:
    """The one-line WriteError for an OSError of a write to ``path`` (None when it is not a write refusal);
    the file the error names is added when it is another one (a parent that is a file), not ``temporary``."""
    from kit.errors import WriteError

    what = WRITE_ERRNOS.get(error.errno)
    if what is None:
        return None
    named = str(error.filename) if error.filename else ""
    ours = named in (str(path), str(temporary)) or Path(named).name.startswith(f".{Path(path).name}.")
    culprit = f" ({named})" if named and not ours else ""
    return WriteError(f"cannot write {path}{culprit}: {what}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds. A refused
    write (disk full, read-only, no permission) raises one WriteError naming ``path``; the old file stays."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, _file_mode())
        os.replace(tmp_path, path)  # atomic on POSIX when both are on one filesystem, hence the same folder
    except OSError as e:
        refused = write_error(path, e, tmp_path)
        if refused is None:
            raise
        raise refused from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def replace_dir(staged: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Put the finished folder ``staged`` in place of ``out`` (same file system): a reader sees the old folder or the
    new one, never half of one."""
    staged, out = Path(staged), Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staged, out)
        shutil.rmtree(old)
    else:
        os.replace(staged, out)
    return out


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110, **savefig) -> Path:
    """Write the matplotlib figure ``fig`` as a PNG at ``path``, atomically (a figure made with
    ``matplotlib.figure.Figure`` gets the Agg canvas here: no pyplot, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)  # attaches the canvas to the figure
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **savefig)
    return Path(path)


def take_lock(path: str | os.PathLike, on_busy: Callable[[], object] | None = None) -> tuple[int, bool]:
    """Open the lock file ``path`` (created if missing) and take its exclusive ``flock``, which dies with the
    process (or ``os.close``): a killed holder never leaves a stale lock. Returns (its descriptor, whether another
    process held it). A held lock is waited for after ``on_busy()`` when ``on_busy`` is given; without it the
    descriptor comes back unlocked, for the caller to read who holds it, and close."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, False
    except BlockingIOError:
        if on_busy is None:
            return fd, True
    try:
        on_busy()
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd, True


def read_json_file(path: str | os.PathLike, missing: str) -> dict:
    """The JSON object in ``path``; a missing file raises KitError(``missing``), bad JSON one line naming the file."""
    from kit.errors import KitError

    path = Path(path)
    if not path.is_file():
        raise KitError(missing)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise KitError(f"{path} is not valid JSON (line {e.lineno})") from None
    if not isinstance(data, dict):
        raise KitError(f"{path} holds no JSON object")
    return data


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike, **kwargs) -> Path:
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)


class Tee(io.TextIOBase):
    """A text stream that writes to ``terminal`` and to whatever file ``sink()`` returns at that moment (or not)."""

    def __init__(self, terminal: TextIO, sink: Callable[[], TextIO | None]):
        super().__init__()
        self.terminal, self.sink = terminal, sink

    def write(self, text: str) -> int:
        n = self.terminal.write(text)
        log = self.sink()
        if log is not None:
            log.write(text)
            log.flush()  # a run killed at any moment keeps what it printed
        return len(text) if n is None else n

    def flush(self) -> None:
        self.terminal.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    def fileno(self) -> int:
        return self.terminal.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.terminal, "encoding", "utf-8")


@contextmanager
def tee_output(sink: Callable[[], TextIO | None]) -> Iterator[None]:
    """Copy everything printed to stdout and stderr into ``sink()`` for the block (progress bars excepted: they
    write to ``Tee.terminal``)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Tee(saved[0], sink), Tee(saved[1], sink)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


# ------------------------------------------------------------------------------------------------ portability
def portable_path(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """``path`` as kit stores it in a run folder ``base``: relative to ``base`` (the folder can move together with
    what it points to), or only the file name where the relative path would climb into the user's home from
    outside it (a run in /tmp pointing into /home/alice): nothing of the home directory is stored.
    """
    target, base = Path(path).resolve(), Path(base).resolve()
    home = Path.home().resolve()
    if target.is_relative_to(home) and not base.is_relative_to(home):
        return target.name
    return os.path.relpath(target, base)


def resolve_stored_path(stored: str | os.PathLike, base: str | os.PathLike) -> Path:
    """The inverse of :func:`portable_path`: a relative path is taken from ``base`` (absolute ones, written by
    earlier kit versions, stay as they are)."""
    stored = Path(stored)
    return stored if stored.is_absolute() else Path(os.path.normpath(Path(base).resolve() / stored))


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The file's SHA-256 (cached while its size and mtime stay the same: checkpoints record it every epoch)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
