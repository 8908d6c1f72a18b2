"""Ensembling several prediction sources (runs, stacks) into one submission, each source's folds blended first
(:mod:`kit.blend`, which holds the blend strategies).

A blend is a strategy with two steps: ``weights`` (equal, or fitted on out-of-fold predictions) and ``combine``
(arithmetic mean, mean of percentile ranks, geometric mean). Weights fitted on the OOF that also reports the score
would flatter the blend, so a fitted blend's CV is nested: for each fold the weights are fitted on the other folds'
OOF and scored on the held-out one; the final weights, used for the test set, are fitted on all OOF.

>>> result = ensemble_runs(["runs/a", "runs/b"], method="fit")
>>> result.submission   # submissions/<competition>-ensemble-<UTC stamp>.csv, validated
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kit.blend import (
    BLENDS,
    Blend,
    Metric,
    blend_folds,
    caruana_weights,
    check_same_folds,
    get_blend,
    get_fold_blend,
    list_blends,
    register_blend,
)
from kit.competitions import Competition
from kit.data.labels import load_test_table
from kit.errors import ConfigError, DataError, KitError
from kit.io import resolve_stored_path, write_text_atomic
from kit.metrics import get_metric
from kit.oof import prediction_values
from kit.records import PredictInfo
from kit.rundir import open_source
from kit.words import article

__all__ = [
    "BLENDS",
    "Blend",
    "BlendScore",
    "EnsembleResult",
    "Member",
    "blend_folds",
    "caruana_weights",
    "check_same_folds",
    "ensemble_runs",
    "get_blend",
    "get_fold_blend",
    "list_blends",
    "load_member",
    "register_blend",
    "score_blends",
    "write_summary",
]

log = logging.getLogger(__name__)

# -------------------------------------------------------------------------------------------------- members
@dataclass
class Member:
    """One run's predictions: OOF (aligned to ``ids``) and the fold-blended test predictions."""

    name: str
    run_dir: Path
    spec: Competition
    ids: np.ndarray
    fold: np.ndarray
    target: np.ndarray
    oof: np.ndarray
    oof_source: str
    test_ids: np.ndarray
    test: np.ndarray
    folds: list[int]
    data_dir: Path | None = None


def load_member(run_dir: str | Path, fold_blend: str = "mean") -> Member:
    """A predicted run (``kit predict`` wrote predict.json, oof_tta.csv and test_fold{k}.csv); its test folds
    blended by :func:`blend_folds`."""
    run = open_source(run_dir)
    spec = run.competition()
    info = run.load(PredictInfo)
    oof_path = run.path / (info.oof or run.OOF_TTA)
    if not oof_path.is_file():
        raise KitError(f"{oof_path} is missing: run `kit predict {run.path}` again")
    oof = run.predictions(oof_path)
    test_ids, test = blend_folds(run.path, fold_blend)
    data = resolve_stored_path(info.data, run.path) if info.data else None  # relative to the run
    return Member(run.path.name, run.path, spec, oof[spec.id_col].to_numpy(), oof["fold"].to_numpy(dtype=int),
                  oof["target"].to_numpy(dtype=int), prediction_values(spec, oof, oof_path), oof_path.name, test_ids,
                  test, info.folds, data)


def _align(members: list[Member]) -> None:
    """Reorder every member's OOF and test rows to the first member's ids; raise when the id sets differ."""
    ref = members[0]
    for m in members[1:]:
        for what, ids, ref_ids in (("out-of-fold", m.ids, ref.ids), ("test", m.test_ids, ref.test_ids)):
            if set(ids) != set(ref_ids):
                diff = sorted(set(ids) ^ set(ref_ids))
                raise DataError(f"runs {ref.run_dir} and {m.run_dir} predict different {what} ids ({len(diff)} "
                                f"differ, e.g. {', '.join(diff[:5])}); predict the same folds of both runs")
        order = pd.Index(m.ids).get_indexer(ref.ids)
        m.ids, m.fold, m.target, m.oof = m.ids[order], m.fold[order], m.target[order], m.oof[order]
        if not np.array_equal(m.target, ref.target):
            raise DataError(f"{m.run_dir}: OOF targets differ from those of {ref.run_dir} for the same ids")
        t_order = pd.Index(m.test_ids).get_indexer(ref.test_ids)
        m.test_ids, m.test = m.test_ids[t_order], m.test[t_order]


