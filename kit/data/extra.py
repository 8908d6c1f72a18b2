"""External labelled data for the training folds only: another competition's rows, read with its own reader and pack.

The SIIM-ISIC 2020 winners added the 2019 images to the training part of every fold. Only the training parts grow:
validation, ``oof.csv``, ``folds.csv`` and the CV stay the competition's own rows, so the score of a run with extra
data is comparable with one without. Each source is checked as its own competition's data (labels, images) and
packed in its own pack; its rows enter the run's target through their diagnosis (:mod:`kit.data.targets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kit.competitions import Competition, get_competition
from kit.data.dataset import StoreImages
from kit.data.labels import load_train_table
from kit.data.pack import split_pack
from kit.data.readers import ImageStore, check_images_exist, open_store
from kit.data.targets import TargetSpace, check_extra, encode, row_diagnoses
from kit.errors import ConfigError, DataError

__all__ = ["ExtraSource", "load_extra_sources", "parse_extra"]


@dataclass
class ExtraSource:
    """One checked extra source: its table, its rows' targets in the run's target space, its image store."""

    spec: Competition
    data_dir: Path
    table: pd.DataFrame
    targets: np.ndarray
    store: ImageStore

    def images(self, size: int, cached: bool) -> tuple[Sequence[np.ndarray], np.ndarray]:
        """(an array of images, the row of each table row in it): the source's own pack, or its image files."""
        ids = self.table["id"].to_numpy(dtype=str)
        if not cached:
            return StoreImages(self.store, ids), np.arange(len(ids))
        pack = split_pack(self.spec, self.data_dir, "train", size, list(ids))
        return pack.rows, pack.index(ids)

    def describe(self) -> str:
        return f"{len(self.table)} {self.spec.name} images from {self.data_dir}"

    def trains_fold(self, k: int) -> bool:
        """Whether its rows join fold ``k``'s training part: every fold's."""
        return True


def parse_extra(text: str) -> dict[str, str]:
    """``--extra-data NAME=DIR`` -> a ``data.extra`` entry."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise ConfigError(f"--extra-data expects COMPETITION=DIR (e.g. isic-2019=data/isic-2019), got '{text}'")
    get_competition(name)  # an unknown name fails here, with the known ones
    return {"competition": name, "data": folder}


def load_extra_sources(entries: Sequence[dict], space: TargetSpace, run: Competition) -> list[ExtraSource]:
    """Each ``data.extra`` entry read and checked as its competition's training data, mapped into ``space``."""
    sources = []
    for entry in entries:
        spec, data_dir = get_competition(entry["competition"]), Path(entry["data"])
        check_extra(space, run, spec)
        if not data_dir.is_dir():
            raise DataError(f"data.extra {spec.name}: data folder {data_dir} not found")
        table = load_train_table(spec, data_dir)
        labels = data_dir / spec.labels_file
        targets = encode(space, row_diagnoses(spec, table, labels), f"data.extra {spec.name} ({labels})")
        store = open_store(spec, data_dir, "train")
        check_images_exist(store, list(table["id"]), what=f"data.extra {spec.name} ids")
        sources.append(ExtraSource(spec, data_dir, table, targets, store))
    return sources
