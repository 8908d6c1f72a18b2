"""Blending predictions of models of equal standing: the blend strategies (one registry), the folds of one
prediction source, and the check that several sources share their folds. One floor below the stages that blend:
the ensemble of runs (kit.ensemble), the stack (kit.stack), the pipeline and the kernel.

A blend is a strategy with two steps: ``weights`` (equal, or fitted on out-of-fold predictions) and ``combine``
(arithmetic mean, mean of percentile ranks, geometric mean).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from kit.data.folds import load_folds
from kit.errors import ConfigError, DataError
from kit.oof import prediction_values
from kit.records import PredictInfo
from kit.registry import Registry
from kit.rundir import open_source

__all__ = ["BLENDS", "Blend", "blend_folds", "caruana_weights", "check_same_folds", "get_blend", "get_fold_blend",
           "list_blends", "register_blend"]

log = logging.getLogger(__name__)

Metric = Callable[[np.ndarray, np.ndarray], float]
CARUANA_ITERATIONS = 25
"""Greedy steps of ensemble selection; the best-scoring prefix is kept, so more steps never hurt the fit itself."""
_EPS = 1e-7  # floor for log-probabilities in the geometric mean: a 0 from one member must not zero the blend


# --------------------------------------------------------------------------------------------------- blends
class Blend:
    """Equal weights and a weighted arithmetic mean; subclasses change how weights are found or how they combine."""

    name = "mean"
    fitted = False
    """Whether ``weights`` learns from the OOF (then the blend's CV must be nested)."""

    def note(self, task: str) -> str:
        """What to tell the user about this blend for ``task`` (empty: nothing)."""
        return ""

    def weights(self, preds: Sequence[np.ndarray], target: np.ndarray, metric: Metric) -> np.ndarray:
        return np.full(len(preds), 1.0 / len(preds))

    def combine(self, preds: Sequence[np.ndarray], weights: np.ndarray, task: str) -> np.ndarray:
        return _weighted(np.stack(preds), weights)


def _weighted(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over the first axis of an (M, N) or (M, N, C) stack."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1, *([1] * (stack.ndim - 1)))
    return (stack * w).sum(axis=0) / w.sum()


def _percentile_ranks(preds: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each column's ranks / n, in (0, 1]: a valid probability column; ties share their mean rank."""
    return [rankdata(p) / len(p) for p in preds]


BLENDS: Registry[Blend] = Registry("blend")


def register_blend(cls: type[Blend]) -> type[Blend]:
    """Class decorator: register one instance of ``cls`` under its ``name``."""
    BLENDS.add(cls.name, cls())
    return cls


def list_blends() -> list[str]:
    return BLENDS.names()


def get_blend(name: str) -> Blend:
    """The registered blend ``name``; an unknown one raises with the list of known ones."""
    return BLENDS.get(name)


register_blend(Blend)


@register_blend
class RankBlend(Blend):
    """Mean of percentile ranks (the SIIM-ISIC 2020 winners' blend): only the order of each model's scores counts."""

    name = "rank"

    def note(self, task: str) -> str:
        if task == "binary":
            return ""
        return "rank: a percentile rank per class column breaks the rows' probabilities apart; multiclass uses mean"

    def combine(self, preds: Sequence[np.ndarray], weights: np.ndarray, task: str) -> np.ndarray:
        if task != "binary":
            return super().combine(preds, weights, task)
        return _weighted(np.stack(_percentile_ranks(preds)), weights)


@register_blend
class GMeanBlend(Blend):
    """Weighted geometric mean of the probabilities (rows renormalised for multiclass)."""

    name = "gmean"

    def combine(self, preds: Sequence[np.ndarray], weights: np.ndarray, task: str) -> np.ndarray:
        out = np.exp(_weighted(np.log(np.clip(np.stack(preds), _EPS, 1.0)), weights))
        return out if task == "binary" else out / out.sum(axis=1, keepdims=True)


@register_blend
class FitBlend(Blend):
    """Weights from greedy forward ensemble selection with replacement (Caruana et al. 2004) on the OOF.

    Where the metric is rank-based (AUC, pAUC), weights are fitted on, and applied to, each member's percentile
    ranks: on raw probabilities a member whose scores are squeezed into a narrow range (an AUC 0.5 member around
    0.01) moves the blend's order little whatever its weight, so selection can pile weight on it for in-sample
    noise; on ranks a weight means the same share of the order for every member.
    """

    name = "fit"
    fitted = True

    def weights(self, preds: Sequence[np.ndarray], target: np.ndarray, metric: Metric) -> np.ndarray:
        if getattr(metric, "rank_based", False) and np.ndim(preds[0]) == 1:
            preds = _percentile_ranks(preds)
        return caruana_weights(preds, target, metric)

    def combine(self, preds: Sequence[np.ndarray], weights: np.ndarray, task: str) -> np.ndarray:
        # every binary metric kit knows is rank-based; the weights were fitted on ranks, so they apply to ranks
        return _weighted(np.stack(_percentile_ranks(preds)), weights) if task == "binary" \
            else super().combine(preds, weights, task)

    def note(self, task: str) -> str:
        return "fitted on percentile ranks (the metric is rank-based)" if task == "binary" else ""


def caruana_weights(preds: Sequence[np.ndarray], target: np.ndarray, metric: Metric,
                    iterations: int = CARUANA_ITERATIONS) -> np.ndarray:
    """Weights (summing to 1) from ensemble selection: start from the best member, add (with replacement) the one
    that most improves the metric of the running mean, keep the best-scoring prefix of the selections."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in preds])
    counts = np.zeros(len(stack))
    first = int(np.argmax([metric(target, p) for p in stack]))
    counts[first], total = 1, stack[first].copy()
    best_score, best_counts = metric(target, total), counts.copy()
    for _ in range(iterations - 1):
        n = counts.sum()
        scores = [metric(target, (total + p) / (n + 1)) for p in stack]
        j = int(np.argmax(scores))  # ties go to the earlier member: deterministic
        counts[j] += 1
        total += stack[j]
        if scores[j] > best_score:
            best_score, best_counts = scores[j], counts.copy()
    return best_counts / best_counts.sum()


# ------------------------------------------------------------------------------------------- folds
def get_fold_blend(method: str) -> Blend:
    """The blend for the folds of one run: models of equal standing predicting the same images, blended with equal
    weights. A fitted blend is refused: it would need OOF predictions that no fold has for the other folds' rows."""
    blend = get_blend(method)
    if blend.fitted:
        raise ConfigError(f"fold blend '{method}' fits weights on out-of-fold predictions; the folds of one run are "
                          f"blended with equal weights: {', '.join(n for n, b in BLENDS.items() if not b.fitted)}")
    return blend


def blend_folds(run_dir: str | Path, method: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(test ids, the test predictions of a predicted run's folds blended by ``method``; see get_fold_blend)."""
    blend = get_fold_blend(method)
    run = open_source(run_dir)
    spec = run.competition()
    folds = run.load(PredictInfo).folds
    test_ids, preds = None, []
    for k in folds:
        df = run.test_predictions(k)
        ids = df[spec.id_col].to_numpy()
        if test_ids is None:
            test_ids = ids
        elif not np.array_equal(ids, test_ids):
            raise DataError(f"{run.test_path(k)}: its ids differ from those of test_fold{folds[0]}.csv in the same run")
        preds.append(prediction_values(spec, df, run.test_path(k)))
    note = blend.note(spec.task)
    if note:
        log.info(f"note: {note}")
    return test_ids, blend.combine(preds, np.full(len(preds), 1.0 / len(preds)), spec.task)


def check_same_folds(run_dirs: Sequence[Path]) -> None:
    """Raise unless every run has the same folds.csv (same ids, each in the same fold)."""
    first = _read_folds(run_dirs[0])
    for other in run_dirs[1:]:
        folds = _read_folds(other)
        only_a, only_b = first.index.difference(folds.index), folds.index.difference(first.index)
        if len(only_a) or len(only_b):
            raise DataError(f"{run_dirs[0]}/folds.csv and {other}/folds.csv hold different ids "
                            f"({len(only_a)} only in the first, {len(only_b)} only in the second, e.g. "
                            f"{', '.join(list(only_a[:3]) + list(only_b[:3]))}); blend runs trained on one folds.csv "
                            "(kit train --folds-file)")
        moved = first.index[first.to_numpy() != folds.reindex(first.index).to_numpy()]
        if len(moved):
            raise DataError(f"{run_dirs[0]}/folds.csv and {other}/folds.csv differ: {len(moved)} of {len(first)} ids "
                            f"in another fold (first: {', '.join(moved[:5])}); their OOF scores are not comparable "
                            "and a blend fitted on them would leak. Retrain with kit train --folds-file")


def _read_folds(run_dir: Path) -> pd.Series:
    run = open_source(run_dir)
    return load_folds(run.folds_path, run.competition().id_col)