# --------------------------------------------------------------------------------------------------- scores
@dataclass
class BlendScore:
    """One member's or one blend's out-of-fold score."""

    name: str
    cv: float
    mean_of_folds: float
    folds: dict[int, float]
    nested: bool = False
    in_sample: float | None = None
    """For a fitted blend: the score of the final weights on the OOF they were fitted on (optimistic)."""
    weights: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _score(name: str, pred: np.ndarray, target: np.ndarray, fold: np.ndarray, metric: Metric, **kw) -> BlendScore:
    per_fold = {int(k): metric(target[fold == k], pred[fold == k]) for k in np.unique(fold)}
    return BlendScore(name, metric(target, pred), float(np.mean(list(per_fold.values()))), per_fold, **kw)


def nested_predictions(blend: Blend, preds: Sequence[np.ndarray], target: np.ndarray, fold: np.ndarray,
                       metric: Metric, task: str) -> np.ndarray:
    """OOF predictions of ``blend`` where each fold's weights were fitted on the other folds only."""
    out = np.empty_like(np.asarray(preds[0], dtype=np.float64))
    for k in np.unique(fold):
        held = fold == k
        w = blend.weights([p[~held] for p in preds], target[~held], metric)
        out[held] = blend.combine([p[held] for p in preds], w, task)
    return out


def score_blends(members: list[Member], methods: Sequence[str] | None = None) -> tuple[list[BlendScore],
                                                                                       dict[str, np.ndarray]]:
    """Scores of each member and each blend (a fitted blend's CV nested over the folds; left out where the OOF has
    one fold), and each blend's final weights (fitted on all OOF)."""
    spec = members[0].spec
    metric = get_metric(spec.metric)
    target, fold = members[0].target, members[0].fold
    preds = [m.oof for m in members]
    names = [m.name for m in members]
    rows = [_score(m.name, m.oof, target, fold, metric, note=f"member ({m.oof_source})") for m in members]
    weights: dict[str, np.ndarray] = {}
    for method in methods or list_blends():
        blend = get_blend(method)
        if blend.fitted and len(np.unique(fold)) < 2:
            continue  # a nested CV needs a held-out fold and others to fit on (a run trained with --folds 0)
        w = blend.weights(preds, target, metric)
        weights[method] = w
        named = dict(zip(names, (float(x) for x in w), strict=True))
        if blend.fitted:
            nested = nested_predictions(blend, preds, target, fold, metric, spec.task)
            rows.append(_score(f"blend {method}", nested, target, fold, metric, nested=True,
                               in_sample=metric(target, blend.combine(preds, w, spec.task)), weights=named,
                               note="; ".join(filter(None, ["nested CV: weights fitted on the other folds",
                                                            blend.note(spec.task)]))))
        else:
            rows.append(_score(f"blend {method}", blend.combine(preds, w, spec.task), target, fold, metric,
                               weights=named, note=blend.note(spec.task) or "no fitted weights"))
    return rows, weights


