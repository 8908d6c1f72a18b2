"""Submission writers and the validator: a CSV in exactly the competition's format, checked before it is written.

The validator returns every problem it finds (header, ids, values), each naming the columns and ids at fault, so a
user fixes a submission in one pass. Writers are registered per task type (binary, multiclass); each turns model
outputs into the value columns of the competition's ``submission_columns`` and says what its rows must satisfy.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from kit.competitions import Competition, get_competition
from kit.errors import ConfigError, SubmissionError
from kit.io import write_csv_atomic
from kit.registry import Registry

__all__ = [
    "FORMATS",
    "SubmissionFormat",
    "get_format",
    "read_submission",
    "register_format",
    "validate_file",
    "validate_submission",
    "write_submission",
]

SUM_TOLERANCE = 1e-3
# 8 significant digits hold a float32 probability exactly enough to keep its rank (AUC-scored competitions rank
# by value, and near 1 "%.6g" would merge 0.9999991 and 0.9999994 into one tie) without 17-digit noise.
FLOAT_FORMAT = "%.8g"
SHOWN = 5  # ids named per problem; the rest are counted
_NA_TOKENS = {"", "nan", "na", "n/a", "null", "none", "<na>"}
_COMPRESSED = {".gz", ".zip", ".bz2", ".xz", ".zst"}
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------------------------------- formats
class SubmissionFormat:
    """How one task type lays model outputs out in a submission, and what each row must satisfy."""

    task: str = ""

    def values(self, spec: Competition, predictions: np.ndarray) -> np.ndarray:
        """The (n, len(value columns)) matrix to write for ``predictions``."""
        raise NotImplementedError

    def row_problems(self, spec: Competition, ids: pd.Series, values: pd.DataFrame) -> list[str]:
        """Problems that involve a whole row (none by default)."""
        return []


FORMATS: Registry[SubmissionFormat] = Registry("submission format")
"""One format per task type (binary, multiclass)."""


def register_format(cls: type[SubmissionFormat]) -> type[SubmissionFormat]:
    """Class decorator: register one instance of ``cls`` for its ``task``."""
    FORMATS.add(cls.task, cls())
    return cls


def get_format(task: str) -> SubmissionFormat:
    """The registered format for a task type; an unknown one raises with the list of known ones."""
    return FORMATS.get(task)


def value_columns(spec: Competition) -> list[str]:
    """The submission's columns after the id column."""
    return list(spec.submission_columns[1:])


@register_format
class BinaryFormat(SubmissionFormat):
    """One probability of the positive class per id; rows need not sum to anything."""

    task = "binary"

    def values(self, spec: Competition, predictions: np.ndarray) -> np.ndarray:
        p = np.asarray(predictions, dtype=np.float64)
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        if p.ndim != 1:
            # a (n, 2) softmax is refused rather than guessed: which column is positive is the caller's knowledge
            raise SubmissionError(f"{spec.name}: binary predictions must have shape (n,) or (n, 1), got {p.shape}")
        return p[:, None]


