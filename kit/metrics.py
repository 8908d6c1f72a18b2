"""Competition metrics, by name: ROC AUC, ISIC 2024 partial AUC above 80% TPR, balanced multiclass accuracy.

Every metric takes ``(y_true, y_pred)`` with ``y_true`` the 0/1 target (binary) or class index (multiclass) and
``y_pred`` the positive-class probability (binary, shape N) or class probabilities (multiclass, shape N x C), and
returns a float where higher is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.metrics import auc as sklearn_auc
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve

from kit.errors import DataError
from kit.registry import Registry


def auc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        raise DataError("AUC needs both classes in the targets; this split has only one")
    return float(roc_auc_score(y_true, y_pred))


def pauc_above_tpr(y_true: np.ndarray, y_pred: np.ndarray, min_tpr: float = 0.80) -> float:
    """Partial AUC over TPR in [min_tpr, 1], as the ISIC 2024 challenge scores it (range 0 to 1 - min_tpr = 0.2).

    The official code flips the problem: scores are negated and labels swapped, so the region TPR >= 0.8 becomes
    FPR <= 0.2 of the flipped curve, and the unnormalised area there is the partial AUC.
    """
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        raise DataError("pAUC needs both classes in the targets; this split has only one")
    v_gt = np.abs(y_true - 1)
    v_pred = -np.asarray(y_pred, dtype=float)
    max_fpr = abs(1 - min_tpr)
    fpr, tpr, _ = roc_curve(v_gt, v_pred)
    stop = np.searchsorted(fpr, max_fpr, "right")
    x_interp = [fpr[stop - 1], fpr[stop]]
    y_interp = [tpr[stop - 1], tpr[stop]]
    tpr = np.append(tpr[:stop], np.interp(max_fpr, x_interp, y_interp))
    fpr = np.append(fpr[:stop], max_fpr)
    return float(sklearn_auc(fpr, tpr))  # the trapezoid rule; np.trapezoid is absent before NumPy 2.0


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in y_true (the ISIC 2018/2019 score), from class probabilities."""
    y_pred = np.asarray(y_pred)
    labels = y_pred.argmax(axis=1) if y_pred.ndim == 2 else y_pred
    return float(balanced_accuracy_score(np.asarray(y_true), labels))


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``metric(y_true, y_pred) -> float`` (higher is better), the task its inputs are laid out
    for, its best possible value (1.0 for AUC; 0.2 for the partial AUC above 80% TPR), and whether only the order
    of the scores counts (then blends are fitted on ranks, where a weight means the same for every member)."""

    fn: Callable[[np.ndarray, np.ndarray], float]
    task: str
    best: float = 1.0
    rank_based: bool = False

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return self.fn(y_true, y_pred)


METRICS: Registry[Metric] = Registry("metric")
METRICS.add("auc", Metric(auc, "binary", rank_based=True))
METRICS.add("pauc80", Metric(pauc_above_tpr, "binary", best=0.2, rank_based=True))
METRICS.add("balanced_accuracy", Metric(balanced_accuracy, "multiclass"))


def get_metric(name: str) -> Metric:
    """The metric ``name``, callable as ``metric(y_true, y_pred)``; an unknown name raises with the known ones."""
    return METRICS.get(name)
