"""A run's training images as its folds' models read them: the pack (or the files) at the checkpoint's input size,
with the metadata its encoder makes, exactly as ``kit predict`` reads a fold's out-of-fold images."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kit.checkpoint import Checkpoint, load_checkpoint
from kit.data.dataset import ImageDataset
from kit.data.labels import load_train_table
from kit.data.readers import check_images_exist, open_store
from kit.errors import KitError
from kit.predict import ImageSource
from kit.rundir import RunDir

__all__ = ["RunImages", "require_ids"]


def require_ids(oof: pd.DataFrame, id_col: str, ids: Sequence[str], source: Path) -> pd.DataFrame:
    """The rows of ``ids`` in ``oof``, in the order given; an id that is not there is one line naming ``source``."""
    index = pd.Index(oof[id_col].astype(str))
    missing = [i for i in ids if i not in index]
    if missing:
        raise KitError(f"id {missing[0]} is not in {source} (the run's out-of-fold rows)"
                       + (f"; {len(missing) - 1} more missing" if len(missing) > 1 else ""))
    return oof.iloc[index.get_indexer(list(ids))].reset_index(drop=True)


class RunImages:
    """The training split of a run's data folder (``data_dir``, default the run's own), read per fold model."""

    def __init__(self, run: RunDir, data_dir: str | Path | None = None):
        self.run, self.spec = run, run.competition()
        self.data_dir = run.data_folder(data_dir)
        self.store = open_store(self.spec, self.data_dir, "train")
        self.source = ImageSource(self.spec, self.data_dir, "train", self.store)
        self._table: pd.DataFrame | None = None

    def checkpoint(self, k: int) -> Checkpoint:
        return load_checkpoint(self.run.best_path(k))

    def dataset(self, ids: Sequence[str], ckpt: Checkpoint) -> ImageDataset:
        """The images of ``ids`` (with their metadata when ``ckpt``'s model takes it) as ``ckpt``'s model saw them."""
        ids = [str(i) for i in ids]
        check_images_exist(self.store, ids, what="ids")
        meta = None
        if ckpt.model.n_meta:
            if self._table is None:
                self._table = load_train_table(self.spec, self.data_dir, features=True)
            meta = ckpt.encoded_meta(self._table)[pd.Index(self._table["id"]).get_indexer(ids)]
        return self.source.dataset(ids, ckpt.input_size, ckpt.cache_images, meta)

    def pixels(self, ids: Sequence[str], ckpt: Checkpoint) -> list[np.ndarray]:
        """H x W x 3 uint8 images of ``ids`` at ``ckpt``'s input size (the evaluation view, no TTA)."""
        ds = self.dataset(ids, ckpt)
        return [ds[i]["image"].permute(1, 2, 0).numpy() for i in range(len(ds))]

    def any_checkpoint(self) -> Checkpoint:
        """The first finished fold's best.pt: the input size and reading the folds share."""
        folds = [k for k in self.run.fold_numbers() if self.run.best_path(k).is_file()]
        if not folds:
            raise KitError(f"{self.run.path} has no fold checkpoint (no fold*/best.pt): train it first")
        return self.checkpoint(folds[0])
