"""The torch Dataset over a table of ids, and the packed uint8 image cache.

Images are never copied into class folders: the Dataset reads them from the competition's own store (folder or
HDF5), or from a packed uint8 array decoded once per run (``load_image_cache``), which is where the speed is on a CPU
(the anchor benchmark measured a memmap-style packed read at ~38x per-file decoding).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from kit.data.readers import ImageStore, fit_square
from kit.progress import Progress


def _fit(img: np.ndarray, size: int | None) -> np.ndarray:
    return fit_square(img, size)  # one definition, shared with the packed cache (kit.data.pack)


def load_image_cache(store: ImageStore, ids: list[str], size: int | None = None,
                     workers: int | None = None) -> np.ndarray:
    """Decode every image once into an (N, H, W, 3) uint8 array, resized to ``size`` when images differ from it.

    Decoders (libjpeg-turbo, tifffile) release the GIL, so threads decode in parallel.
    """
    if not ids:
        raise ValueError("no ids to load")
    first = _fit(store.read(ids[0]), size)
    out = np.empty((len(ids), *first.shape), dtype=np.uint8)
    out[0] = first

    def load(i: int) -> None:
        img = _fit(store.read(ids[i]), size)
        if img.shape != first.shape:
            from kit.errors import DataError

            raise DataError(f"{store.ref(ids[i])}: image is {img.shape[1]}x{img.shape[0]} but "
                            f"{store.ref(ids[0])} is {first.shape[1]}x{first.shape[0]}; set model.img_size")
        out[i] = img

    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool, \
            Progress(len(ids), "loading images", unit="img", done=1) as bar:
        for _ in pool.map(load, range(1, len(ids))):
            bar.update(1)
    return out


class ImageDataset(Dataset):
    """Items are dicts: ``image`` (uint8 CHW tensor from ``transform``), and ``target`` / ``meta`` when given."""

    def __init__(self, ids: list[str], transform: Callable[[np.ndarray], torch.Tensor],
                 store: ImageStore | None = None, images: np.ndarray | None = None,
                 targets: np.ndarray | None = None, meta: np.ndarray | None = None):
        if (store is None) == (images is None):
            raise ValueError("give exactly one of store or images")
        self.ids = list(ids)
        self.transform = transform
        self.store = store
        self.images = images
        self.targets = None if targets is None else torch.tensor(np.asarray(targets))  # a copy: pandas arrays are read-only
        self.meta = None if meta is None else torch.as_tensor(meta, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = self.images[i] if self.images is not None else self.store.read(self.ids[i])
        item = {"image": self.transform(img)}
        if self.targets is not None:
            item["target"] = self.targets[i]
        if self.meta is not None:
            item["meta"] = self.meta[i]
        return item
