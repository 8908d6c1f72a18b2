"""Is run B really better than run A? The difference of their CV scores with a paired bootstrap interval.

Both runs predicted the same out-of-fold rows, so the comparison is paired: each resample draws the rows (or, where
the competition has them, whole groups: a patient's or a lesion's images together) once and scores both runs on that
same draw. Rows of one group are correlated (one patient's lesions look alike, a model gets them right or wrong
together), so resampling single rows would make the interval too narrow; resampling groups keeps it honest.

The interval is the percentile interval of the resampled differences ``score(B) - score(A)``. Two runs trained on
different folds are not compared: their OOF rows were scored by models that saw different data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from kit.errors import DataError, KitError
from kit.metrics import get_metric
from kit.oof import prediction_values
from kit.progress import Progress
from kit.rundir import RunDir

__all__ = ["BootstrapResult", "Comparison", "compare_runs", "paired_bootstrap", "resample_rows", "run_groups"]

MetricFn = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class BootstrapResult:
    diff: float
    """score(B) - score(A) on all rows."""
    low: float
    high: float
    confidence: float
    p_not_better: float
    """Share of resamples in which B scored no better than A."""
    resamples: int
    """Resamples scored (a resample where the metric is undefined, one class only, is skipped)."""


class _GroupIndex:
    """Rows by group, to draw whole groups with replacement and get their rows back in one vectorised step."""

    def __init__(self, groups: np.ndarray):
        codes = pd.factorize(pd.Series(groups), sort=False)[0]
        self.order = np.argsort(codes, kind="stable")
        self.counts = np.bincount(codes)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])

    @property
    def n_groups(self) -> int:
        return len(self.counts)

    def rows(self, picked: np.ndarray) -> np.ndarray:
        lengths = self.counts[picked]
        ends = np.cumsum(lengths)
        # position within the concatenation, shifted to each picked group's start
        offsets = np.repeat(self.starts[picked] - (ends - lengths), lengths)
        return self.order[np.arange(ends[-1]) + offsets]


def resample_rows(n_rows: int, groups: np.ndarray | None, rng: np.random.Generator,
                  index: _GroupIndex | None = None) -> np.ndarray:
    """Row indices of one bootstrap resample: ``n_rows`` rows, or as many whole groups as there are groups."""
    if groups is None:
        return rng.integers(0, n_rows, n_rows)
    index = index or _GroupIndex(groups)
    return index.rows(rng.integers(0, index.n_groups, index.n_groups))


def _score(metric: MetricFn, target: np.ndarray, pred: np.ndarray) -> float | None:
    try:
        with warnings.catch_warnings():  # a resample that lacks a class the model predicts is expected, not news
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            value = float(metric(target, pred))
    except (DataError, ValueError):  # one class only in this resample: the metric is undefined
        return None
    return value if np.isfinite(value) else None


def paired_bootstrap(metric: MetricFn, target: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                     groups: np.ndarray | None = None, resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0, progress: bool = False) -> BootstrapResult:
    """The difference ``metric(B) - metric(A)`` and its percentile interval over ``resamples`` paired resamples
    of the rows (of whole groups when ``groups`` is given: one label per row)."""
    if not 0 < confidence < 1:
        raise KitError(f"confidence must be between 0 and 1, got {confidence}")
    if resamples < 10:
        raise KitError(f"at least 10 resamples are needed, got {resamples}")
    rng = np.random.default_rng(seed)
    index = _GroupIndex(groups) if groups is not None else None
    diffs = []
    with Progress(resamples, "paired bootstrap", unit="resample", enabled=progress) as bar:
        for _ in range(resamples):
            rows = resample_rows(len(target), groups, rng, index)
            a, b = _score(metric, target[rows], pred_a[rows]), _score(metric, target[rows], pred_b[rows])
            if a is not None and b is not None:
                diffs.append(b - a)
            bar.update()
    if len(diffs) < resamples // 2:
        raise KitError(f"the metric is undefined on {resamples - len(diffs)} of {resamples} resamples (too few "
                       "rows of a class); compare runs with more out-of-fold rows")
    d = np.asarray(diffs)
    tail = (1 - confidence) / 2
    low, high = np.quantile(d, [tail, 1 - tail])
    full = metric(target, pred_b) - metric(target, pred_a)
    return BootstrapResult(float(full), float(low), float(high), confidence, float(np.mean(d <= 0)), len(d))


# ------------------------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    metric: str
    score_a: float
    score_b: float
    tta: bool
    n_rows: int
    n_groups: int
    """Groups resampled; equal to n_rows when single rows are."""
    group_col: str | None
    result: BootstrapResult


def _oof(run: RunDir, tta: bool) -> pd.DataFrame:
    if not tta:
        return run.oof()
    oof = run.oof_tta()
    if oof is None:
        raise KitError(f"{run.path} has no {RunDir.OOF_TTA}: run `kit predict {run.path}` first, or compare "
                       "without --with-tta")
    return oof


def _paired_rows(run_a: RunDir, run_b: RunDir, oof_a: pd.DataFrame, oof_b: pd.DataFrame,
                 id_col: str) -> pd.DataFrame:
    """The OOF rows of both runs side by side; different ids or folds are refused with one line."""
    a, b = oof_a.set_index(id_col), oof_b.set_index(id_col)
    only_a, only_b = a.index.difference(b.index), b.index.difference(a.index)
    if len(only_a) or len(only_b):
        first = next(iter(only_a if len(only_a) else only_b))
        raise KitError(f"runs {run_a.path} and {run_b.path} have different folds: {len(only_a)} OOF rows only in "
                       f"the first, {len(only_b)} only in the second (first: {first}); compare runs trained on one "
                       "folds.csv (kit train --folds-file)")
    b = b.loc[a.index]
    moved = a.index[a["fold"].to_numpy() != b["fold"].to_numpy()]
    if len(moved):
        raise KitError(f"runs {run_a.path} and {run_b.path} have different folds: {len(moved)} of {len(a)} ids are "
                       f"in another fold (first: {moved[0]}); compare runs trained on one folds.csv "
                       "(kit train --folds-file)")
    if (a["target"].to_numpy() != b["target"].to_numpy()).any():
        raise KitError(f"runs {run_a.path} and {run_b.path} have different targets for the same ids")
    both = a.merge(b.drop(columns=["fold", "target"]), left_index=True, right_index=True, suffixes=("_a", "_b"))
    return both.reset_index()


def run_groups(run: RunDir, ids: pd.Series) -> np.ndarray | None:
    """Each id's group (patient, lesion) from the run's labels, or None where the competition has no groups."""
    from kit.data.labels import load_train_table

    spec = run.competition()
    if not spec.group_col:
        return None
    data = run.data_dir()
    if data is None or not Path(data).is_dir():
        raise KitError(f"{run.path}: its data folder {data} is not here, and the groups ({spec.group_col}) come "
                       "from its labels; pass --no-groups to resample single rows instead")
    table = load_train_table(spec, data).set_index("id")
    missing = ids[~ids.isin(table.index)]
    if len(missing):
        raise KitError(f"{data}: {len(missing)} OOF ids of {run.path} are not in its labels (first: "
                       f"{missing.iloc[0]})")
    return table.loc[ids, "group"].to_numpy()


def compare_runs(path_a: str | Path, path_b: str | Path, tta: bool = False, groups: bool = True,
                 resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                 progress: bool = False) -> Comparison:
    """The CV scores of two runs on the same folds, and the paired bootstrap interval of B - A."""
    run_a, run_b = RunDir.open(path_a), RunDir.open(path_b)
    spec = run_a.competition()
    if run_b.competition().name != spec.name:
        raise KitError(f"runs {run_a.path} ({spec.name}) and {run_b.path} ({run_b.competition().name}) are of "
                       "different competitions")
    rows = _paired_rows(run_a, run_b, _oof(run_a, tta), _oof(run_b, tta), spec.id_col)
    pred_a = prediction_values(spec, rows.rename(columns=lambda c: c.removesuffix("_a")), run_a.path)
    pred_b = prediction_values(spec, rows.rename(columns=lambda c: c.removesuffix("_b")), run_b.path)
    target = rows["target"].to_numpy()
    row_groups = run_groups(run_a, rows[spec.id_col].astype(str)) if groups else None
    metric = get_metric(spec.metric)
    result = paired_bootstrap(metric, target, pred_a, pred_b, row_groups, resamples, confidence, seed, progress)
    n_groups = len(rows) if row_groups is None else len(pd.unique(row_groups))
    return Comparison(run_a.name, run_b.name, spec.metric, float(metric(target, pred_a)),
                      float(metric(target, pred_b)), tta, len(rows), n_groups,
                      spec.group_col if row_groups is not None else None, result)
