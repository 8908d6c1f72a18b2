"""Tabular metadata -> the float32 matrix the model's metadata branch takes.

Fitted on the training rows (``load_train_table(..., features=True)``: every feature column of the competition's
metadata, :mod:`kit.data.columns` says which), then stored in every checkpoint as plain data, so test rows are encoded
with the exact statistics and categories the model was trained with:

- a numeric column is standardised with the training rows' mean and std; a missing value is 0 (the mean), with a
  ``<col>_missing`` flag where the training rows had missing values;
- a text column is one-hot over the categories seen in training (compared lower-case), with ``<col>_missing`` where
  the training rows had missing values and ``<col>_other`` for a value training never saw: all zeros and the flag,
  with one warning line per column, never an error;
- the patient's number of images (log scale), a strong signal in ISIC 2020 (the winners used it).

Checkpoints of older kit hold ``{"sites": [...]}`` (sex, age, site, images per patient only); :func:`load_encoder`
gives them their own encoder (:mod:`kit.data.meta_sites`), so they predict exactly as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kit.data.columns import numeric_columns
from kit.data.meta_sites import SiteMetaEncoder
from kit.errors import KitError

__all__ = ["CategoricalColumn", "MetaEncoder", "NumericColumn", "load_encoder"]

log = logging.getLogger(__name__)

FORMAT = 2
TABLE_KEYS = ("id", "target", "group", "diagnosis")
"""Columns of a kit table that are not metadata (``diagnosis``: the free-text label of train.target=diagnosis)."""


def _warn(message: str) -> None:
    log.warning(f"warning: {message}")


def _numbers(values: pd.Series) -> np.ndarray:
    """float64 values, NaN where missing or not a number."""
    if not pd.api.types.is_numeric_dtype(values.dtype):
        values = pd.to_numeric(values.astype("string"), errors="coerce")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _labels_and_codes(values: pd.Series) -> tuple[pd.Index, np.ndarray]:
    """The distinct values (stripped, lower-case) and each row's index into them (-1: missing), without a Python
    object per row where ``values`` is already categorical (as kit's tables read it)."""
    if not isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype("string").astype("category")
    labels = pd.Index(values.cat.categories.astype(str)).str.strip().str.lower()
    return labels, values.cat.codes.to_numpy()


@dataclass(frozen=True)
class NumericColumn:
    name: str
    mean: float
    std: float
    missing: bool
    """Whether the training rows had missing values (then a ``<name>_missing`` flag follows the value)."""

    @classmethod
    def fit(cls, name: str, values: pd.Series) -> NumericColumn:
        x = _numbers(values)
        std = float(np.nanstd(x))
        return cls(name, float(np.nanmean(x)), std if std > 1e-12 else 1.0, bool(np.isnan(x).any()))

    @property
    def feature_names(self) -> list[str]:
        return [self.name] + ([f"{self.name}_missing"] if self.missing else [])

    def encode(self, values: pd.Series, out: np.ndarray, warn: bool = True) -> None:
        """Write this column's features into ``out`` (rows x len(feature_names)); ``warn`` about surprises."""
        x = _numbers(values)
        absent = np.isnan(x)
        junk = absent & values.notna().to_numpy()
        if junk.any() and warn:
            first = ", ".join(repr(str(v)) for v in values[junk].unique()[:3])
            _warn(f"{int(junk.sum())} rows have a '{self.name}' that is not a number ({first}): encoded as missing")
        if absent.any() and not self.missing and warn:
            _warn(f"{int(absent.sum())} rows have no '{self.name}', which every training row had: encoded as the "
                  f"training mean")
        out[:, 0] = np.where(absent, 0.0, (x - self.mean) / self.std)
        if self.missing:
            out[:, 1] = absent


@dataclass(frozen=True)
class CategoricalColumn:
    name: str
    categories: tuple[str, ...]
    missing: bool
    """Whether the training rows had missing values (a ``<name>_missing`` flag; else a missing value is 'other')."""

    @classmethod
    def fit(cls, name: str, values: pd.Series) -> CategoricalColumn:
        labels, codes = _labels_and_codes(values)
        seen = sorted(set(labels[np.unique(codes[codes >= 0])]))
        return cls(name, tuple(seen), bool((codes < 0).any()))

    @property
    def feature_names(self) -> list[str]:
        flags = ([f"{self.name}_missing"] if self.missing else []) + [f"{self.name}_other"]
        return [f"{self.name}_{c}" for c in self.categories] + flags

    def encode(self, values: pd.Series, out: np.ndarray, warn: bool = True) -> None:
        """Write this column's one-hot features and flags into ``out`` (rows x len(feature_names)); ``warn`` about
        values unseen in training."""
        labels, codes = _labels_and_codes(values)
        known = pd.Index(self.categories).get_indexer(labels)  # per distinct value: its category, or -1
        absent = codes < 0
        category = np.full(len(codes), -1)
        category[~absent] = known[codes[~absent]]
        rows = np.flatnonzero(category >= 0)
        out[rows, category[rows]] = 1.0
        other = (category < 0) & (~absent if self.missing else True)
        if other.any() and warn:
            unseen = labels[np.unique(codes[other & ~absent])][:3].tolist() + (["(missing)"] if (
                other & absent).any() else [])
            _warn(f"{int(other.sum())} rows have a '{self.name}' unseen in training ({', '.join(unseen[:3])}): "
                  f"encoded as {self.name}_other")
        if self.missing:
            out[:, len(self.categories)] = absent
        out[:, -1] = other


def _images_per_patient(table: pd.DataFrame) -> np.ndarray:
    """log1p(the row's patient's number of images) / log(100); 1 image per row without a ``group`` column."""
    counts = table.groupby("group")["group"].transform("size").to_numpy(float) if "group" in table \
        else np.ones(len(table))
    return np.log1p(counts) / np.log(100.0)


@dataclass(frozen=True)
class MetaEncoder:
    numeric: tuple[NumericColumn, ...]
    categorical: tuple[CategoricalColumn, ...]

    @classmethod
    def fit(cls, table: pd.DataFrame) -> MetaEncoder:
        """Fit on the training rows: every column of ``table`` but its id, target and group."""
        # a column with no value in any training row says nothing: left out
        columns = [c for c in table.columns if c not in TABLE_KEYS and table[c].notna().any()]
        numeric = numeric_columns(table, columns)
        return cls(tuple(NumericColumn.fit(c, table[c]) for c in numeric),
                   tuple(CategoricalColumn.fit(c, table[c]) for c in columns if c not in numeric))

    @property
    def columns(self) -> list[NumericColumn | CategoricalColumn]:
        return [*self.numeric, *self.categorical]

    @property
    def feature_names(self) -> list[str]:
        return [name for column in self.columns for name in column.feature_names] + ["images_per_patient"]

    @property
    def size(self) -> int:
        return len(self.feature_names)

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """The rows of ``table`` as a (rows x size) float32 matrix; a column ``table`` lacks is missing throughout,
        said in one warning line."""
        absent = [c.name for c in self.columns if c.name not in table.columns]
        if absent:
            _warn(f"the metadata lacks {len(absent)} column(s) the model was trained with "
                  f"({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''}): encoded as missing")
        out = np.zeros((len(table), self.size), dtype=np.float32)
        start = 0
        for column in self.columns:
            width = len(column.feature_names)
            if column.name in table.columns:
                column.encode(table[column.name], out[:, start:start + width])
            else:  # said above, once
                column.encode(pd.Series(np.nan, index=table.index), out[:, start:start + width], warn=False)
            start += width
        out[:, start] = _images_per_patient(table)
        return out

    def to_dict(self) -> dict:
        return {"format": FORMAT,
                "numeric": [{"name": c.name, "mean": c.mean, "std": c.std, "missing": c.missing}
                            for c in self.numeric],
                "categorical": [{"name": c.name, "categories": list(c.categories), "missing": c.missing}
                                for c in self.categorical]}

    @classmethod
    def from_dict(cls, d: dict) -> MetaEncoder:
        return cls(tuple(NumericColumn(str(c["name"]), float(c["mean"]), float(c["std"]), bool(c["missing"]))
                         for c in d["numeric"]),
                   tuple(CategoricalColumn(str(c["name"]), tuple(map(str, c["categories"])), bool(c["missing"]))
                         for c in d["categorical"]))


def load_encoder(d: dict) -> MetaEncoder | SiteMetaEncoder:
    """The encoder a checkpoint stored: this format, or the ``{"sites": [...]}`` of older kit."""
    if d.get("format") == FORMAT:
        try:
            return MetaEncoder.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise KitError(f"the checkpoint's metadata encoder is damaged ({type(e).__name__}: {e})") from None
    if set(d) == {"sites"}:
        return SiteMetaEncoder.from_dict(d)
    raise KitError(f"the checkpoint's metadata encoder is in no format this kit knows (keys: {sorted(d)}; format "
                   f"{d.get('format')!r}, this kit writes {FORMAT}): predict with the kit that trained it")
