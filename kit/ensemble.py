"""Blending predictions: the folds of one run, and several runs into one submission.

A blend is a strategy with two steps: ``weights`` (equal, or fitted on out-of-fold predictions) and ``combine``
(arithmetic mean, mean of percentile ranks, geometric mean). Weights fitted on the OOF that also reports the score
would flatter the blend, so a fitted blend's CV is nested: for each fold the weights are fitted on the other folds'
OOF and scored on the held-out one; the final weights, used for the test set, are fitted on all OOF.

>>> result = ensemble_runs(["runs/a", "runs/b"], method="fit")
>>> result.submission   # submissions/<competition>-ensemble-<UTC stamp>.csv, validated
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from kit.competitions import Competition
from kit.data.labels import load_test_table
from kit.errors import ConfigError, DataError, KitError
from kit.io import resolve_stored_path, write_text_atomic
from kit.metrics import get_metric
from kit.oof import prediction_values
from kit.registry import Registry
from kit.rundir import RunDir

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
    run = RunDir.open(run_dir)
    spec = run.competition()
    folds = [int(k) for k in run.predict_info()["folds"]]
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
        print(f"note: {note}")
    return test_ids, blend.combine(preds, np.full(len(preds), 1.0 / len(preds)), spec.task)


def load_member(run_dir: str | Path, fold_blend: str = "mean") -> Member:
    """A predicted run (``kit predict`` wrote predict.json, oof_tta.csv and test_fold{k}.csv); its test folds
    blended by :func:`blend_folds`."""
    run = RunDir.open(run_dir)
    spec = run.competition()
    info = run.predict_info()
    oof_path = run.path / (info.get("oof") or run.OOF_TTA)
    if not oof_path.is_file():
        raise KitError(f"{oof_path} is missing: run `kit predict {run.path}` again")
    oof = pd.read_csv(oof_path, dtype={spec.id_col: str})
    test_ids, test = blend_folds(run.path, fold_blend)
    data = resolve_stored_path(info["data"], run.path) if info.get("data") else None  # relative to the run
    return Member(run.path.name, run.path, spec, oof[spec.id_col].to_numpy(), oof["fold"].to_numpy(dtype=int),
                  oof["target"].to_numpy(dtype=int), prediction_values(spec, oof, oof_path), oof_path.name, test_ids,
                  test, [int(k) for k in info["folds"]], data)


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
    run = RunDir.open(run_dir)
    if not run.folds_path.is_file():
        raise KitError(f"{run.folds_path} is missing: {run_dir} is not a complete kit run folder")
    df = pd.read_csv(run.folds_path, dtype=str)
    return pd.Series(df["fold"].to_numpy(), index=df.iloc[:, 0].to_numpy())


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
    """Scores of each member and each blend (a fitted blend's CV nested over the folds), and each blend's final
    weights (fitted on all OOF)."""
    spec = members[0].spec
    metric = get_metric(spec.metric)
    target, fold = members[0].target, members[0].fold
    preds = [m.oof for m in members]
    names = [m.name for m in members]
    rows = [_score(m.name, m.oof, target, fold, metric, note=f"member ({m.oof_source})") for m in members]
    weights: dict[str, np.ndarray] = {}
    for method in methods or list_blends():
        blend = get_blend(method)
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
            raise ConfigError(f"{m.run_dir} is a {m.spec.name} run but {members[0].run_dir} is {spec.name}")
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
        print(f"note: {blend.note(spec.task)}")
    rows, weights = score_blends(members)
    if verbose:
        print(format_scores(spec.metric, rows, method))
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
    print(f"note: data folder {folder} not found here; the submission is checked against the predicted test ids")
    return [str(i) for i in members[0].test_ids]
