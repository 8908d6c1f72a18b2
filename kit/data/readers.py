"""Image decoding and the stores that map an id to its pixels (a folder of files or one HDF5 file of JPEG bytes).

Every reader returns an HxWx3 uint8 RGB array; a file that cannot be decoded raises ``DataError`` naming it.
A ``min_side`` hint lets a JPEG decode at the smallest libjpeg DCT scale (1/8 .. 8/8) whose height and width both
stay >= ``min_side``: a 6000x4000 SIIM image wanted at 128 px decodes at 750x500 instead of full size, several
times faster, and the caller's resize does the rest. Without the hint every reader decodes at full size.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import numpy as np

from kit.competitions import Competition, ImageLocation
from kit.errors import DataError


def _to_rgb(img: np.ndarray, source: str) -> np.ndarray:
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3:
        raise DataError(f"{source}: expected an HxWxC image, got shape {img.shape}")
    if img.shape[-1] == 4:  # RGBA: drop alpha
        img = img[..., :3]
    if img.shape[-1] != 3:
        raise DataError(f"{source}: expected 3 colour channels, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise DataError(f"{source}: expected 8-bit pixels, got {img.dtype}")
    return np.ascontiguousarray(img)


def decode_jpeg(data: bytes, source: str, min_side: int | None = None) -> np.ndarray:
    """Decode JPEG bytes with libjpeg-turbo (simplejpeg); fall back to Pillow for what it rejects (e.g. CMYK).

    ``min_side``: decode at the smallest DCT scale whose height and width are both >= it (simplejpeg's
    ``min_height``/``min_width``); the result is never smaller than ``min_side`` unless the image itself is.
    """
    import simplejpeg

    scaled = {"min_height": min_side, "min_width": min_side} if min_side else {}
    try:
        # strict=True turns libjpeg's "premature end of data" warning into an error: a truncated file is bad input.
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, **scaled)
    except ValueError as first:
        if b"\xff\xd9" not in data[-16:]:
            raise DataError(f"{source}: cannot decode JPEG ({first}); the file looks truncated") from first
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                if min_side:
                    im.draft(None, (min_side, min_side))  # Pillow's DCT scaling: also keeps both sides >= min_side
                return _to_rgb(np.asarray(im.convert("RGB")), source)
        except Exception as second:  # Pillow raises many types for bad data
            raise DataError(f"{source}: cannot decode JPEG ({first})") from second


def fit_square(img: np.ndarray, size: int | None) -> np.ndarray:
    """Resize to ``size`` x ``size`` (INTER_AREA down, INTER_LINEAR up); ``None`` or already that size: unchanged.
    The one resize of the packed cache (kit/data/pack.py), so every reader of a pack sees the same pixels."""
    if size is None or img.shape[:2] == (size, size):
        return img
    import cv2

    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def read_tif(path: Path) -> np.ndarray:
    import tifffile

    try:
        img = tifffile.imread(path)
    except FileNotFoundError as e:
        raise DataError(f"{path}: image file not found") from e
    except Exception as e:  # tifffile raises ValueError, TiffFileError, struct.error... on corrupt files
        raise DataError(f"{path}: cannot decode TIFF ({type(e).__name__}: {e})") from e
    return _to_rgb(img, str(path))


def read_image_file(path: Path, min_side: int | None = None) -> np.ndarray:
    """Read a .tif/.tiff, .jpg/.jpeg or .png file as HxWx3 uint8 (``min_side``: see ``decode_jpeg``; other
    formats have no cheaper reduced decode and ignore it)."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return read_tif(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{path}: image file not found") from e
    if suffix in (".jpg", ".jpeg"):
        return decode_jpeg(data, str(path), min_side)
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return _to_rgb(np.asarray(im.convert("RGB")), str(path))
    except Exception as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e


