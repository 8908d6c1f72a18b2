"""Decision weights for metrics decided by argmax: balanced accuracy (ISIC 2018 Task 3, ISIC 2019).

A model trained with cross-entropy ranks classes by probability; balanced accuracy (the mean recall over classes)
rewards predicting the rare classes more often than their probabilities say. Per-class multiplicative weights ``w``
turn probabilities ``p`` into ``p * w / sum(p * w)``: the argmax moves towards the rare classes, and each row is
still a probability distribution, so a submission stays a valid probability table.

The weights are fitted on out-of-fold predictions by coordinate ascent over a log-spaced grid. Fitted on the OOF that
also reports the score they would flatter it, so the CV before and after is nested, like the ensemble's weights: for
each fold the weights are fitted on the other folds' OOF and scored on the held-out one; the final weights, applied to
the test set, are fitted on all OOF. They are applied by default only where the nested CV shows they help.

>>> fit = fit_nested(probs, target, fold)
>>> fit.helps, fit.cv_before, fit.cv_after
>>> test = apply_weights(test_probs, fit.weights)
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kit.errors import ConfigError, DataError
from kit.oof import prediction_values
from kit.records import Decision, PredictInfo
from kit.rundir import RunDir

__all__ = ["DECISION_METRICS", "DECISION_MODES", "DecisionFit", "apply_saved_weights", "apply_weights",
           "balanced_accuracy_of_labels", "decide_run", "fit_nested", "fit_weights", "format_fit", "saved_weights"]

log = logging.getLogger(__name__)

DECISION_METRICS = ("balanced_accuracy",)
"""Competition metrics scored on the argmax of the probabilities, where decision weights can help."""
DECISION_MODES = ("auto", "on", "off")
"""auto: apply where the nested CV improves; on: always (for a balanced-accuracy competition); off: never."""
GRID = np.exp(np.linspace(-3.0, 3.0, 31))  # multipliers from 1/20 to 20 around the current weight
ROUNDS = 4


def balanced_accuracy_of_labels(target: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``target`` (sklearn's balanced_accuracy_score, vectorised)."""
    counts = np.bincount(target, minlength=n_classes)
    hits = np.bincount(target[labels == target], minlength=n_classes)
    present = counts > 0
    return float(np.mean(hits[present] / counts[present]))


