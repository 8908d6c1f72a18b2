"""The torch Dataset over a table of ids: images from the packed cache on disk, or from the competition's store.

A Dataset holds the whole split's arrays (the pack's rows, targets, metadata) and ``rows``, an index array into
them: a fold's training and validation sets, and each epoch's subsample, are index arrays over the same arrays, never
copies. Ids are a fixed-width numpy string array, not a list of Python strings: DataLoader workers forked from the
process then share its pages instead of copying each one they touch (reference counts; PyTorch issue 13246).
Extra training data (``data.extra``) joins the run's rows the same way: :class:`JoinedImages` reads each source's
own pack in place.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from kit.data.readers import ImageStore


class ImageDataset(Dataset):
    """Item ``i`` is row ``rows[i]`` of the split: a dict with ``image`` (uint8 CHW tensor from ``transform``), and
    ``target`` / ``meta`` when given. ``images`` gives an S x S x 3 uint8 array per row (the pack's ``PackRows``, or
    any array), row ``image_rows[i]`` for id ``i`` when given; without it images are read from ``store``."""

    def __init__(self, ids, transform: Callable[[np.ndarray], torch.Tensor], store: ImageStore | None = None,
                 images: np.ndarray | None = None, targets: np.ndarray | None = None,
                 meta: np.ndarray | None = None, rows: np.ndarray | None = None, image_rows: np.ndarray | None = None):
        if (store is None) == (images is None):
            raise ValueError("give exactly one of store or images")
        self.ids = ids if isinstance(ids, np.ndarray) and ids.dtype.kind == "U" else np.asarray(ids, dtype=str)
        self.transform = transform
        self.store = store
        self.images = images
        self.image_rows = image_rows  # row of each id in ``images`` when the pack's order differs from ``ids``
        self.targets = None if targets is None else torch.tensor(np.asarray(targets))  # a copy: pandas arrays are read-only
        self.meta = None if meta is None else torch.as_tensor(meta, dtype=torch.float32)
        self.rows = np.arange(len(self.ids)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.soft: np.ndarray | None = None
        """Soft training targets of every row (pseudo-labels): item ``soft`` beside ``target`` when set."""

    def subset(self, rows: np.ndarray) -> ImageDataset:
        """The same arrays seen through other rows of the split (a fold, an epoch's subsample): nothing is copied."""
        view = object.__new__(ImageDataset)
        view.__dict__.update(self.__dict__)
        view.rows = np.asarray(rows, dtype=np.int64)
        return view

    def with_transform(self, transform: Callable[[np.ndarray], torch.Tensor]) -> ImageDataset:
        view = self.subset(self.rows)
        view.transform = transform
        return view

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, row: int) -> np.ndarray:
        if self.images is None:
            return self.store.read(str(self.ids[row]))
        return self.images[row if self.image_rows is None else self.image_rows[row]]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        item = {"image": self.transform(self.image(row))}
        if self.targets is not None:
            item["target"] = self.targets[row]
        if self.meta is not None:
            item["meta"] = self.meta[row]
        if self.soft is not None:
            item["soft"] = self.soft[row]
        return item


class StoreImages:
    """A store's images in the order of ``ids``, decoded on access: the ``images`` of a run read from the files."""

    def __init__(self, store: ImageStore, ids: np.ndarray):
        self.store, self.ids = store, np.asarray(ids, dtype=str)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.store.read(str(self.ids[i]))


class JoinedImages:
    """Several image arrays end to end, each seen through its own index array (row ``i`` of part ``p`` is
    ``array[index[i]]``): a competition's pack and an extra source's pack as one ``images``, nothing copied."""

    def __init__(self, parts: list[tuple[Sequence[np.ndarray], np.ndarray]]):
        self.parts = [(array, np.asarray(index, dtype=np.int64)) for array, index in parts]
        self.ends = np.cumsum([len(index) for _, index in self.parts])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, i: int) -> np.ndarray:
        p = int(np.searchsorted(self.ends, i, side="right"))
        array, index = self.parts[p]
        return array[int(index[i - (self.ends[p - 1] if p else 0)])]
