"""Load a competition's labels (and metadata, and groups) into one tidy table.

Columns of the table: ``id``, ``target`` (0/1, or the class index for multiclass), ``group`` (patient or lesion,
or the id itself where the competition has none), and when the competition has metadata ``sex``, ``age``, ``site``;
with ``features=True`` also every feature column of the metadata (:mod:`kit.data.columns`), for the metadata branch;
and where its labels file has one, the free-text ``diagnosis``.
Every check names the file, line and column at fault. Line numbers count the header as line 1, as an editor does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from kit.competitions import META_ALIASES, Competition, get_competition
from kit.data.columns import feature_columns, group_column, header, metadata_path, read_features, test_metadata_path
from kit.errors import DataError

log = logging.getLogger(__name__)


def read_csv(path: Path, required: list[str], what: str = "file", columns: set[str] | None = None) -> pd.DataFrame:
    """Read a CSV with ids kept as strings; raise naming the file and the missing columns.

    ``columns`` reads only those (when present): ISIC 2024's 55 columns of 401,059 rows as Python strings are ~1 GB
    that the allocator keeps after they are dropped, for the 6 a training table needs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    usecols = None if columns is None else (lambda c: c in columns or c in required)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], usecols=usecols)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse CSV ({e})") from e
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = list(pd.read_csv(path, nrows=0).columns) if columns is not None else list(df.columns)
        raise DataError(f"{path}: column {', '.join(repr(c) for c in missing)} missing; found {found}")
    return df


def _line(index: int) -> int:
    return int(index) + 2  # header is line 1, first data row line 2


def check_ids(df: pd.DataFrame, id_col: str, path: Path) -> None:
    empty = df[id_col].isna()
    if empty.any():
        raise DataError(f"{path} line {_line(np.flatnonzero(empty)[0])}: empty id in column '{id_col}'")
    dup = df[id_col].duplicated(keep=False)
    if dup.any():
        rows = np.flatnonzero(dup)
        first = ", ".join(f"'{df[id_col].iloc[i]}' (line {_line(i)})" for i in rows[:4])
        raise DataError(f"{path}: {int(df[id_col].duplicated().sum())} duplicate ids in column '{id_col}': {first}")


