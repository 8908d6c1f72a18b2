"""Which columns of a competition's metadata are features: the one owner of that knowledge, asked by the image
model's metadata branch (:mod:`kit.data.meta`) and by ``kit stack``'s feature table (:mod:`kit.stack.features`).

A feature is a column of the training metadata that is not an identifier (the id, the patient or lesion, the id
column of a test list, ``patient`` as the ISIC archive spells the patient), not a label column, and not one of the
competition's ``train_only_columns`` (the diagnosis columns that give the label away, or columns the test lacks by
design). The metadata branch also keeps only the columns the test metadata has, under any spelling of sex / age /
site (``META_ALIASES``): the ISIC archive's test file says ``anatom_site_general`` where Kaggle's says
``anatom_site_general_challenge``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from kit.competitions import META_ALIASES, Competition
from kit.errors import DataError

__all__ = ["canonical", "feature_columns", "group_column", "header", "metadata_path", "numeric_columns",
           "read_features", "test_metadata_path"]

IDENTIFIERS = ("patient",)
"""Identifier spellings no spec names: ``patient`` is the patient id in the ISIC archive's test metadata."""

_CANONICAL = {alias: name for name, aliases in META_ALIASES.items() for alias in aliases}


def canonical(column: str) -> str:
    """``sex`` / ``age`` / ``site`` for any spelling of them, the column's own name otherwise."""
    return _CANONICAL.get(column, column)


def not_features(spec: Competition) -> set[str]:
    """Columns of ``spec``'s metadata files that are never features: identifiers, labels, train-only columns."""
    ids = {spec.id_col, spec.group_col, spec.metadata_key, *(t.id_col for t in spec.test_lists), *IDENTIFIERS}
    return {c for c in ids if c} | set(spec.classes) | set(spec.train_only_columns)


def feature_columns(spec: Competition, train_columns: Iterable[str],
                    test_columns: Iterable[str] | None = None) -> list[str]:
    """The training metadata's feature columns, in file order; with ``test_columns``, only those the test has
    too (compared by their :func:`canonical` names)."""
    skip, seen, columns = not_features(spec), set(), []
    for c in train_columns:
        if c not in skip and canonical(c) not in seen:  # a second spelling of sex / age / site is the same column
            seen.add(canonical(c))
            columns.append(c)
    if test_columns is None:
        return columns
    in_test = {canonical(c) for c in test_columns}
    return [c for c in columns if canonical(c) in in_test]


def group_column(spec: Competition, columns: Iterable[str]) -> str | None:
    """The column of a file that holds ``spec``'s group (the patient may be spelled ``patient``), or None."""
    present = set(columns)
    spellings = (spec.group_col, *IDENTIFIERS) if spec.group_col == "patient_id" else (spec.group_col,)
    return next((c for c in spellings if c and c in present), None)


def numeric_columns(frame: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    """Columns whose every non-empty value is a number (a column with no value at all is not)."""
    out = []
    for c in columns:
        values = frame[c].dropna()
        if not len(values):
            continue
        if pd.api.types.is_numeric_dtype(values.dtype) or pd.to_numeric(
                values.astype("string"), errors="coerce").notna().all():
            out.append(c)
    return out


def metadata_path(spec: Competition, data_dir: Path) -> Path:
    """The file that holds the training metadata: the separate metadata file where there is one, else the labels."""
    return Path(data_dir) / (spec.metadata_file or spec.labels_file)


def header(path: Path) -> list[str]:
    """The column names of a CSV file."""
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse CSV ({e})") from e


def test_metadata_path(spec: Competition, data_dir: Path) -> Path | None:
    """The first test list present that carries metadata (a column besides its id and the labels), or None."""
    for id_list in spec.test_lists:
        path = Path(data_dir) / id_list.file
        if path.is_file() and set(header(path)) - {id_list.id_col, *spec.classes}:
            return path
    return None


def read_features(path: Path, key: str, columns: list[str]) -> pd.DataFrame:
    """``key`` (as text) and ``columns`` of the CSV at ``path``, the latter under their :func:`canonical` names:
    pandas' own parser reads numbers straight into float arrays (no Python object per value: ISIC 2024 has 401,059
    rows of ~35 numeric columns), and text becomes categories."""
    try:
        df = pd.read_csv(path, usecols=[key, *columns], dtype={key: str}, keep_default_na=False, na_values=[""],
                         low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: cannot read the metadata columns ({e})") from e
    for c in columns:
        if not pd.api.types.is_numeric_dtype(df[c].dtype):
            df[c] = df[c].astype("category")
    return df.rename(columns={c: canonical(c) for c in columns})
