"""Optuna search of a GBDT's parameters (the search space of its :class:`kit.stack.models.GBDTSpec`), nested
inside the stack's folds.

For each outer fold the search sees only that fold's training part: it scores a trial by an inner CV on inner folds
made from the training part alone (grouped by patient, stratified), and the outer fold's models are then trained
with the best trial's parameters. The held-out fold never takes part in choosing them, so the stack's reported CV is
an honest estimate of "tune, then train". (Tuning once on the pooled OOF of the outer folds would be cheaper, but its
CV would be scored on the very predictions that chose the parameters: optimistic.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kit.data.folds import make_folds
from kit.stack.models import GBDTS, build_model

__all__ = ["INNER_FOLDS", "tune_params"]

INNER_FOLDS = 3


def inner_cv(name: str, params: dict, X: np.ndarray, y: np.ndarray, inner: np.ndarray, metric, seed: int,
             trees: int | None) -> float:
    """Mean of ``metric`` over the inner folds of model ``name`` with ``params``."""
    scores = []
    for j in np.unique(inner):
        held = inner == j
        model = build_model(name, params, seed, trees).fit(X[~held], y[~held])
        scores.append(metric(y[held], model.predict(X[held])))
    return float(np.mean(scores))


def tune_params(name: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray, trials: int, metric, seed: int = 0,
                trees: int | None = None, base: dict | None = None) -> tuple[dict[str, Any], float]:
    """(the best parameters of ``trials`` Optuna trials for model ``name``, their inner-CV score) on the rows
    given, which must be the training part of one outer fold only."""
    import optuna

    name = GBDTS.canonical(name)
    inner = make_folds(y, groups, INNER_FOLDS, seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    base = dict(base or {})
    study.optimize(lambda t: inner_cv(name, {**base, **GBDTS.get(name).space(t)}, X, y, inner, metric, seed, trees),
                   n_trials=trials)
    return {**base, **study.best_params}, float(study.best_value)