def _parse_binary(df: pd.DataFrame, col: str, id_col: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() | ~values.isin([0, 1])
    if bad.any():
        i = np.flatnonzero(bad.to_numpy())[0]
        raw = df[col].iloc[i]
        what = "is empty (NaN)" if pd.isna(raw) else f"is '{raw}', not 0 or 1"
        raise DataError(f"{path} line {_line(i)} (id {df[id_col].iloc[i]}): column '{col}' {what}"
                        f" [{int(bad.sum())} bad rows]")
    return values.to_numpy().astype(np.int64)


def _parse_onehot(df: pd.DataFrame, classes: tuple[str, ...], id_col: str, path: Path) -> np.ndarray:
    values = df[list(classes)].apply(pd.to_numeric, errors="coerce")
    for col in classes:
        bad = values[col].isna() | ~values[col].isin([0, 1])
        if bad.any():
            i = np.flatnonzero(bad.to_numpy())[0]
            raw = df[col].iloc[i]
            what = "is empty (NaN)" if pd.isna(raw) else f"is '{raw}', not 0 or 1"
            raise DataError(f"{path} line {_line(i)} (id {df[id_col].iloc[i]}): column '{col}' {what}")
    sums = values.sum(axis=1).to_numpy()
    if (sums != 1).any():
        i = np.flatnonzero(sums != 1)[0]
        raise DataError(f"{path} line {_line(i)} (id {df[id_col].iloc[i]}): expected exactly one 1 among "
                        f"{', '.join(classes)}, found {int(sums[i])}")
    return values.to_numpy().argmax(axis=1).astype(np.int64)


def _check_no_other_classes(spec: Competition, path: Path) -> None:
    """A multiclass ground truth holds exactly the competition's classes: a further 0/1 column (another
    competition's class, such as ISIC 2019's UNK in an ISIC 2018 file) would be dropped without a word."""
    extra = [str(c) for c in header(path) if c not in _table_columns(spec) and c not in spec.classes]
    if not extra:
        return
    values = pd.read_csv(path, usecols=extra).apply(pd.to_numeric, errors="coerce")
    like_classes = [c for c in extra if values[c].notna().all() and values[c].isin([0, 1]).all()]
    if like_classes:
        raise DataError(f"{path}: column '{like_classes[0]}' holds 0/1 labels like a class, but {spec.name} has no "
                        f"class '{like_classes[0]}' (its classes: {', '.join(spec.classes)}): remove the column, or "
                        "train the competition it belongs to")


def _metadata(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical sex / age / site columns from whichever spelling the file uses (absent ones become NaN)."""
    out = pd.DataFrame(index=df.index)
    for name, aliases in META_ALIASES.items():
        col = next((c for c in aliases if c in df.columns), None)
        out[name] = df[col] if col else np.nan
    out["age"] = pd.to_numeric(out["age"], errors="coerce")
    return out


def _table_columns(spec: Competition) -> set[str]:
    """The columns a training table is made of: ids, labels, the group and every spelling of sex / age / site."""
    keys = {spec.id_col, *spec.classes, spec.group_col, spec.metadata_key, spec.diagnosis_col}
    return {c for c in keys if c} | {alias for aliases in META_ALIASES.values() for alias in aliases}


def _join_metadata(spec: Competition, data_dir: Path, df: pd.DataFrame, id_col: str) -> pd.DataFrame:
    if not spec.metadata_file:
        return df
    path = data_dir / spec.metadata_file
    required = [spec.metadata_key] + ([spec.group_col] if spec.group_col else [])
    meta = read_csv(path, required, what="metadata file", columns=_table_columns(spec))
    meta = meta.drop_duplicates(spec.metadata_key).rename(columns={spec.metadata_key: id_col})
    overlap = [c for c in meta.columns if c in df.columns and c != id_col]
    merged = df.merge(meta.drop(columns=overlap), on=id_col, how="left", validate="one_to_one")
    unmatched = merged[required[1:]].isna().all(axis=1) if len(required) > 1 else pd.Series(False, index=df.index)
    if spec.group_col and unmatched.all() and len(df):
        raise DataError(f"{path}: none of the {len(df)} ids of {spec.labels_file} appear in column "
                        f"'{spec.metadata_key}'")
    missing = ~df[id_col].isin(meta[id_col])
    if missing.any():  # each becomes its own group in the folds and gets no metadata: say so, with how many
        first = ", ".join(df[id_col][missing].astype(str).head(3))
        log.warning(f"warning: {path}: {int(missing.sum())} of {len(df)} ids of {spec.labels_file} have no row "
                    f"(first: {first}); they get no metadata and each is its own group in the folds")
    return merged


def _with_features(table: pd.DataFrame, path: Path, key: str, columns: list[str]) -> pd.DataFrame:
    """``table`` with the metadata ``columns`` of ``path`` joined on its id (canonical sex / age / site replaced)."""
    features = read_features(path, key, columns).drop_duplicates(key).set_index(key).reindex(table["id"])
    kept = table.drop(columns=[c for c in features.columns if c in table.columns])
    return pd.concat([kept, features.reset_index(drop=True)], axis=1)


def _train_features(spec: Competition, data_dir: Path, table: pd.DataFrame) -> pd.DataFrame:
    """The training table with every feature column the test metadata has too (all of them without test metadata:
    ISIC 2018 has none)."""
    path, test = metadata_path(spec, data_dir), test_metadata_path(spec, data_dir)
    columns = feature_columns(spec, header(path), header(test) if test else None)
    return _with_features(table, path, spec.metadata_key or spec.id_col, columns)


def load_train_table(competition: str | Competition, data_dir: str | Path, features: bool = False) -> pd.DataFrame:
    """The labelled training table of ``competition`` found under ``data_dir`` (no image is read here); with
    ``features`` every feature column of its metadata too."""
    spec = get_competition(competition)
    data_dir = Path(data_dir)
    path = data_dir / spec.labels_file
    required = [spec.id_col, *spec.classes]
    if spec.group_col and not spec.metadata_file:
        required.append(spec.group_col)
    df = read_csv(path, required, what="labels file", columns=_table_columns(spec))
    if df.empty:
        raise DataError(f"{path}: labels file has a header but no rows")
    check_ids(df, spec.id_col, path)
    if spec.is_binary:
        target = _parse_binary(df, spec.target_col, spec.id_col, path)
    else:
        _check_no_other_classes(spec, path)
        target = _parse_onehot(df, spec.classes, spec.id_col, path)
    df = _join_metadata(spec, data_dir, df, spec.id_col)

    table = pd.DataFrame({"id": df[spec.id_col].to_numpy(), "target": target})
    if spec.group_col:
        # an image with no group (ISIC 2019 has no lesion_id for many) is its own group
        table["group"] = df[spec.group_col].fillna(df[spec.id_col]).to_numpy()
    else:
        table["group"] = table["id"]
    if spec.has_metadata:
        table = pd.concat([table, _metadata(df).reset_index(drop=True)], axis=1)
        if features:
            table = _train_features(spec, data_dir, table)
    if spec.diagnosis_col and spec.diagnosis_col in df.columns:  # the finer target of train.target=diagnosis
        table["diagnosis"] = df[spec.diagnosis_col].to_numpy()
    return table


def load_test_table(competition: str | Competition, data_dir: str | Path, features: bool = False) -> pd.DataFrame:
    """The test ids in submission order (from the first test list present), with metadata (and the ``group``
    column, patient) where the list has it; with ``features`` every feature column of the list too.

    A competition without a test list (ISIC 2018) takes the ids of the test image folder, sorted.
    """
    from kit.data.readers import open_store

    spec = get_competition(competition)
    data_dir = Path(data_dir)
    for id_list in spec.test_lists:
        path = data_dir / id_list.file
        if path.is_file():
            df = read_csv(path, [id_list.id_col], what="test list")
            check_ids(df, id_list.id_col, path)
            table = pd.DataFrame({"id": df[id_list.id_col].to_numpy()})
            group = group_column(spec, df.columns)
            if group:
                # the metadata encoder counts images per patient from this column, as it does on the train table
                table["group"] = df[group].fillna(df[id_list.id_col]).to_numpy()
            if spec.has_metadata:
                table = pd.concat([table, _metadata(df).reset_index(drop=True)], axis=1)
                if features:
                    table = _with_features(table, path, id_list.id_col, feature_columns(spec, df.columns))
            return table
    try:
        store = open_store(spec, data_dir, "test")
    except DataError as e:
        if not spec.test_lists:
            raise
        lists = ", ".join(str(data_dir / t.file) for t in spec.test_lists)
        raise DataError(f"no test list for {spec.name}: looked for {lists}, and {e}") from e
    table = pd.DataFrame({"id": store.keys()})
    if spec.has_metadata:
        table = pd.concat([table, pd.DataFrame({"sex": np.nan, "age": np.nan, "site": np.nan}, index=table.index)],
                          axis=1)
    return table
