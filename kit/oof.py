"""Prediction frames and their scores: the schema of ``oof.csv``, ``oof_tta.csv`` and ``test_fold{k}.csv``.

One row per image: the competition's id column, then (out-of-fold only) ``fold`` and ``target``, then the prediction
columns: ``pred`` for a binary competition, one probability per class (in the competition's order) for a multiclass
one. Training, prediction and the ensemble all build and read the frames here, and every CV score is computed from
such a frame, i.e. from saved predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kit.competitions import Competition
from kit.errors import DataError
from kit.metrics import get_metric

__all__ = ["log_loss", "prediction_columns", "prediction_frame", "prediction_values", "score_oof"]


def prediction_columns(spec: Competition) -> list[str]:
    """``pred`` (binary) or one column per class."""
    return ["pred"] if spec.is_binary else list(spec.classes)


def prediction_frame(spec: Competition, ids, probs: np.ndarray, **extra) -> pd.DataFrame:
    """A frame of ``ids``, the ``extra`` columns (fold, target), then the prediction columns of ``probs``."""
    df = pd.DataFrame({spec.id_col: ids, **extra})
    values = probs[:, None] if spec.is_binary else probs
    for j, col in enumerate(prediction_columns(spec)):
        df[col] = values[:, j]
    return df


def prediction_values(spec: Competition, df: pd.DataFrame, source: Path | str = "predictions") -> np.ndarray:
    """The predictions of a frame: N (binary) or N x C; missing columns or non-finite values raise naming ``source``."""
    cols = prediction_columns(spec)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{source}: prediction columns {missing} missing; found {list(df.columns)}")
    values = df[cols].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{source}: NaN or infinite predictions")
    return values[:, 0] if spec.is_binary else values


def score_oof(spec: Competition, oof: pd.DataFrame) -> tuple[dict[int, float], float]:
    """Per-fold and pooled scores of an OOF frame with the competition's metric."""
    metric = get_metric(spec.metric)
    per_fold = {int(k): metric(g["target"].to_numpy(), prediction_values(spec, g)) for k, g in oof.groupby("fold")}
    return per_fold, metric(oof["target"].to_numpy(), prediction_values(spec, oof))


def log_loss(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy of predicted probabilities (binary: probability of class 1), clipped like sklearn's."""
    eps = 1e-7
    if probs.ndim == 1:
        p = np.clip(probs, eps, 1 - eps)
        return float(-np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p)))
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(targets)), targets], eps, 1.0))))
