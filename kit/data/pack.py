"""The packed image cache: a split's images decoded once, resized to S x S, kept on disk as one raw uint8 file.

Decoding every image on every run is the slow part of a CPU epoch, and a decoded dataset can outgrow RAM (ISIC 2024
at 128 px is 19.7 GB), so a pack lives on disk and is read through ``np.memmap``: it costs page cache, not process
memory, and DataLoader workers share it. A pack is a folder:

    images.u8      N x S x S x 3 uint8; row i is the image of row i of ids.csv
    ids.csv        the row order: ``id``, and for a folder of image files each file's ``size`` and ``mtime_ns``
    manifest.json  format, kit version, competition, split, size, resize method, N, the source fingerprint and the
                   chunk layout; ``complete: true`` only once the pack is verified
    done.u8        while building only: one byte per chunk of rows, set once that chunk's rows are on disk

A pack whose source changed (a file's size or mtime, the HDF5 file, the id list) is stale: ``open_pack`` refuses it
naming what changed, ``ensure_pack`` rebuilds it and says why. A killed build resumes at its first unfinished chunk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from kit import __version__
from kit.competitions import Competition, get_competition
from kit.data.readers import FolderStore, Hdf5Store, ImageStore, check_images_exist, fit_square, open_store
from kit.errors import ConfigError, DataError
from kit.io import take_lock, write_csv_atomic, write_text_atomic
from kit.progress import Progress

logger = logging.getLogger(__name__)  # `logger`: the functions below take a `log` callable (kit pack's own)

FORMAT = 1
IMAGES, IDS, MANIFEST, DONE, LOCK = "images.u8", "ids.csv", "manifest.json", "done.u8", ".lock"
RESIZE = ("JPEG decoded at the smallest DCT scale with both sides >= S, then cv2.INTER_AREA down / "
          "cv2.INTER_LINEAR up to S x S")
MAX_CHUNK_ROWS = 256
CHUNK_BYTES = 64 << 20  # caps a chunk of 512 px rows at ~85 rows: a few chunk buffers in flight stay small
IN_FLIGHT = 3  # chunks decoding at once: the pool always has queued work while the main thread writes one
VERIFY_ROWS = 8
KAGGLE_WORKING = "/kaggle/working"  # KIT_KAGGLE_WORKING moves it, as it does for the kernels (tried off Kaggle)


class PackError(DataError):
    """A pack that cannot be used as it is; ``reason`` is the bare cause (what changed, what is missing)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class StalePackError(PackError):
    """The images, the ids or the layout changed since the pack was built."""


class IncompletePackError(PackError):
    """The build has not finished (interrupted, or still running): ``ensure_pack`` resumes it."""