class ImageStore:
    """Maps an image id to its pixels. Subclasses: ``FolderStore`` and ``Hdf5Store``."""

    location: str

    def read(self, key: str, min_side: int | None = None) -> np.ndarray:
        """The pixels of ``key``; with ``min_side`` a JPEG may come back reduced, but both sides >= min_side."""
        raise NotImplementedError

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys that have no image."""
        raise NotImplementedError

    def keys(self) -> list[str]:
        """Every id this store holds, sorted."""
        raise NotImplementedError

    def ref(self, key: str) -> str:
        """A human-readable reference to one image (its path, or file#key)."""
        raise NotImplementedError


class FolderStore(ImageStore):
    def __init__(self, root: Path, ext: str):
        self.root = Path(root)
        self.ext = ext
        self.location = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}{self.ext}"

    def ref(self, key: str) -> str:
        return str(self.path(key))

    def read(self, key: str, min_side: int | None = None) -> np.ndarray:
        return read_image_file(self.path(key), min_side)

    def keys(self) -> list[str]:
        return sorted(p.name[: -len(self.ext)] for p in self.root.iterdir() if p.name.endswith(self.ext))

    def missing(self, keys: Iterable[str]) -> list[str]:
        present = set(self.keys())  # one directory listing instead of a stat per id
        return [k for k in keys if k not in present]


class Hdf5Store(ImageStore):
    """One JPEG byte string per id (the ISIC 2024 format). The file is opened lazily, once per process, so that
    DataLoader workers each get their own handle (h5py handles cannot cross a fork safely)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.location = str(self.path)
        self._file = None

    def _h5(self):
        if self._file is None:
            import h5py

            try:
                self._file = h5py.File(self.path, "r")
            except OSError as e:
                raise DataError(f"{self.path}: cannot open HDF5 file ({e})") from e
        return self._file

    def __getstate__(self):
        return {"path": self.path, "location": self.location, "_file": None}

    def ref(self, key: str) -> str:
        return f"{self.path}#{key}"

    def read(self, key: str, min_side: int | None = None) -> np.ndarray:
        h5 = self._h5()
        if key not in h5:
            raise DataError(f"{self.path}: no key '{key}' in the HDF5 file")
        return decode_jpeg(bytes(h5[key][()]), self.ref(key), min_side)

    def keys(self) -> list[str]:
        return sorted(self._h5().keys())

    def missing(self, keys: Iterable[str]) -> list[str]:
        present = set(self._h5().keys())
        return [k for k in keys if k not in present]


def open_store(spec: Competition, data_dir: Path, split: str = "train") -> ImageStore:
    """The first image location of ``split`` that exists under ``data_dir``; an empty folder is an error."""
    data_dir = Path(data_dir)
    locations: tuple[ImageLocation, ...] = spec.train_images if split == "train" else spec.test_images
    for loc in locations:
        path = data_dir / loc.path
        if loc.kind == "hdf5" and path.is_file():
            return Hdf5Store(path)
        if loc.kind == "dir" and path.is_dir():
            store = FolderStore(path, loc.ext)
            if not any(p.name.endswith(loc.ext) for p in path.iterdir()):
                raise DataError(f"{path}: image folder is empty (no *{loc.ext} files)")
            return store
    tried = ", ".join(str(data_dir / loc.path) for loc in locations)
    raise DataError(f"no {split} images for {spec.name} under {data_dir}: looked for {tried}")


def check_images_exist(store: ImageStore, ids: list[str], what: str = "ids") -> None:
    """Raise naming the count and the first few ids whose image is missing."""
    missing = store.missing(ids)
    if missing:
        first = ", ".join(store.ref(k) for k in missing[:5])
        raise DataError(f"{store.location}: {len(missing)} of {len(ids)} {what} have no image, first: {first}")


def find_bad_images(store: ImageStore, ids: Iterable[str]) -> list[tuple[str, str]]:
    """Decode every image; return (id, reason) for each that fails. Slow: one full pass over the data."""
    bad = []
    for key in ids:
        try:
            store.read(key)
        except DataError as e:
            bad.append((key, str(e)))
    return bad
