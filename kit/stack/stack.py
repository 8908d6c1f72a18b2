"""The stacking stage: gradient-boosted trees on the metadata features and the image runs' out-of-fold scores,
trained fold by fold on the image runs' own folds, written as a stack folder: a prediction source that the later
stages take like a run (:class:`kit.rundir.StackDir`).

For outer fold k the trees train on the rows of the other folds and predict fold k's rows (their stack OOF) and the
test rows (``test_fold{k}.csv``). Fold k's rows carry the image OOF scores of image models that never trained on
them, and the trees that predict them never saw them either; the ids each fold trained on are saved in
``fold{k}/train_ids.csv`` so that anyone can check it. The folder::

    STACK/
        stack.json           the stack's own settings: models, seeds, parameters (tuned per fold), features, runs
        folds.csv                                      the folds the stack trained on (the runs' own)
        oof.csv, scores.json                           stack OOF (id, fold, target, pred) and its CV
        test_fold{k}.csv, predict.json                 each fold's test predictions; blend_folds / load_member read them
        fold{k}/train_ids.csv                          the ids fold k's trees trained on
        fold{k}/{model}_seed{s}.txt|.json|.cbm         each fitted GBDT in its library's format (kit/stack/saved.py)
        importance.csv, report/importance.png          feature importances (normalised, mean over folds and seeds)

No config.yaml and no run.json: a stack trained no image model; its competition and settings are in stack.json
(:class:`kit.records.StackInfo`), its data folder in predict.json.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kit.blend import check_same_folds
from kit.competitions import Competition, get_competition
from kit.data.folds import load_folds, make_folds, write_folds
from kit.errors import ConfigError, DataError, KitError
from kit.io import portable_path
from kit.metrics import get_metric
from kit.oof import prediction_frame, prediction_values
from kit.progress import Progress
from kit.records import PredictInfo, Scores, StackInfo
from kit.rundir import RunDir, StackDir
from kit.stack.features import FeatureTable, add_image_score, check_supported, metadata_features
from kit.stack.models import GBDTS, build_model, importances, require
from kit.stack.saved import STACK_INFO, image_test_scores, save_models, saved_info
from kit.words import article

__all__ = ["STACK_INFO", "StackResult", "StackSettings", "run_stack"]

log = logging.getLogger(__name__)

IMPORTANCE = "importance.csv"


@dataclass
class StackSettings:
    models: list[str] = field(default_factory=lambda: ["lgbm", "xgb", "cat"])
    seeds: int = 3
    trees: int | None = None
    """Boosting rounds of every model (default: each model's own, see kit.stack.models.GBDTS)."""
    tune: int = 0
    """Optuna trials per model and outer fold (0: no search, the defaults)."""
    n_folds: int = 5
    fold_seed: int = 42
    """Folds made when no run is given (grouped by patient); with runs, the first run's folds.csv."""
    neg_per_pos: float | None = None
    """Undersample the negatives of each training part to this many per positive (a new draw per seed)."""
    params: dict[str, dict] = field(default_factory=dict)


@dataclass
class StackResult:
    path: Path
    metric: str
    cv: float
    folds: dict[int, float]
    models: dict[str, float]
    inputs: dict[str, float]
    features: list[str]


@dataclass
class _Inputs:
    """What the fold loop needs: the feature table, each labelled row's fold, the member runs."""

    spec: Competition
    data_dir: Path
    table: FeatureTable
    fold: np.ndarray
    runs: list[dict]


# ---------------------------------------------------------------------------------------------------- inputs
def _open_runs(spec: Competition, run_dirs: list[Path]) -> list[RunDir]:
    runs = [RunDir.open(r) for r in run_dirs]
    for run in runs:
        if (other := run.competition().name) != spec.name:
            raise ConfigError(f"{run.path} is {article(other)} run; the stack is for {spec.name}")
        if not run.folds_path.is_file():
            raise KitError(f"{run.folds_path} is missing: {run.path} is not a complete kit run folder")
        run.load(PredictInfo)  # not predicted: one line saying to run kit predict first
    if len(runs) > 1:
        check_same_folds([r.path for r in runs])
    return runs


def _run_folds(spec: Competition, run: RunDir, table: FeatureTable) -> np.ndarray:
    """The fold of each labelled row from the run's folds.csv; rows it lacks (excluded images) leave the table."""
    mapping = load_folds(run.folds_path, spec.id_col)
    unknown = mapping.index.difference(pd.Index(table.train["id"]))
    if len(unknown):
        raise DataError(f"{run.folds_path}: {len(unknown)} ids are not in the competition's training metadata "
                        f"(first: {', '.join(unknown[:3])}); was the run trained on other data?")
    keep = table.train["id"].isin(mapping.index).to_numpy()
    if not keep.all():
        log.info(f"note: {int((~keep).sum())} labelled rows are not in {run.folds_path} (excluded from the run); "
              "the stack leaves them out too")
        table.train = table.train[keep].reset_index(drop=True)
    return mapping.reindex(table.train["id"].to_numpy()).to_numpy(dtype=int)


def _add_run(spec: Competition, run: RunDir, table: FeatureTable, fold: np.ndarray, name: str) -> dict:
    """Add a predicted run's OOF (oof_tta.csv, else oof.csv) and fold-blended test scores as features."""
    oof = run.oof_tta()
    source = run.OOF_TTA if oof is not None else run.OOF
    oof = oof if oof is not None else run.oof()
    scores = pd.Series(prediction_values(spec, oof, run.path / source), index=oof[spec.id_col].to_numpy())
    oof_fold = pd.Series(oof["fold"].to_numpy(dtype=int), index=scores.index).reindex(table.train["id"].to_numpy())
    moved = oof_fold.notna().to_numpy() & (oof_fold.to_numpy() != fold)
    if moved.any():
        raise DataError(f"{run.path / source}: {int(moved.sum())} rows carry another fold than in "
                        f"{run.folds_path} (first: {table.train['id'][moved].iloc[0]})")
    add_image_score(table, name, scores, image_test_scores(run.path), fold)
    metric = get_metric(spec.metric)
    cv = metric(table.train["target"].to_numpy(), table.train[name].to_numpy())
    predicted = run.load(PredictInfo, optional=True)
    tta = predicted.tta if predicted is not None else None
    # the TTA of the test scores: a kernel that recomputes them must use the same views (kit.kernel checks it)
    return {"name": name, "path": str(run.path.resolve()), "oof": source, "cv": cv, "tta": tta}


def load_inputs(competition: str, data_dir: str | Path | None, run_dirs: list[Path],
                settings: StackSettings) -> _Inputs:
    """The feature table (metadata + each run's scores) and the folds, every input checked."""
    spec = get_competition(competition)
    check_supported(spec)
    runs = _open_runs(spec, [Path(r) for r in run_dirs])
    if data_dir is None:
        if not runs:
            raise ConfigError("kit stack needs --data DIR (the competition folder) when no run is given")
        data_dir = runs[0].data_dir()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    table = metadata_features(spec, data_dir)
    if runs:
        fold = _run_folds(spec, runs[0], table)
    else:
        fold = make_folds(table.train["target"].to_numpy(), table.train["group"].to_numpy(), settings.n_folds,
                          settings.fold_seed)
    members, names = [], set()
    for run in runs:
        name = f"img_{run.name}" if f"img_{run.name}" not in names else f"img_{run.name}_{len(names)}"
        names.add(name)
        members.append(_add_run(spec, run, table, fold, name))
    return _Inputs(spec, data_dir, table, fold, members)


# ------------------------------------------------------------------------------------------------- fold loop
def _training_rows(y: np.ndarray, train_idx: np.ndarray, ratio: float | None, seed: int) -> np.ndarray:
    if ratio is None:
        return train_idx
    pos, neg = train_idx[y[train_idx] == 1], train_idx[y[train_idx] == 0]
    n_neg = min(len(neg), int(np.ceil(ratio * len(pos))))
    return np.sort(np.concatenate([pos, np.random.default_rng(seed).choice(neg, n_neg, replace=False)]))


def _fold_params(inputs: _Inputs, settings: StackSettings, X: np.ndarray, train_idx: np.ndarray,
                 k: int) -> dict[str, dict]:
    """Each model's parameters for outer fold k: the defaults, or tuned on fold k's training part only."""
    params = {m: dict(settings.params.get(m, {})) for m in settings.models}
    if not settings.tune:
        return params
    from kit.stack.tune import tune_params

    y, groups = inputs.table.train["target"].to_numpy(), inputs.table.train["group"].to_numpy()
    metric = get_metric(inputs.spec.metric)
    for m in settings.models:
        params[m], score = tune_params(m, X[train_idx], y[train_idx], groups[train_idx], settings.tune, metric,
                                       seed=k, trees=settings.trees, base=params[m])
        log.info(f"fold {k}: {m} tuned, {settings.tune} trials, inner-CV {inputs.spec.metric} {score:.4f}")
    return params


def _fit_fold(inputs: _Inputs, settings: StackSettings, X: np.ndarray, X_test: np.ndarray, k: int,
              progress: Progress | None = None) -> dict:
    """Train every model x seed on the other folds; their predictions of fold k and of the test rows."""
    y = inputs.table.train["target"].to_numpy()
    held = inputs.fold == k
    train_idx = np.flatnonzero(~held)
    params = _fold_params(inputs, settings, X, train_idx, k)
    val, test, imp, used, fitted = {}, {}, {}, set(), {}
    for m in settings.models:
        val[m], test[m], imp[m] = [], [], []
        for s in range(settings.seeds):
            rows = _training_rows(y, train_idx, settings.neg_per_pos, 1000 * k + s)
            used.update(rows.tolist())
            model = build_model(m, params[m], seed=s, trees=settings.trees).fit(X[rows], y[rows])
            fitted[(m, s)] = model
            val[m].append(model.predict(X[held]))
            test[m].append(model.predict(X_test))
            imp[m].append(importances(model))
            if progress is not None:
                progress.update()
    ids = inputs.table.train["id"].to_numpy()
    return {"k": k, "held": held, "params": params, "train_ids": ids[sorted(used)], "models": fitted,
            "val": {m: np.mean(v, axis=0) for m, v in val.items()},
            "test": {m: np.mean(v, axis=0) for m, v in test.items()},
            "importance": {m: np.mean(v, axis=0) for m, v in imp.items()}}


def _check_models(settings: StackSettings) -> None:
    if not settings.models:
        raise ConfigError("--models: give at least one of " + ", ".join(GBDTS.names()))
    settings.models = [GBDTS.canonical(m) for m in settings.models]
    for m in settings.models:
        require(m)
    if settings.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {settings.seeds}")
    if settings.tune < 0:
        raise ConfigError(f"--tune must be 0 (no search) or a number of trials, got {settings.tune}")
    if settings.neg_per_pos is not None and settings.neg_per_pos <= 0:
        raise ConfigError(f"--neg-per-pos must be positive, got {settings.neg_per_pos}")


# ---------------------------------------------------------------------------------------------------- writing
def _check_out(stack: StackDir) -> None:
    """Refuse a run folder that is not a stack (checked before any work, and again under the lock)."""
    if stack.path.is_dir() and RunDir(stack.path).is_run() and not stack.is_stack():
        raise KitError(f"{stack.path} is a kit run folder, not a stack: give kit stack another --out")


def _prepare_folder(stack: StackDir) -> None:
    """Clear an old stack's per-fold files (and the config.yaml and run.json that kit 0.2 wrote into a stack)."""
    _check_out(stack)
    for old in [*stack.path.glob("test_fold*.csv"), stack.path / RunDir.CONFIG, stack.path / RunDir.INFO]:
        old.unlink(missing_ok=True)
    for k in stack.fold_numbers():
        shutil.rmtree(stack.fold_dir(k), ignore_errors=True)


def _scores(inputs: _Inputs, fits: list[dict], pred: np.ndarray, models: list[str]) -> Scores:
    spec, y = inputs.spec, inputs.table.train["target"].to_numpy()
    metric = get_metric(spec.metric)
    per_fold = {f["k"]: metric(y[f["held"]], pred[f["held"]]) for f in fits}
    per_model = {}
    for m in models:
        p = np.empty(len(y))
        for f in fits:
            p[f["held"]] = f["val"][m]
        per_model[m] = metric(y, p)
    return Scores(spec.metric, metric(y, pred), float(np.mean(list(per_fold.values()))), per_fold, per_model,
                  {r["name"]: r["cv"] for r in inputs.runs})


def _write_stack(stack: StackDir, inputs: _Inputs, settings: StackSettings, fits: list[dict]) -> Scores:
    spec, table = inputs.spec, inputs.table
    ids, y = table.train["id"].to_numpy(), table.train["target"].to_numpy()
    pred = np.empty(len(ids))
    for f in fits:
        pred[f["held"]] = np.mean([f["val"][m] for m in settings.models], axis=0)
    folds = [f["k"] for f in fits]
    stack._check_writer()
    write_folds(stack.folds_path, pd.Series(ids), inputs.fold, spec.id_col)
    stack.write_csv(stack.oof_path, prediction_frame(spec, ids, pred, fold=inputs.fold, target=y))
    for f in fits:
        test = np.mean([f["test"][m] for m in settings.models], axis=0)
        stack.write_csv(stack.test_path(f["k"]), prediction_frame(spec, table.test["id"].to_numpy(), test))
        stack.write_csv(stack.fold_dir(f["k"]) / "train_ids.csv", pd.DataFrame({spec.id_col: f["train_ids"]}))
    scores = _scores(inputs, fits, pred, settings.models)
    stack.save(scores)
    stack.save(PredictInfo(folds, portable_path(inputs.data_dir, stack.path), stack.OOF, kind="stack"))
    _write_importance(stack, table.features, fits, settings.models)
    saved = saved_info(table.recipe, inputs.runs, save_models(stack, fits))
    # paths relative to the stack folder, as a run's: stack.json travels in a bundle without the user's home
    runs = [{**r, "path": portable_path(r["path"], stack.path)} for r in inputs.runs]
    stack.save(StackInfo(spec.name, spec.metric, table.features, runs, saved, {
        **asdict(settings), "defaults": {m: GBDTS.get(m).defaults for m in settings.models},
        "categorical": table.categorical, "unknown_categories": table.unknown,
        "test_metadata": portable_path(table.test_source, stack.path),
        "fold_params": {str(f["k"]): f["params"] for f in fits},
        "tuning": "nested: Optuna on each outer fold's training part, scored by an inner grouped CV"
        if settings.tune else None}))
    return scores


def _write_importance(stack: StackDir, features: list[str], fits: list[dict], models: list[str]) -> None:
    rows = {m: np.mean([f["importance"][m] for f in fits], axis=0) for m in models}
    df = pd.DataFrame({"feature": features, **rows})
    df["mean"] = df[models].mean(axis=1)
    df = df.sort_values("mean", ascending=False).reset_index(drop=True)
    stack.write_csv(stack.path / IMPORTANCE, df)
    plot_importance(df, stack.report_dir / "importance.png", f"{stack.name}: feature importance")


def plot_importance(df: pd.DataFrame, path: Path, title: str, top: int = 30) -> Path:
    """A horizontal bar chart of the ``top`` features' mean importance (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.figure import Figure

    from kit.io import save_figure

    head = df.head(top).iloc[::-1]
    fig = Figure(figsize=(7, 0.25 * len(head) + 1.2))
    ax = fig.add_subplot()
    ax.barh(head["feature"], head["mean"], color="tab:blue")
    ax.set(xlabel="importance (normalised, mean over models, folds and seeds)", title=title)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


# --------------------------------------------------------------------------------------------------------- run
def run_stack(competition: str, data_dir: str | Path | None, run_dirs: list[str | Path], out: str | Path,
              settings: StackSettings | None = None) -> StackResult:
    """Stack GBDTs on the metadata of ``competition`` and the scores of the predicted runs ``run_dirs``, fold by
    fold on the runs' folds (or patient-grouped folds of its own with no run); write the stack folder ``out``."""
    settings = settings or StackSettings()
    _check_models(settings)
    _check_out(StackDir(out))
    inputs = load_inputs(competition, data_dir, [Path(r) for r in run_dirs], settings)
    X, X_test = inputs.table.matrices()
    log.info(f"stack: {len(X)} rows, {len(inputs.table.features)} features, {len(settings.models)} models x "
             f"{settings.seeds} seeds, {len(np.unique(inputs.fold))} folds")
    folds = np.unique(inputs.fold)
    # a bar, or a line every KIT_PROGRESS_EVERY s, over every model x seed of every fold: minutes on real data
    with Progress(len(folds) * len(settings.models) * settings.seeds, "stack: fitting", unit="model") as progress:
        fits = [_fit_fold(inputs, settings, X, X_test, int(k), progress) for k in folds]
    stack = StackDir(out)
    with stack.writing():
        _prepare_folder(stack)
        scores = _write_stack(stack, inputs, settings, fits)
    return StackResult(stack.path, scores.metric, scores.cv, scores.folds, scores.models, scores.inputs,
                       inputs.table.features)


def format_result(result: StackResult) -> str:
    """The table printed by kit stack: each input run, each model, the stack."""
    rows = [(f"run {k}", v) for k, v in result.inputs.items()] + [(f"stack {m}", v) for m, v in result.models.items()]
    rows.append(("stack (mean of models)", result.cv))
    width = max(len(n) for n, _ in rows) + 2
    lines = [f"{'':<{width}}{result.metric + ' CV':>12}"] + [f"{n:<{width}}{v:>12.4f}" for n, v in rows]
    return "\n".join(lines)