@register_format
class MulticlassFormat(SubmissionFormat):
    """One probability per class in the official class order; each row is renormalised to sum to 1."""

    task = "multiclass"

    def values(self, spec: Competition, predictions: np.ndarray) -> np.ndarray:
        p = np.asarray(predictions, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(spec.classes):
            raise SubmissionError(f"{spec.name}: predictions must have shape (n, {len(spec.classes)}) for classes "
                                  f"{', '.join(spec.classes)}, got {p.shape}")
        sums = p.sum(axis=1, keepdims=True)
        ok = np.isfinite(sums) & (sums > 0)
        # rows that cannot be renormalised (NaN, all zero) are left as they are for the validator to name
        return np.divide(p, sums, out=p.copy(), where=ok)

    def row_problems(self, spec: Competition, ids: pd.Series, values: pd.DataFrame) -> list[str]:
        cols = [c for c in spec.classes if c in values.columns]
        if len(cols) != len(spec.classes):
            return []  # the header check already names the missing class columns
        block = values[cols].to_numpy(dtype=np.float64)
        finite = np.isfinite(block).all(axis=1)
        sums = block.sum(axis=1)
        bad = finite & (np.abs(sums - 1.0) > SUM_TOLERANCE)
        if not bad.any():
            return []
        n = int(bad.sum())
        shown = _shown([f"'{i}' (sum {s:.6g})" for i, s in zip(ids[bad], sums[bad], strict=True)], n)
        return [f"{_count(n, 'row')} not summing to 1 over {', '.join(cols)} (tolerance {SUM_TOLERANCE:g}): {shown}"]


# --------------------------------------------------------------------------------------------------- reading
def read_submission(path: str | os.PathLike) -> pd.DataFrame:
    """Read a submission CSV with every cell as a string (ids such as HCD's hex names must not become numbers)."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"submission file not found: {path}")
    if path.suffix.lower() not in _COMPRESSED:
        with path.open("rb") as f:
            head = f.read(4096)
        if b"\x00" in head:
            raise SubmissionError(f"{path} is not a CSV text file (it holds binary data; expected comma-separated "
                                  "text with a header line)")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as e:
        raise SubmissionError(f"{path} is empty: expected a CSV with a header line") from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{path} is not a readable CSV file ({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------------------------------- checks
def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _shown(items: Sequence[str], total: int) -> str:
    text = ", ".join(items[:SHOWN])
    return f"{text} and {total - SHOWN} more" if total > SHOWN else text


def _quoted(ids: Iterable) -> list[str]:
    return [f"'{i}'" for i in ids]


def _header_problems(spec: Competition, columns: list[str]) -> list[str]:
    expected = list(spec.submission_columns)
    if columns == expected:
        return []
    if sorted(columns) == sorted(expected):
        return [f"columns are in the wrong order: found {','.join(columns)}, expected {','.join(expected)}"]
    problems = []
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if missing:
        problems.append(f"missing columns {', '.join(_quoted(missing))}")
    if extra:
        problems.append(f"unexpected columns {', '.join(_quoted(extra))}")
    if dup:
        problems.append(f"repeated columns {', '.join(_quoted(dup))}")
    if not problems:  # same names, one repeated in place of another
        problems.append(f"columns are {','.join(columns)}, expected {','.join(expected)}")
    return [p + f" (expected header {','.join(expected)})" for p in problems]


def _id_problems(ids: pd.Series, expected_ids: Sequence[str] | None) -> list[str]:
    problems = []
    empty = ids.isna()
    if empty.any():
        rows = [str(i + 2) for i in np.flatnonzero(empty.to_numpy())]  # line 1 is the header
        problems.append(f"{_count(len(rows), 'row')} with an empty id (line {_shown(rows, len(rows))})")
    present = ids[~empty]
    counts = present.value_counts()
    dups = counts[counts > 1]
    if len(dups):
        named = [f"'{i}' (x{n})" for i, n in dups.items()]
        problems.append(f"{_count(int((dups - 1).sum()), 'duplicate row')} over {_count(len(dups), 'id')}: "
                        f"{_shown(named, len(named))}")
    if expected_ids is None:
        return problems
    expected = pd.Index(expected_ids).astype(str)
    got = pd.Index(present.unique())
    missing = expected.difference(got, sort=False)
    extra = got.difference(expected, sort=False)
    if len(missing):
        problems.append(f"{_count(len(missing), 'test id')} missing: {_shown(_quoted(missing), len(missing))}")
    if len(extra):
        problems.append(f"{_count(len(extra), 'id')} not in the test set: {_shown(_quoted(extra), len(extra))}")
    if len(ids) != len(expected):
        problems.append(f"{_count(len(ids), 'row')}, expected {len(expected)} (one per test id)")
    return problems


def _column_problems(col: str, raw: pd.Series, ids: pd.Series) -> tuple[list[str], pd.Series]:
    """Problems of one value column, and the column as floats."""
    values = pd.to_numeric(raw, errors="coerce")
    missing = values.isna().to_numpy()
    text = raw.astype("string").str.strip().str.lower()
    na_like = (raw.isna() | text.isin(_NA_TOKENS)).to_numpy()
    checks = [
        ("not a number", missing & ~na_like, lambda i: f"'{ids.iloc[i]}' ({raw.iloc[i]!r})"),
        ("NaN or empty", missing & na_like, lambda i: f"'{ids.iloc[i]}'"),
        ("infinite", np.isinf(values.to_numpy(dtype=np.float64, na_value=np.nan)),
         lambda i: f"'{ids.iloc[i]}' ({values.iloc[i]})"),
    ]
    v = values.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        checks.append(("outside [0, 1]", np.isfinite(v) & ((v < 0) | (v > 1)),
                       lambda i: f"'{ids.iloc[i]}' ({v[i]:.6g})"))
    problems = []
    for what, mask, name in checks:
        rows = np.flatnonzero(mask)
        if len(rows):
            problems.append(f"column '{col}': {what} for {_count(len(rows), 'id')}: "
                            f"{_shown([name(i) for i in rows[:SHOWN]], len(rows))}")
    return problems, values


def validate_submission(competition: str | Competition, df_or_path: pd.DataFrame | str | os.PathLike,
                        expected_ids: Sequence[str] | None = None,
                        data_dir: str | os.PathLike | None = None) -> list[str]:
    """Every problem of a submission (empty list: valid), each naming the columns and ids at fault.

    Expected ids are ``expected_ids`` or, when ``data_dir`` is given, the competition's test ids found there;
    with neither, the id set is not compared (duplicates and values still are).
    """
    spec = get_competition(competition)
    df = df_or_path if isinstance(df_or_path, pd.DataFrame) else read_submission(df_or_path)
    if expected_ids is None and data_dir is not None:
        from kit.data.labels import load_test_table

        expected_ids = load_test_table(spec, data_dir)["id"].tolist()
    columns = [str(c) for c in df.columns]
    problems = _header_problems(spec, columns)
    id_col = spec.submission_columns[0]
    if id_col not in columns or columns.count(id_col) > 1:
        return problems  # without one id column no row can be named
    raw_ids = df[id_col]
    ids = raw_ids.where(raw_ids.isna(), raw_ids.astype(str))
    problems += _id_problems(ids.reset_index(drop=True), expected_ids)
    values = pd.DataFrame(index=range(len(df)))
    for col in value_columns(spec):
        if columns.count(col) == 1:
            col_problems, values[col] = _column_problems(col, df[col].reset_index(drop=True),
                                                         ids.reset_index(drop=True))
            problems += col_problems
    problems += get_format(spec.task).row_problems(spec, ids.reset_index(drop=True), values)
    return problems


def _message(what: str, problems: list[str]) -> str:
    return f"{what} ({len(problems)} problem{'s' * (len(problems) > 1)}): " + "; ".join(problems)


def validate_file(competition: str | Competition, path: str | os.PathLike, data_dir: str | os.PathLike | None,
                  expected_ids: Sequence[str] | None = None) -> int:
    """Raise ``SubmissionError`` listing every problem of the CSV at ``path``; return its number of rows."""
    spec = get_competition(competition)
    df = read_submission(path)
    problems = validate_submission(spec, df, expected_ids=expected_ids, data_dir=data_dir)
    if problems:
        raise SubmissionError(_message(f"{path} is not a valid {spec.name} submission", problems))
    return len(df)


# --------------------------------------------------------------------------------------------------- writing
def build_submission(competition: str | Competition, ids: Sequence, predictions: np.ndarray) -> pd.DataFrame:
    """The submission frame for ``predictions`` (one row per id) in the competition's exact columns."""
    spec = get_competition(competition)
    values = get_format(spec.task).values(spec, predictions)
    ids = [str(i) for i in ids]
    if len(ids) != len(values):
        raise SubmissionError(f"{spec.name}: {len(ids)} ids but {len(values)} rows of predictions")
    df = pd.DataFrame(values, columns=value_columns(spec))
    df.insert(0, spec.submission_columns[0], ids)
    return df


def _submission_path(out_dir: Path, competition: str, run_name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"{competition}-{run_name}-{stamp}.csv"
    n = 2
    while path.exists():  # two writes of one run within a second must not overwrite each other
        path = out_dir / f"{competition}-{run_name}-{stamp}-{n}.csv"
        n += 1
    return path


def write_submission(competition: str | Competition, ids: Sequence, predictions: np.ndarray, run_name: str,
                     out_dir: str | os.PathLike = "submissions", expected_ids: Sequence[str] | None = None) -> Path:
    """Validate, then atomically write ``<out_dir>/<competition>-<run>-<UTC YYYYmmdd-HHMMSS>.csv``.

    Nothing is written (not even ``out_dir``) when the submission is invalid: ``SubmissionError`` lists why.
    """
    spec = get_competition(competition)
    if not _RUN_NAME.match(run_name):
        raise ConfigError(f"run name '{run_name}' must be letters, digits, '.', '_' or '-' (it becomes part of "
                          "the file name)")
    df = build_submission(spec, ids, predictions)
    problems = validate_submission(spec, df, expected_ids=expected_ids)
    if problems:
        raise SubmissionError(_message(f"refusing to write the {spec.name} submission of run '{run_name}'",
                                       problems))
    return write_csv_atomic(df, _submission_path(Path(out_dir), spec.name, run_name), float_format=FLOAT_FORMAT)