# ---------------------------------------------------------------------------------------------------------------
# Where packs live


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (or in its nearest existing parent, where it would be made).

    Tried for real: a read-only mount such as Kaggle's /kaggle/input refuses even root, whom os.access waves
    through."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=".kit-probe-", dir=probe)
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def default_cache_dir(data_dir: str | Path) -> Path:
    """$KIT_CACHE_DIR; else /kaggle/working/kit-cache on Kaggle (the input is read-only); else
    <data_dir>/.kit-cache when writable; else ~/.cache/kit."""
    env = os.environ.get("KIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    working = Path(os.environ.get("KIT_KAGGLE_WORKING", KAGGLE_WORKING))
    if working.is_dir():
        return working / "kit-cache"
    local = Path(data_dir).resolve() / ".kit-cache"
    if _writable(local):
        return local
    return Path.home() / ".cache" / "kit"


def pack_path(spec: str | Competition, data_dir: str | Path, split: str, size: int,
              cache_dir: str | Path | None = None) -> Path:
    """The pack folder: ``<cache>/<competition>-<split>-<size>px-<hash of the resolved data folder>``."""
    spec = get_competition(spec)
    if split not in ("train", "test"):
        raise ConfigError(f"split must be train or test, got '{split}'")
    if int(size) < 1:
        raise ConfigError(f"pack size must be a positive number of pixels, got {size}")
    resolved = Path(data_dir).resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(resolved)
    return root / f"{spec.name}-{split}-{int(size)}px-{tag}"


# ---------------------------------------------------------------------------------------------------------------
# The source fingerprint


@dataclass
class Source:
    """What a pack was decoded from. ``table``: id (+ size, mtime_ns per file for a folder), in row order."""

    kind: str
    location: str
    table: pd.DataFrame
    info: dict

    @property
    def digest(self) -> str:
        return self.info["digest"]


def _sha(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def fingerprint(store: ImageStore, ids: Sequence[str]) -> Source:
    """Hash of (id, size, mtime_ns) of every image file, or of an HDF5 file's size, mtime and key list."""
    if isinstance(store, Hdf5Store):
        st = store.path.stat()
        keys = store.keys()
        info = {"kind": "hdf5", "location": str(store.path.resolve()), "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "keys_sha256": _sha(keys), "n_keys": len(keys)}
        info["digest"] = _sha([str(info[k]) for k in ("size", "mtime_ns", "keys_sha256")] + list(ids))
        return Source("hdf5", info["location"], pd.DataFrame({"id": list(ids)}), info)
    if not isinstance(store, FolderStore):
        raise ConfigError(f"cannot pack images from a {type(store).__name__}")
    sizes, mtimes = np.empty(len(ids), np.int64), np.empty(len(ids), np.int64)
    for i, key in enumerate(ids):
        try:
            st = os.stat(store.path(key))
        except FileNotFoundError:
            raise DataError(f"{store.path(key)}: image file not found") from None
        sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
    table = pd.DataFrame({"id": list(ids), "size": sizes, "mtime_ns": mtimes})
    digest = _sha([f"{k}\t{s}\t{m}" for k, s, m in zip(ids, sizes.tolist(), mtimes.tolist(), strict=True)])
    info = {"kind": "dir", "location": str(store.root.resolve()), "ext": store.ext, "digest": digest}
    return Source("dir", info["location"], table, info)


def _first(items: Sequence[str]) -> str:
    return ", ".join(str(x) for x in list(items)[:3])


def describe_ids_change(old: Sequence[str], new: Sequence[str]) -> str | None:
    """'ids changed: 2 added (first: a, b), 1 removed (first: c)', or None when the sets are equal."""
    old_set, new_set = set(old), set(new)
    if old_set == new_set:
        return None
    added = [k for k in new if k not in old_set]
    removed = [k for k in old if k not in new_set]
    parts = [f"{len(added)} added" + (f" (first: {_first(added)})" if added else ""),
             f"{len(removed)} removed" + (f" (first: {_first(removed)})" if removed else "")]
    return "ids changed: " + ", ".join(parts)


def describe_source_change(old_info: dict, old_table: pd.DataFrame, new: Source) -> str | None:
    """One phrase naming what changed between a pack's source and ``new`` (same ids, same order), or None."""
    if old_info.get("digest") == new.digest:
        return None
    if old_info.get("location") != new.location or old_info.get("kind") != new.kind:
        return f"the images moved from {old_info.get('location')} to {new.location}"
    if new.kind == "hdf5":
        if old_info["size"] != new.info["size"]:
            return f"{new.location} changed: {old_info['size']} -> {new.info['size']} bytes"
        if old_info["keys_sha256"] != new.info["keys_sha256"]:
            return f"{new.location} changed: its key list differs ({old_info['n_keys']} -> {new.info['n_keys']} keys)"
        return f"{new.location} was modified since the pack was built (mtime changed)"
    if "size" not in old_table.columns or len(old_table) != len(new.table):
        return "the image files changed"
    size_diff = old_table["size"].to_numpy() != new.table["size"].to_numpy()
    changed = size_diff | (old_table["mtime_ns"].to_numpy() != new.table["mtime_ns"].to_numpy())
    if not changed.any():
        return "the image files changed"
    i = int(np.flatnonzero(changed)[0])
    path = Path(new.location) / f"{new.table['id'].iloc[i]}{new.info.get('ext', '')}"
    what = (f"size {old_table['size'].iloc[i]} -> {new.table['size'].iloc[i]} bytes" if size_diff[i]
            else "modified since the pack was built")
    count = int(changed.sum())
    return f"{count} image file{'s' * (count > 1)} changed, first: {path} ({what})"


# ---------------------------------------------------------------------------------------------------------------
# The pack


class PackRows:
    """Rows of images.u8 read one ``pread`` each: through the page cache as a memmap read is, but nothing stays mapped
    into the process. A memmap's touched pages count in the RSS of every process that reads it (the kernel maps
    whole large folios per fault: 640 random rows mapped 0.7 GB of a 1 GB pack), so a long epoch over a 20 GB pack
    would look like a 20 GB process to Kaggle's memory monitor. Pickles as its path (DataLoader workers reopen it)."""

    def __init__(self, path: Path, n: int, size: int):
        self.path, self.shape = Path(path), (int(n), int(size), int(size), 3)
        self.row_bytes = int(size) * int(size) * 3
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i) -> np.ndarray:
        i = int(i)
        if not 0 <= i < self.shape[0]:
            raise IndexError(f"row {i} of a pack of {self.shape[0]} images")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)  # pread has no file position: safe to share with forks
        buf = bytearray(self.row_bytes)  # writable: transforms may work in place
        if os.preadv(self._fd, [buf], i * self.row_bytes) != self.row_bytes:
            raise PackError(f"{self.path}: row {i} is cut short; run `kit pack --rebuild`", "truncated")
        return np.frombuffer(buf, dtype=np.uint8).reshape(self.shape[1:])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class Pack:
    """A complete, verified pack: ``images`` (N x S x S x 3 read-only memmap), ``ids`` (row order), ``status``
    ('built', 'resumed' or 'reused'). Pickles as its path, so a spawned DataLoader worker maps the file again
    instead of receiving a copy of the pixels."""

    def __init__(self, path: Path, manifest: dict, ids: list[str], status: str = "reused"):
        self.path = Path(path)
        self.manifest = manifest
        self.ids = ids
        self.status = status
        n, size = manifest["n"], manifest["size"]
        self.images = np.memmap(self.path / IMAGES, dtype=np.uint8, mode="r", shape=(n, size, size, 3))
        self._lookup: pd.Index | None = None

    def __reduce__(self):
        return Pack, (self.path, self.manifest, self.ids, self.status)

    @property
    def rows(self) -> PackRows:
        """Row-by-row reads for Datasets (no pages mapped into the reader); ``images`` is the memmap of it all."""
        return PackRows(self.path / IMAGES, self.manifest["n"], self.manifest["size"])

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)

    def disk_bytes(self) -> int:
        """Bytes the pack's files occupy on disk (allocated blocks)."""
        return sum(p.stat().st_blocks * 512 for p in self.path.iterdir() if p.is_file())

    def index(self, ids: Sequence[str]) -> np.ndarray:
        """The row of each id; raise naming the ids the pack does not hold."""
        if self._lookup is None:
            self._lookup = pd.Index(self.ids)
        rows = self._lookup.get_indexer(list(ids))
        if (rows < 0).any():
            missing = [k for k, r in zip(ids, rows, strict=True) if r < 0]
            raise DataError(f"{self.path}: {len(missing)} of {len(rows)} ids are not in the pack, first: "
                            f"{_first(missing)}")
        return rows


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _read_ids(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path / IDS, dtype={"id": str}, keep_default_na=False)
    except (FileNotFoundError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise IncompletePackError(f"{path / IDS}: missing or unreadable ({e}); run `kit pack` to rebuild it",
                                  "its id index is missing") from e


def _check_layout(path: Path, manifest: dict, spec: Competition, split: str, size: int) -> None:
    """Raise when the manifest is not a complete pack of this format and layout, or images.u8 is cut short."""
    if manifest.get("format") != FORMAT:
        raise StalePackError(f"{path}: pack format {manifest.get('format')}, this kit reads {FORMAT}; "
                             "run `kit pack` to rebuild it", f"pack format {manifest.get('format')} != {FORMAT}")
    want = {"competition": spec.name, "split": split, "size": size}
    for key, value in want.items():
        if manifest.get(key) != value:
            raise StalePackError(f"{path}: built for {key} {manifest.get(key)}, not {value}",
                                 f"{key} {manifest.get(key)} != {value}")
    if manifest.get("complete") is not True:
        raise IncompletePackError(f"{path}: the pack is incomplete (its build was interrupted or is still running);"
                                  " run `kit pack` to resume it", "incomplete")
    expected = manifest["n"] * size * size * 3
    try:
        actual = (path / IMAGES).stat().st_size
    except FileNotFoundError:
        actual = -1
    if actual != expected:
        what = "missing" if actual < 0 else f"{actual} bytes, expected {manifest['n']} x {size} x {size} x 3 = {expected}"
        raise PackError(f"{path / IMAGES} is truncated or damaged ({what}); delete {path} or run "
                        "`kit pack --rebuild`", f"{IMAGES} is truncated ({what})")


def open_pack(spec: str | Competition, data_dir: str | Path, split: str, size: int,
              ids: Sequence[str] | None = None, cache_dir: str | Path | None = None) -> Pack:
    """The complete pack of (competition, data folder, split, size), checked against the images as they are now.

    Raises ``PackError`` (one line) when there is none, ``IncompletePackError`` when its build has not finished,
    ``StalePackError`` naming what changed (a file, the HDF5 file, ``ids`` when given, the layout) and a
    ``PackError`` when images.u8 is truncated."""
    spec = get_competition(spec)
    path = pack_path(spec, data_dir, split, size, cache_dir)
    manifest = _read_manifest(path)
    if manifest is None:
        raise PackError(f"no pack at {path}: run `kit pack --competition {spec.name} --data {data_dir} "
                        f"--split {split} --size {size}`", "no pack")
    _check_layout(path, manifest, spec, split, int(size))
    table = _read_ids(path)
    pack_ids = table["id"].tolist()
    if len(pack_ids) != manifest["n"]:
        raise PackError(f"{path / IDS}: {len(pack_ids)} ids, the manifest says {manifest['n']}",
                        "ids.csv does not match the manifest")
    if ids is not None:
        change = describe_ids_change(pack_ids, [str(k) for k in ids])
        if change:
            raise StalePackError(f"{path} is stale: {change}; run `kit pack` to rebuild it", change)
    store = open_store(spec, data_dir, split)
    change = describe_source_change(manifest["source"], table, fingerprint(store, pack_ids))
    if change:
        raise StalePackError(f"{path} is stale: {change}; run `kit pack` to rebuild it", change)
    return Pack(path, manifest, pack_ids, "reused")


# ---------------------------------------------------------------------------------------------------------------
# Building


def human_bytes(nbytes: float) -> str:
    """1234567 -> '1.2 MB' (powers of 1000, as disk sizes are sold)."""
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def _chunk_rows(size: int) -> int:
    return max(1, min(MAX_CHUNK_ROWS, CHUNK_BYTES // (size * size * 3)))


def _decode_row(store: ImageStore, key: str, size: int) -> np.ndarray:
    """What a pack row holds: the image decoded (JPEGs at a reduced DCT scale >= size) and resized to size."""
    return fit_square(store.read(key, min_side=size), size)


def _preallocate(fd: int, nbytes: int) -> None:
    """Reserve every block now, so a full disk fails here, not halfway through hours of decoding; a file system
    without fallocate (some network mounts) gets a sparse file instead."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    os.ftruncate(fd, nbytes)


def _no_space(path: Path, nbytes: int, shape: tuple, e: OSError) -> PackError:
    n, s = shape[0], shape[1]
    return PackError(f"no space left for the pack in {path}: it needs {nbytes} bytes ({n} x {s} x {s} x 3 = "
                     f"{human_bytes(nbytes)}); free space there or put the packs elsewhere: KIT_CACHE_DIR (kit pack "
                     f"--cache-dir) ({e.strerror or e})", "disk full")


def _allocate(path: Path, shape: tuple) -> None:
    nbytes = int(np.prod(shape))
    fd = os.open(path / IMAGES, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _preallocate(fd, nbytes)
    except OSError as e:
        os.close(fd)
        (path / IMAGES).unlink(missing_ok=True)  # a half-reserved file would only hold the space hostage
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path, nbytes, shape, e) from e
        raise PackError(f"{path / IMAGES}: cannot allocate {nbytes} bytes ({e.strerror or e})") from e
    os.close(fd)


def _write_rows(fd: int, buf: np.ndarray, offset: int) -> None:
    """pwrite, not stores into a writable memmap: a write error on a memmap page is a SIGBUS that kills the
    process, while pwrite raises an OSError that becomes a one-line error."""
    view = memoryview(buf.reshape(-1))
    while len(view):
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    os.fdatasync(fd)  # the rows are on disk before their chunk is marked done


@dataclass
class _Job:
    """What one build writes: the rows of ``ids`` at ``size``, into ``path``, in chunks of ``chunk`` rows."""

    path: Path
    store: ImageStore
    ids: list[str]
    size: int
    chunk: int

    @property
    def n_chunks(self) -> int:
        return -(-len(self.ids) // self.chunk)

    def rows(self, c: int) -> range:
        return range(c * self.chunk, min((c + 1) * self.chunk, len(self.ids)))


def _submit_chunk(pool: ThreadPoolExecutor, job: _Job, c: int) -> tuple[int, np.ndarray, list[Future]]:
    rows = job.rows(c)
    buf = np.empty((len(rows), job.size, job.size, 3), np.uint8)

    def decode(j: int, i: int) -> None:
        buf[j] = _decode_row(job.store, job.ids[i], job.size)

    return c, buf, [pool.submit(decode, j, i) for j, i in enumerate(rows)]


def _decode_chunks(job: _Job, done: np.ndarray, workers: int, progress: Progress) -> int:
    """Decode the chunks not yet done in parallel threads (libjpeg-turbo and tifffile release the GIL), write each
    chunk's rows, then mark it done. Returns the number of images decoded."""
    row_bytes = job.size * job.size * 3
    delay = float(os.environ.get("KIT_PACK_TEST_DELAY") or 0)  # tests only: time to kill a build mid-way
    todo = deque(np.flatnonzero(done == 0).tolist())
    pending: deque = deque()
    decoded = 0
    fd = os.open(job.path / IMAGES, os.O_WRONLY)
    done_fd = os.open(job.path / DONE, os.O_WRONLY)
    pool = ThreadPoolExecutor(workers)
    try:
        while todo or pending:
            while todo and len(pending) < IN_FLIGHT:
                pending.append(_submit_chunk(pool, job, todo.popleft()))
            c, buf, futures = pending.popleft()
            for f in futures:
                f.result()  # a bad image raises the reader's one-line DataError naming the file
            if delay:
                time.sleep(delay)
            _write_rows(fd, buf, c * job.chunk * row_bytes)
            os.pwrite(done_fd, b"\x01", c)
            done[c] = 1
            decoded += len(buf)
            progress.update(len(buf))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        os.close(fd)
        os.close(done_fd)
    return decoded


def _verify(job: _Job, done: np.ndarray) -> int:
    """Before ``complete``: the file has its full size, every chunk is done, and a few random rows equal a fresh
    decode of their image (a wrong offset or a torn write would show). A bad row's chunk is marked undone so that
    the next run decodes it again. Returns the number of rows checked."""
    n, s = len(job.ids), job.size
    actual = (job.path / IMAGES).stat().st_size
    if actual != n * s * s * 3:
        raise PackError(f"{job.path / IMAGES}: {actual} bytes after packing, expected {n * s * s * 3}",
                        f"{IMAGES} is truncated")
    if not done.all():
        raise IncompletePackError(f"{job.path}: {int((done == 0).sum())} chunks were not packed", "incomplete")
    images = np.memmap(job.path / IMAGES, dtype=np.uint8, mode="r", shape=(n, s, s, 3))
    rows = np.random.default_rng().choice(n, size=min(VERIFY_ROWS, n), replace=False)
    for i in rows.tolist():
        if not np.array_equal(images[i], _decode_row(job.store, job.ids[i], s)):
            with open(job.path / DONE, "r+b") as f:
                f.seek(i // job.chunk)
                f.write(b"\x00")
            raise PackError(f"{job.path}: row {i} ({job.store.ref(job.ids[i])}) does not match its image after "
                            "packing; run `kit pack` again to re-decode its chunk", "verification failed")
    return len(rows)


def _manifest(spec: Competition, split: str, job: _Job, source: Source, data_dir: Path) -> dict:
    return {"format": FORMAT, "kit_version": __version__, "competition": spec.name, "split": split,
            "size": job.size, "n": len(job.ids), "shape": [len(job.ids), job.size, job.size, 3], "dtype": "uint8",
            "resize": RESIZE, "chunk_rows": job.chunk, "data_dir": str(data_dir), "source": source.info,
            "ids_sha256": _sha(job.ids), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "complete": False}


def _resume_state(job: _Job, manifest: dict, source: Source) -> tuple[np.ndarray | None, str | None]:
    """(done bitmap, None) when the folder holds an interrupted build of exactly this job; else (None, why not),
    why being None when there is no interrupted build to speak of."""
    old = _read_manifest(job.path)
    if old is None or old.get("complete") is True:
        return None, None
    for key in ("format", "competition", "split", "size", "n", "chunk_rows", "ids_sha256"):
        if old.get(key) != manifest[key]:
            what = "ids" if key == "ids_sha256" else key
            return None, f"the interrupted build had other {what}"
    if old.get("source", {}).get("digest") != source.digest:
        try:
            old_table = pd.read_csv(job.path / IDS, dtype={"id": str}, keep_default_na=False)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            old_table = pd.DataFrame({"id": []})
        change = describe_source_change(old.get("source", {}), old_table, source) or "the images changed"
        return None, f"{change} since the interrupted build"
    try:
        images_ok = (job.path / IMAGES).stat().st_size == len(job.ids) * job.size * job.size * 3
        done = np.fromfile(job.path / DONE, dtype=np.uint8)
    except FileNotFoundError:
        return None, "the interrupted build's files are missing"
    if not images_ok or len(done) != job.n_chunks:
        return None, "the interrupted build's files do not have the expected sizes"
    return done.copy(), None


def _start_fresh(job: _Job, manifest: dict, source: Source) -> np.ndarray:
    # The old manifest goes first, so that from here on nothing in the folder looks complete. Files are unlinked,
    # not truncated: a process still reading the old pack through its memmap keeps its pixels (no SIGBUS).
    for name in (MANIFEST, DONE, IMAGES, IDS):
        (job.path / name).unlink(missing_ok=True)
    write_csv_atomic(source.table, job.path / IDS)
    write_text_atomic(job.path / MANIFEST, json.dumps(manifest, indent=1))
    _allocate(job.path, (len(job.ids), job.size, job.size, 3))
    done = np.zeros(job.n_chunks, np.uint8)
    (job.path / DONE).write_bytes(done.tobytes())
    return done


def _start(job: _Job, manifest: dict, source: Source, log: Callable[[str], None]) -> tuple[np.ndarray, str]:
    """Resume an interrupted build of the same source, or start over saying why: (done bitmap, status)."""
    done, why = _resume_state(job, manifest, source)
    if done is not None:
        rows = sum(len(job.rows(c)) for c in np.flatnonzero(done).tolist())
        log(f"resumed {job.path}: {int(done.sum())} of {job.n_chunks} chunks ({rows} of {len(job.ids)} images) "
            "were already packed")
        return done, "resumed"
    if why:
        log(f"{job.path}: {why}; starting over")
    nbytes = len(job.ids) * job.size * job.size * 3
    log(f"packing {len(job.ids)} images at {job.size}x{job.size} px into {job.path} ({human_bytes(nbytes)})")
    return _start_fresh(job, manifest, source), "built"


def _build(spec: Competition, data_dir: Path, split: str, size: int, ids: list[str], path: Path, workers: int,
           progress: bool, log: Callable[[str], None]) -> Pack:
    """Build or resume the pack in ``path`` (its lock held), verify it, then mark it complete."""
    store = open_store(spec, data_dir, split)
    check_images_exist(store, ids)
    source = fingerprint(store, ids)
    job = _Job(path, store, ids, size, _chunk_rows(size))
    manifest = _manifest(spec, split, job, source, data_dir.resolve())
    done, status = _start(job, manifest, source, log)
    done_rows = sum(len(job.rows(c)) for c in np.flatnonzero(done).tolist())
    bar = Progress(len(ids), "packed", unit="img", done=done_rows, enabled=progress)
    start = time.monotonic()
    try:
        decoded = _decode_chunks(job, done, workers, bar)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path, len(ids) * size * size * 3, (len(ids), size), e) from e
        raise PackError(f"{path}: cannot write the pack ({e})") from e
    finally:
        bar.close()
    seconds = time.monotonic() - start
    checked = _verify(job, done)
    change = describe_source_change(source.info, source.table, fingerprint(store, ids))
    if change:
        raise StalePackError(f"{path}: the images changed while packing ({change}); run `kit pack` again", change)
    manifest.update(complete=True, verified_rows=checked,
                    finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_text_atomic(path / MANIFEST, json.dumps(manifest, indent=1))
    (path / DONE).unlink(missing_ok=True)
    log(f"decoded {decoded} images in {seconds:.1f}s ({decoded / max(seconds, 1e-9):.0f} img/s); "
        f"{checked} rows verified")
    return Pack(path, manifest, ids, status)


@contextmanager
def _locked(path: Path, log: Callable[[str], None]) -> Iterator[bool]:
    """Hold the pack folder's build lock (flock: it dies with its process, so a killed build leaves no stale
    lock). Yields whether another process held it first, i.e. may have built the pack meanwhile."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, waited = take_lock(path / LOCK, on_busy=lambda: log(f"waiting for another process that is building {path}"))
    except OSError as e:
        raise PackError(f"cannot create the pack folder {path} ({e.strerror or e}); set KIT_CACHE_DIR to a "
                        "writable folder (kit pack --cache-dir)") from e
    try:
        yield waited
    finally:
        os.close(fd)


def _prepare(spec: str | Competition, data_dir: str | Path, split: str, size: int, ids: Sequence[str],
             cache_dir: str | Path | None) -> tuple[Competition, list[str], Path]:
    spec = get_competition(spec)
    path = pack_path(spec, data_dir, split, size, cache_dir)
    ids = [str(k) for k in ids]
    if not ids:
        raise DataError(f"no {split} ids to pack for {spec.name}")
    dup = pd.Index(ids).duplicated()
    if dup.any():
        raise DataError(f"{int(dup.sum())} duplicate ids to pack, first: {ids[int(np.flatnonzero(dup)[0])]}")
    return spec, ids, path


def _workers(workers: int | None) -> int:
    return workers or min(8, os.cpu_count() or 1)


def build_pack(spec: str | Competition, data_dir: str | Path, split: str, size: int, ids: Sequence[str],
               cache_dir: str | Path | None = None, workers: int | None = None, progress: bool = True,
               log: Callable[[str], None] = logger.info) -> Pack:
    """Build the pack of ``ids`` (its row order) at ``size`` x ``size``, resuming an interrupted build of the same
    source; a complete pack there is rebuilt. Returns the verified pack (status 'built' or 'resumed')."""
    spec, ids, path = _prepare(spec, data_dir, split, size, ids, cache_dir)
    with _locked(path, log):
        return _build(spec, Path(data_dir), split, int(size), ids, path, _workers(workers), progress, log)


def ensure_pack(spec: str | Competition, data_dir: str | Path, split: str, size: int, ids: Sequence[str],
                cache_dir: str | Path | None = None, workers: int | None = None, progress: bool = True,
                rebuild: bool = False, log: Callable[[str], None] = logger.info) -> Pack:
    """The valid pack of ``ids`` (same set; rows in the pack's order, map them with ``Pack.index``), reused when it
    is valid, resumed when its build was interrupted, rebuilt with a line naming what changed when it is stale."""
    spec, ids, path = _prepare(spec, data_dir, split, size, ids, cache_dir)
    if not rebuild:
        try:
            return open_pack(spec, data_dir, split, size, ids, cache_dir)
        except IncompletePackError:
            pass  # the build resumes it and says so
        except StalePackError as e:
            log(f"{path} is stale ({e.reason}): rebuilding")
        except PackError as e:
            if e.reason != "no pack":
                log(f"{path}: {e.reason}: rebuilding")
    with _locked(path, log) as waited:
        if waited and not rebuild:
            try:
                return open_pack(spec, data_dir, split, size, ids, cache_dir)  # the other process finished it
            except PackError:
                pass
        return _build(spec, Path(data_dir), split, int(size), ids, path, _workers(workers), progress, log)


def split_pack(spec: str | Competition, data_dir: str | Path, split: str, size: int,
               ids: Sequence[str] | None = None, cache_dir: str | Path | None = None, workers: int | None = None,
               rebuild: bool = False, log: Callable[[str], None] = logger.info) -> Pack:
    """The pack of a whole split as `kit pack` makes it: every labelled training id, or the test list.

    Train, predict, tune and the kernel all ask for this one set whatever subset they read (a fold, an excluded id,
    the OOF rows), so one pack per (split, size) serves them all; they map their ids with ``Pack.index``. ``ids``
    saves reading the split's table again when the caller has it (the full table, not a subset)."""
    from kit.data.labels import load_test_table, load_train_table

    spec = get_competition(spec)
    if ids is None:
        table = load_train_table(spec, data_dir) if split == "train" else load_test_table(spec, data_dir)
        ids = table["id"].tolist()
    pack = ensure_pack(spec, data_dir, split, size, ids, cache_dir=cache_dir, workers=workers, rebuild=rebuild,
                       log=log)
    log(f"images: {len(pack)} {split} images at {size}x{size} px, {pack.status} pack {pack.path} "
        f"({human_bytes(pack.disk_bytes())})")
    return pack