def format_scores(metric: str, rows: list[BlendScore], chosen: str | None = None) -> str:
    """The side-by-side table printed by ``kit ensemble``; the ``chosen`` blend (the one submitted) is marked."""
    width = max(len(r.name) for r in rows) + 2
    lines = [f"{'':<{width}}{metric + ' CV':>12}{'mean of folds':>15}  weights / notes"]
    for r in rows:
        extra = r.note
        if r.weights and (r.nested or len(set(r.weights.values())) > 1):
            extra = " ".join(f"{k}={v:.2f}" for k, v in r.weights.items()) + f"; {r.note}"
        if r.in_sample is not None:
            extra += f"; in-sample {r.in_sample:.4f} (optimistic, not a CV)"
        mark = "  <- chosen" if chosen is not None and r.name == f"blend {chosen}" else ""
        lines.append(f"{r.name:<{width}}{r.cv:>12.4f}{r.mean_of_folds:>15.4f}  {extra}{mark}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- ensemble
@dataclass
class EnsembleResult:
    """A blend of several runs: the scores table, the chosen weights, the blended test predictions."""

    method: str
    spec: Competition
    scores: list[BlendScore]
    weights: dict[str, float]
    members: list[Member]
    test_ids: np.ndarray
    test: np.ndarray
    expected_ids: list[str]
    """The competition's test ids, which the submission must match."""
    decision: dict | None = None
    """Balanced accuracy: the decision weights fitted on the blend's OOF, their nested CV, whether ``test`` has them."""
    decision_note: str = ""
    """The two lines that say so (kit ensemble prints them)."""


def _load_members(run_dirs: Sequence[Path], fold_blend: str) -> list[Member]:
    members = [load_member(r, fold_blend) for r in run_dirs]
    spec = members[0].spec
    for m in members[1:]:
        if m.spec.name != spec.name:
            raise ConfigError(f"{m.run_dir} is {article(m.spec.name)} run but {members[0].run_dir} is {spec.name}")
    check_same_folds(run_dirs)
    if len({m.name for m in members}) < len(members):
        for m in members:
            m.name = str(m.run_dir)
    _align(members)
    return members


def blend_decision(members: list[Member], method: str, test: np.ndarray,
                   mode: str = "auto") -> tuple[np.ndarray, dict | None, str]:
    """Balanced accuracy: decision weights fitted on the blend's OOF (nested over the folds, as kit predict fits
    them on one run's), applied to the blended test predictions where the nested CV gains, or always (``mode``
    on). (test, the fit, its two lines); the test unchanged and None for other metrics or ``mode`` off."""
    from kit.decision import DECISION_METRICS, DECISION_MODES, apply_weights, fit_nested, format_fit

    if mode not in DECISION_MODES:
        raise ConfigError(f"--decision {mode} is not valid; expected one of {', '.join(DECISION_MODES)}")
    spec = members[0].spec
    if mode == "off" or spec.metric not in DECISION_METRICS:
        return test, None, ""
    blend, metric = get_blend(method), get_metric(spec.metric)
    preds, target, fold = [m.oof for m in members], members[0].target, members[0].fold
    if len(np.unique(fold)) < 2:  # nothing to fit the weights on out of fold
        why = "decision weights need out-of-fold predictions of at least 2 folds"
        if mode == "on":
            raise ConfigError(f"kit ensemble --decision on: {why}; these have fold {fold[0]} only")
        return test, None, f"note: {why} (fold {fold[0]} only): skipped"
    oof = (nested_predictions(blend, preds, target, fold, metric, spec.task) if blend.fitted
           else blend.combine(preds, blend.weights(preds, target, metric), spec.task))
    fit = fit_nested(oof, target, fold)
    applied = fit.helps or mode == "on"
    note = format_fit(fit, list(spec.classes)) + (" (applied: --decision on)" if applied and not fit.helps else "")
    test = apply_weights(test, np.asarray(fit.weights)) if applied else test
    return test, {**fit.to_dict(), "classes": list(spec.classes), "applied": applied, "mode": mode}, note


def ensemble_runs(run_dirs: Sequence[str | Path], method: str = "mean", data_dir: str | Path | None = None,
                  fold_blend: str = "mean", verbose: bool = True, decision: str = "auto") -> EnsembleResult:
    """Blend the OOF and test predictions of predicted runs (each run's folds first blended by ``fold_blend``);
    for balanced accuracy, with the blend's decision weights (:func:`blend_decision`)."""
    blend = get_blend(method)
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise ConfigError("kit ensemble needs at least one run folder")
    members = _load_members(run_dirs, fold_blend)
    spec = members[0].spec
    if blend.note(spec.task):
        log.info(f"note: {blend.note(spec.task)}")
    rows, weights = score_blends(members)
    if method not in weights:
        raise ConfigError(f"kit ensemble --method {method} fits weights with a nested CV, which needs out-of-fold predictions of "
                          f"at least 2 folds; these have fold {members[0].fold[0]} only: use "
                          f"{', '.join(n for n, b in BLENDS.items() if not b.fitted)}")
    if verbose:
        log.info(format_scores(spec.metric, rows, method))
    w = weights[method]
    test = blend.combine([m.test for m in members], w, spec.task)
    test, fit, note = blend_decision(members, method, test, decision)
    named = {m.name: float(x) for m, x in zip(members, w, strict=True)}
    return EnsembleResult(method, spec, rows, named, members, members[0].test_ids, test,
                          _expected_test_ids(spec, members, data_dir), fit, note)


def write_summary(result: EnsembleResult, path: Path) -> Path:
    """The JSON summary of a blend (members, weights, every score), written beside its submission."""
    return write_text_atomic(path, json.dumps({
        "competition": result.spec.name, "metric": result.spec.metric, "method": result.method,
        "weights": result.weights,
        "members": [{"name": m.name, "run_dir": str(m.run_dir), "oof": m.oof_source, "folds": m.folds}
                    for m in result.members],
        "scores": [r.__dict__ for r in result.scores], "decision": result.decision}, indent=2, default=float))


def _expected_test_ids(spec: Competition, members: list[Member], data_dir: str | Path | None) -> list[str]:
    """The competition's test ids from the data folder (--data, else the first run's), else the predicted ids."""
    folder = Path(data_dir) if data_dir else members[0].data_dir
    if folder is not None and folder.is_dir():
        return load_test_table(spec, folder)["id"].tolist()
    if data_dir:
        raise DataError(f"data folder not found: {data_dir}")
    log.info(f"note: data folder {folder} not found here; the submission is checked against the predicted test ids")
    return [str(i) for i in members[0].test_ids]