def apply_weights(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``probs * weights``, each row renormalised to sum to 1."""
    out = np.asarray(probs, dtype=np.float64) * np.asarray(weights, dtype=np.float64)[None, :]
    return out / np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)


def fit_weights(probs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-class weights (geometric mean 1) that maximise the balanced accuracy of ``argmax(probs * w)``.

    Coordinate ascent: each round tries every grid multiplier for each class in turn and keeps the best; among equal
    scores the multiplier closest to 1 wins, so a class whose weight does not matter keeps it.
    """
    probs = np.asarray(probs, dtype=np.float64)
    target = np.asarray(target, dtype=int)
    if probs.ndim != 2 or len(probs) != len(target):
        raise DataError(f"decision weights need an N x C probability table and N targets; got {probs.shape} and "
                        f"{target.shape}")
    n_classes = probs.shape[1]
    log_p = np.log(np.clip(probs, 1e-12, None))
    log_w = np.zeros(n_classes)
    best = balanced_accuracy_of_labels(target, np.argmax(log_p, axis=1), n_classes)
    order = np.argsort(np.abs(np.log(GRID)), kind="stable")  # 1 first, then outwards: ties keep the smaller move
    for _ in range(ROUNDS):
        improved = False
        for c in range(n_classes):
            for g in np.log(GRID)[order]:
                trial = log_w.copy()
                trial[c] += g
                score = balanced_accuracy_of_labels(target, np.argmax(log_p + trial, axis=1), n_classes)
                if score > best + 1e-12:
                    best, log_w, improved = score, trial, True
        if not improved:
            break
    return np.exp(log_w - log_w.mean())


@dataclass
class DecisionFit:
    """Decision weights fitted on all OOF, and the nested CV (balanced accuracy) without and with them."""

    weights: list[float]
    cv_before: float
    cv_after: float
    mean_before: float
    mean_after: float
    folds_before: dict[int, float] = field(default_factory=dict)
    folds_after: dict[int, float] = field(default_factory=dict)
    in_sample: float = 0.0
    """The final weights scored on the OOF they were fitted on (optimistic, not a CV)."""

    @property
    def helps(self) -> bool:
        """Whether the nested CV improves, pooled and as the mean of folds."""
        return self.cv_after > self.cv_before and self.mean_after > self.mean_before

    def to_dict(self) -> dict:
        return {**asdict(self), "helps": self.helps}


def fit_nested(probs: np.ndarray, target: np.ndarray, fold: np.ndarray) -> DecisionFit:
    """Weights fitted on all OOF, with the CV before and after nested over ``fold`` (weights for fold k fitted on
    the other folds only)."""
    probs, target, fold = np.asarray(probs, dtype=np.float64), np.asarray(target, dtype=int), np.asarray(fold)
    n_classes = probs.shape[1]
    folds = [int(k) for k in np.unique(fold)]
    if len(folds) < 2:
        raise DataError("decision weights need out-of-fold predictions of at least 2 folds for a nested CV")
    nested = np.empty_like(probs)
    for k in folds:
        held = fold == k
        nested[held] = apply_weights(probs[held], fit_weights(probs[~held], target[~held]))

    def score(p: np.ndarray, rows=slice(None)) -> float:
        return balanced_accuracy_of_labels(target[rows], p[rows].argmax(axis=1), n_classes)

    before = {k: score(probs, fold == k) for k in folds}
    after = {k: score(nested, fold == k) for k in folds}
    weights = fit_weights(probs, target)
    return DecisionFit([float(w) for w in weights], score(probs), score(nested), float(np.mean(list(before.values()))),
                       float(np.mean(list(after.values()))), before, after, score(apply_weights(probs, weights)))


def format_fit(fit: DecisionFit, classes: list[str]) -> str:
    """Two lines: the nested CV before and after, and the weights per class."""
    verdict = "applied" if fit.helps else "not applied (no gain in nested CV)"
    weights = " ".join(f"{c}={w:.2f}" for c, w in zip(classes, fit.weights, strict=True))
    return (f"decision weights: balanced_accuracy CV {fit.cv_before:.4f} -> {fit.cv_after:.4f} (mean of folds "
            f"{fit.mean_before:.4f} -> {fit.mean_after:.4f}; nested: weights fitted on the other folds) -> "
            f"{verdict}\n  weights {weights}; in-sample {fit.in_sample:.4f} (optimistic)")


def decide_run(run_dir: str | Path, mode: str = "auto") -> np.ndarray | None:
    """Fit decision weights on a predicted run's OOF (``oof_tta.csv``: the same TTA as its test predictions), print
    the nested CV before and after, write ``decision.json``; the weights to apply to the test set, or None (not a
    balanced-accuracy competition, ``mode`` off, or auto without a nested gain). A decision.json of an earlier
    kit predict is removed first: the kernel applies what it says to these predictions."""
    if mode not in DECISION_MODES:
        raise ConfigError(f"--decision {mode} is not valid; expected one of {', '.join(DECISION_MODES)}")
    run = RunDir.open(run_dir)
    spec = run.competition()
    if spec.metric not in DECISION_METRICS:
        return None
    with run.writing():  # an earlier kit predict's weights no longer match these predictions (a kernel reads them)
        run.record_path(Decision).unlink(missing_ok=True)
    if mode == "off":
        return None
    path = run.path / (run.load(PredictInfo).oof or run.OOF_TTA)
    if not path.is_file():
        raise DataError(f"{path} is missing: decision weights are fitted on the OOF predictions of kit predict")
    oof = run.predictions(path)
    folds = sorted(int(k) for k in oof["fold"].unique())
    if len(folds) < 2:
        return _cannot_fit(run, path, folds, mode)
    fit = fit_nested(prediction_values(spec, oof, path), oof["target"].to_numpy(dtype=int), oof["fold"].to_numpy())
    applied = fit.helps or mode == "on"
    with run.writing():
        run.save(Decision(fit.weights, list(spec.classes), applied, mode, path.name, fit.cv_before, fit.cv_after,
                          fit.mean_before, fit.mean_after, fit.folds_before, fit.folds_after, fit.in_sample,
                          fit.helps))
    log.info(format_fit(fit, list(spec.classes)) + (" (applied: --decision on)" if applied and not fit.helps
                                                     else ""))
    return np.asarray(fit.weights) if applied else None


def _cannot_fit(run: RunDir, oof: Path, folds: list[int], mode: str) -> None:
    """One fold's OOF has no held-out folds to nest over: auto skips the weights with a note, on fails (the
    predictions are saved by then, and kit ensemble writes their submission)."""
    why = (f"decision weights need out-of-fold predictions of at least 2 folds ({oof} holds fold "
           f"{','.join(map(str, folds)) or 'none'})")
    if mode == "on":
        raise DataError(f"--decision on: {why}; the test predictions are saved in {run.path}: `kit ensemble "
                        f"{run.path}` writes their submission without decision weights")
    log.info(f"note: {why}: skipped")
    return None


def saved_weights(run_dir: str | Path) -> np.ndarray | None:
    """The decision weights of the run's ``decision.json`` where kit predict applied them (a Kaggle kernel has no
    OOF to fit on), else None."""
    run = RunDir(run_dir)
    saved = run.load(Decision, optional=True)
    if saved is None or not saved.applied:
        return None
    n_classes = len(run.competition().classes)
    if len(saved.weights) != n_classes:
        raise DataError(f"{run.record_path(Decision)}: {len(saved.weights)} weights for {n_classes} classes")
    return np.asarray(saved.weights)


def apply_saved_weights(run_dir: str | Path, probs: np.ndarray) -> np.ndarray:
    """``probs`` with :func:`saved_weights` applied; unchanged when there are none."""
    weights = saved_weights(run_dir)
    return probs if weights is None else apply_weights(probs, weights)
