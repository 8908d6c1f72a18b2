"""Leak-safe cross-validation folds: a seeded, pure function of the label table, written once to ``folds.csv``.

Stratified on the target (the class index for multiclass) so that every fold keeps the class balance, and grouped
(patient, lesion, slide) whenever groups exist, so that no group's images sit on both sides of a split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from kit.data.labels import check_ids, read_csv
from kit.errors import DataError
from kit.io import write_csv_atomic


def check_class_counts(target: np.ndarray, n_folds: int, class_names: list[str] | None = None) -> None:
    values, counts = np.unique(target, return_counts=True)
    too_few = [(v, c) for v, c in zip(values, counts, strict=True) if c < n_folds]
    if too_few:
        def name(v):
            return class_names[int(v)] if class_names else str(v)
        listed = ", ".join(f"{name(v)} has {c}" for v, c in too_few)
        raise DataError(f"too few samples for {n_folds} folds: class {listed} (need at least {n_folds} each); "
                        "lower the fold count (kit folds --n-folds N; kit train --set n_folds=N) or add data")


def make_folds(target: np.ndarray, groups: np.ndarray | None, n_folds: int = 5, seed: int = 42,
               class_names: list[str] | None = None) -> np.ndarray:
    """Fold index (0..n_folds-1) for each row. With ``groups``, all rows of a group share a fold."""
    target = np.asarray(target)
    if n_folds < 2:
        raise DataError(f"the fold count must be at least 2 (kit folds --n-folds, config key n_folds), got {n_folds}")
    check_class_counts(target, n_folds, class_names)
    fold = np.full(len(target), -1, dtype=np.int64)
    if groups is not None and len(np.unique(groups)) < len(groups):
        n_groups = len(np.unique(groups))
        if n_groups < n_folds:
            raise DataError(f"only {n_groups} groups for {n_folds} folds")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(target)), target, groups)
    else:  # every row its own group: the plain stratified splitter is the same thing, and much faster
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(len(target)), target)
    for k, (_, val_idx) in enumerate(splits):
        fold[val_idx] = k
    return fold


def load_group_mapping(path: Path, ids: pd.Series, id_col: str) -> np.ndarray:
    """Groups from a user's mapping CSV (id column + one group column, e.g. a patch-to-slide table for HCD)."""
    path = Path(path)
    df = read_csv(path, [], what="group mapping file")
    key = id_col if id_col in df.columns else ("id" if "id" in df.columns else None)
    if key is None or len(df.columns) < 2:
        raise DataError(f"{path}: expected an id column ('{id_col}' or 'id') and a group column; found {list(df.columns)}")
    group_col = next(c for c in df.columns if c != key)
    mapping = df.drop_duplicates(key).set_index(key)[group_col]
    groups = ids.map(mapping)
    if groups.isna().any():
        missing = ids[groups.isna()]
        raise DataError(f"{path}: {len(missing)} of {len(ids)} ids have no group, first: {', '.join(missing[:5])}")
    return groups.to_numpy()


def write_folds(path: Path, ids: pd.Series, fold: np.ndarray, id_col: str) -> Path:
    return write_csv_atomic(pd.DataFrame({id_col: ids.to_numpy(), "fold": fold}), path)


def load_folds(path: Path, id_col: str | None = None) -> pd.Series:
    """The one reader of a ``folds.csv``: fold number per id (the index, strings), every row checked. ``id_col``
    names the id column (None: the first column)."""
    head = read_csv(path, ["fold"], what="folds file")
    id_col = id_col or next((c for c in head.columns if c != "fold"), "id")
    df = read_csv(path, [id_col, "fold"], what="folds file") if id_col not in head.columns else head
    folds = pd.to_numeric(df["fold"], errors="coerce")
    if folds.isna().any():
        i = int(np.flatnonzero(folds.isna().to_numpy())[0])
        raise DataError(f"{path} line {i + 2}: fold '{df['fold'].iloc[i]}' is not an integer")
    bad = np.flatnonzero((folds < 0).to_numpy() | (folds != folds.round()).to_numpy())
    if len(bad):  # a fold of -1 (some tools' "unused") would drop the row out of every validation part silently
        i = int(bad[0])
        raise DataError(f"{path} line {i + 2}: fold '{df['fold'].iloc[i]}' is not a fold number (0, 1, ...); "
                        f"{len(bad)} such rows")
    check_ids(df, id_col, path)  # a duplicate id would have two folds
    return pd.Series(folds.astype(int).to_numpy(), index=pd.Index(df[id_col].astype(str), name=id_col), name="fold")


def read_folds(path: Path, ids: pd.Series, id_col: str) -> np.ndarray:
    """Fold per id of ``ids`` from a ``folds.csv`` (:func:`load_folds`); every id of the table must be there."""
    fold = ids.map(load_folds(path, id_col))
    if fold.isna().any():
        missing = ids[fold.isna()]
        raise DataError(f"{path}: {len(missing)} of {len(ids)} ids have no fold, first: {', '.join(missing[:5])}")
    return fold.to_numpy().astype(np.int64)


def check_folds_agree(path: Path, ids: pd.Series, fold: np.ndarray, id_col: str, what: str) -> None:
    """Refuse a fold model of another run (``path``: its folds.csv) that may have trained on this run's validation
    rows: the fold counts must match and every id both runs hold must be in the same fold. Ids the other run does
    not hold are fine: none of its models saw them."""
    df = read_csv(path, [id_col, "fold"], what="folds file")
    theirs = pd.Series(pd.to_numeric(df["fold"], errors="coerce").to_numpy(), index=df[id_col].astype(str))
    n_ours, n_theirs = int(fold.max()) + 1, int(theirs.max()) + 1
    if n_ours != n_theirs:
        raise DataError(f"{what}: {path} has {n_theirs} folds, this run {n_ours} folds; a fold model must never have seen "
                        f"its validation rows: train with the same folds (kit train --folds-file {path})")
    other = theirs.reindex(ids.astype(str).to_numpy()).to_numpy()
    moved = np.flatnonzero(~np.isnan(other) & (other != fold))
    if len(moved):
        first = ", ".join(ids.iloc[moved[:3]].astype(str))
        raise DataError(f"{what}: {len(moved)} of {len(ids)} images are in another fold in {path} (first: {first}); "
                        "a fold model must never have seen its validation rows: train with the same folds "
                        f"(kit train --folds-file {path})")
