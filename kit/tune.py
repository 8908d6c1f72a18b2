"""Optuna search over config keys, with fold-aware pruning and studies that survive killed workers.

A trial trains the chosen folds (``kit.train.train_folds``) with the suggested config into
``<out>/<study>/trial-<n>/`` and returns the pooled out-of-fold CV score (maximised).

Pruning with folds trained one after another: the intermediate value of a trial at fold position ``p`` (the index
of the fold in the trained list) and epoch ``e`` is reported at step ``p * stride + e``, where ``stride`` is the
largest number of epochs a trial of this study can train per fold; the value is the mean over the folds already
finished of their best metric and the current fold's best metric so far. Every trial trains the same folds in the
same order, so two values at one step always describe the same folds after the same number of epochs, and the
value at the last step is the mean of the fold scores the objective is built from.

Storage: an SQLAlchemy URL (SQLite file by default; PostgreSQL for many workers) opened with heartbeats. A trial
whose worker stopped beating is failed by the next worker that looks, and a copy with the same parameters is queued;
the worker that takes it adopts the dead trial's folder and resumes its folds from their ``last.pt``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import pandas as pd
import torch
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
)
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from kit.config import SECTIONS, Config, config_to_yaml, from_dict, valid_keys
from kit.errors import ConfigError, KitError
from kit.io import atomic_path, write_text_atomic
from kit.train import TrainingError, train_folds

__all__ = [
    "PRUNERS", "SAMPLERS", "TRIAL_FAILURES", "FoldPruningCallback", "PrunerOptions", "TrialSeededSampler",
    "TuneSetup", "best_config", "check_space", "counted", "deferred_interrupt", "default_storage_url", "epoch_stride",
    "intermediate_value", "load_space", "make_pruner", "make_sampler", "open_storage", "open_study", "parse_space",
    "pruning_step", "redact_url", "run_study", "save_plots", "trial_config", "trials_table", "write_best",
]

TRIAL_FAILURES: tuple[type[BaseException], ...] = (TrainingError, ConfigError, torch.cuda.OutOfMemoryError,
                                                   MemoryError)
"""What a trial may fail with and the study survive: a diverged loss, an invalid combination of suggested values,
running out of (GPU) memory. Anything else (missing data, a bug) stops the worker."""

NOT_SEARCHABLE = ("competition", "n_folds", "fold_seed")
"""CV scores are comparable between trials only on the same folds of the same data."""

FAIL_REASON = "fail_reason"


# ---------------------------------------------------------------------------------------------------------------
# Search space: YAML mapping config keys to distributions


def _number(key: str, name: str, value: Any, source: str, integer: bool) -> float | int:
    # YAML 1.1 reads 1e-4 (no dot) as a string: accept it, since that is how people write learning rates
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{source}: '{key}': {name} must be a number, got '{value}'") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{source}: '{key}': {name} must be a number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ConfigError(f"{source}: '{key}': {name} must be an integer for type int, got {value!r}")
        return int(value)
    return float(value)


_FIELDS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
           "categorical": {"type", "choices"}}


def _distribution(key: str, spec: Any, source: str) -> BaseDistribution:
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{source}: '{key}' must be a mapping with a type (float, int or categorical), got {spec!r}")
    kind = spec["type"]
    if kind not in _FIELDS:
        raise ConfigError(f"{source}: '{key}': unknown type '{kind}'; known: {', '.join(_FIELDS)}")
    extra = sorted(set(spec) - _FIELDS[kind])
    if extra:
        raise ConfigError(f"{source}: '{key}': unknown field(s) {', '.join(extra)} for type {kind}; "
                          f"allowed: {', '.join(sorted(_FIELDS[kind]))}")
    try:
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{source}: '{key}': choices must be a non-empty list, got {choices!r}")
            return CategoricalDistribution(choices)
        for needed in ("low", "high"):
            if needed not in spec:
                raise ConfigError(f"{source}: '{key}': type {kind} needs '{needed}'")
        integer = kind == "int"
        low, high = (_number(key, n, spec[n], source, integer) for n in ("low", "high"))
        step = None if spec.get("step") is None else _number(key, "step", spec["step"], source, integer)
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{source}: '{key}': log must be true or false, got {log!r}")
        if integer:
            return IntDistribution(low, high, log=log, step=step or 1)
        return FloatDistribution(low, high, log=log, step=step)
    except ValueError as e:  # optuna's own checks: low > high, log with low <= 0, step with log, ...
        raise ConfigError(f"{source}: '{key}': {e}") from e


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """Accept ``train.lr: {...}`` and the nested ``train: {lr: {...}}`` alike."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict) and "type" not in value:
            flat.update({f"{key}.{sub}": spec for sub, spec in value.items()})
        else:
            flat[str(key)] = value
    return flat


def parse_space(data: dict[str, Any], source: str = "search space") -> dict[str, BaseDistribution]:
    """Config key -> optuna distribution; unknown or unsearchable keys raise ConfigError naming the key."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: expected a non-empty mapping of config keys to distributions")
    known = valid_keys()
    space = {}
    for key, spec in _flatten(data).items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{source}: unknown config key '{key}'.{hint} Valid keys: {', '.join(known)}")
        if key in NOT_SEARCHABLE:
            raise ConfigError(f"{source}: '{key}' cannot be searched: trials are compared on the same folds of the "
                              f"same data; set it with --config or --set")
        space[key] = _distribution(key, spec, source)
    return space


def load_space(path: str | Path) -> dict[str, BaseDistribution]:
    """Read a search-space YAML file (see kit/configs/space-*.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from e
    return parse_space(data, str(path))


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """``base`` with the flat ``section.key`` values of ``params`` set, type-checked by kit.config."""
    data = base.to_dict()
    for key, value in params.items():
        section, _, name = key.rpartition(".")
        (data[section] if section else data)[name] = value
    return from_dict(data)


def _extremes(dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def check_space(space: dict[str, BaseDistribution], base: Config, source: str = "search space") -> None:
    """Fail before any training if a bound or choice cannot be a value of its config key."""
    for key, dist in space.items():
        for value in _extremes(dist):
            try:
                trial_config(base, {key: value})
            except ConfigError as e:
                raise ConfigError(f"{source}: '{key}' value {value!r} is not valid: {e}") from e


def epoch_stride(space: dict[str, BaseDistribution], base: Config) -> int:
    """Steps reserved per fold: the most epochs any trial can train, so a step means the same for every trial."""
    dist = space.get("train.epochs")
    return int(max(_extremes(dist))) if dist is not None else base.train.epochs


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C and the storage


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C until the block (storage calls) is done, then deliver it.

    An interrupt inside an SQLAlchemy call leaves the session broken, and Optuna then cannot even mark the trial
    failed; delivered between calls, it fails the trial cleanly and kit queues it again. Outside the main thread
    (where signals cannot be handled) the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, Any]] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending and callable(previous):
        previous(*pending[0])  # Python's default handler raises KeyboardInterrupt
    elif pending and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------------------------
# Fold-aware pruning


def pruning_step(position: int, epoch: int, stride: int) -> int:
    """The global step of epoch ``epoch`` (0-based) of the fold at ``position`` in the trained list."""
    return position * stride + epoch


def intermediate_value(finished_bests: list[float], current_best: float) -> float:
    """The running estimate of the mean fold score: finished folds at their best, the current one at its best so far."""
    return (sum(finished_bests) + current_best) / (len(finished_bests) + 1)


def fold_best(fold_dir: Path, metric: str, upto_epoch: int | None = None) -> float:
    """Best validation metric in ``fold_dir/history.csv`` (epochs are 1-based there), up to ``upto_epoch``."""
    path = fold_dir / "history.csv"
    if not path.is_file():
        raise KitError(f"{path} is missing: cannot compute the pruning value of {fold_dir.parent}")
    history = pd.read_csv(path)
    if upto_epoch is not None:
        history = history[history["epoch"] <= upto_epoch]
    return float(history[metric].max()) if len(history) else -math.inf


class FoldPruningCallback:
    """``on_epoch`` for train_folds: report the running CV estimate at a fold-aware step, prune when told to.

    Values are read back from the folds' history.csv files (written before the callback runs), so a trial that
    resumes a dead worker's folder reports the same values as one that ran through, and on its first call it fills
    in the steps its predecessor trained but died before reporting.
    """

    def __init__(self, trial: optuna.Trial, run_dir: Path, folds: list[int], stride: int, metric: str):
        self.trial, self.run_dir, self.folds, self.stride, self.metric = trial, run_dir, folds, stride, metric
        self._reported: set[int] | None = None

    def value(self, position: int, epoch: int) -> float:
        """The intermediate value after epoch ``epoch`` (0-based) of the fold at ``position``."""
        finished = [fold_best(self.run_dir / f"fold{k}", self.metric) for k in self.folds[:position]]
        return intermediate_value(finished, fold_best(self.run_dir / f"fold{self.folds[position]}", self.metric,
                                                      epoch + 1))

    def _backfill(self, position: int, epoch: int) -> None:
        trial = next(t for t in self.trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                     if t.number == self.trial.number)
        self._reported = set(trial.intermediate_values)  # a retry inherits what its predecessor reported
        for p in range(position + 1):
            path = self.run_dir / f"fold{self.folds[p]}" / "history.csv"
            trained = len(pd.read_csv(path)) if p < position else epoch
            for e in range(trained):
                if pruning_step(p, e, self.stride) not in self._reported:
                    self._report(p, e, self.value(p, e))

    def _report(self, position: int, epoch: int, value: float) -> int:
        step = pruning_step(position, epoch, self.stride)
        self.trial.report(value, step)
        self._reported.add(step)
        return step

    def __call__(self, fold: int, epoch: int, val_metric: float) -> None:
        position = self.folds.index(fold)
        with deferred_interrupt():
            if self._reported is None:
                self._backfill(position, epoch)
            value = self.value(position, epoch)  # val_metric is the last row of the fold's history.csv
            step = self._report(position, epoch, value)
            prune = self.trial.should_prune()
            if prune:
                self.trial.set_user_attr("pruned_at", {"fold": fold, "epoch": epoch + 1, "step": step,
                                                       "value": value})
        if prune:
            raise optuna.TrialPruned(f"fold {fold} epoch {epoch + 1} (step {step}): running CV estimate "
                                     f"{value:.4f} is below the pruner's threshold")


@dataclass(frozen=True)
class PrunerOptions:
    startup_trials: int = 5
    """median / percentile: no pruning until this many trials have completed."""
    warmup_steps: int = 0
    """median / percentile: no pruning before this step (steps count epochs across folds)."""
    percentile: float = 25.0
    """percentile: prune below this percentile of the completed trials at the same step."""
    max_resource: int | str = "auto"
    """halving / hyperband: the number of steps of a full trial (folds x stride)."""
    reduction_factor: int = 3


def _median(o: PrunerOptions) -> BasePruner:
    return MedianPruner(n_startup_trials=o.startup_trials, n_warmup_steps=o.warmup_steps)


def _percentile(o: PrunerOptions) -> BasePruner:
    return PercentilePruner(o.percentile, n_startup_trials=o.startup_trials, n_warmup_steps=o.warmup_steps)


def _halving(o: PrunerOptions) -> BasePruner:
    return SuccessiveHalvingPruner(min_resource=1, reduction_factor=o.reduction_factor)


def _hyperband(o: PrunerOptions) -> BasePruner:
    return HyperbandPruner(min_resource=1, max_resource=o.max_resource, reduction_factor=o.reduction_factor)


def _nop(o: PrunerOptions) -> BasePruner:
    return NopPruner()


PRUNERS: dict[str, Callable[[PrunerOptions], BasePruner]] = {
    "median": _median, "percentile": _percentile, "halving": _halving, "hyperband": _hyperband, "none": _nop}


def make_pruner(name: str, options: PrunerOptions | None = None) -> BasePruner:
    """A pruner by name (see PRUNERS)."""
    if name not in PRUNERS:
        raise ConfigError(f"unknown pruner '{name}'; known: {', '.join(PRUNERS)}")
    return PRUNERS[name](options or PrunerOptions())


# ---------------------------------------------------------------------------------------------------------------
# Sampling


def _trial_seed(seed: int, number: int) -> int:
    return (seed * 1_000_003 + number) % 2**31


class TrialSeededSampler(BaseSampler):
    """Delegate each trial to a fresh sampler seeded from (seed, trial number).

    One seeded sampler per process would draw the same first parameters in every worker and again after every
    restart. Trial numbers are unique in a study, so this gives distinct draws across workers and restarts, and the
    same draws for the same trial number and history (a search with and without pruning starts identically).
    """

    def __init__(self, factory: Callable[[int | None], BaseSampler], seed: int | None = None):
        self._factory, self._seed = factory, seed
        self._inner = factory(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._seed is not None:
            self._inner = self._factory(_trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: list[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


SAMPLERS: dict[str, Callable[[int | None], BaseSampler]] = {
    "tpe": lambda seed: TPESampler(seed=seed),
    "random": lambda seed: RandomSampler(seed=seed),
}


def make_sampler(name: str, seed: int | None = None) -> BaseSampler:
    """A sampler by name (see SAMPLERS), seeded per trial."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{name}'; known: {', '.join(SAMPLERS)}")
    return TrialSeededSampler(SAMPLERS[name], seed)


# ---------------------------------------------------------------------------------------------------------------
# Storage and study


def default_storage_url(out: str | Path, study: str) -> str:
    return f"sqlite:///{(Path(out) / f'{study}.db').resolve()}"


def redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _connect(url: str, **kwargs: Any) -> RDBStorage:
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(4):
        try:
            return RDBStorage(url, **kwargs)
        except (IntegrityError, ProgrammingError, OperationalError):
            # workers started together on a fresh database race to create its tables (PostgreSQL: duplicate key,
            # SQLite: table already exists); the loser finds them made. A server that is down fails after ~5 s.
            time.sleep(0.5 * (attempt + 1))
    return RDBStorage(url, **kwargs)


def open_storage(url: str, heartbeat: int | None = 60, grace: int | None = None, max_retry: int = 1) -> RDBStorage:
    """An RDB storage; with ``heartbeat`` (seconds), trials of dead workers are failed and retried ``max_retry`` times."""
    from sqlalchemy.exc import ArgumentError, OperationalError

    sqlite = url.startswith("sqlite")
    if sqlite and url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # SQLite: wait for a lock held by another worker; servers: drop connections that died between trials
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    retry = (RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
             if heartbeat else None)
    try:
        return _connect(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=grace,
                        heartbeat_stale_trial_callback=retry)
    except ImportError as e:  # optuna wraps the missing driver module in a plain ImportError
        cause = e.__cause__ or e
        raise ConfigError(f"storage {redact_url(url)}: its database driver is not installed ({cause}); for "
                          f"PostgreSQL install kit[tune] (psycopg 3) and use postgresql+psycopg://user@host/db") from e
    except (ArgumentError, OperationalError, ValueError) as e:
        raise ConfigError(f"cannot open storage {redact_url(url)}: {str(e).splitlines()[0]}") from e


@dataclass(frozen=True)
class TuneSetup:
    """Everything a trial needs besides its suggested values."""

    base: Config
    space: dict[str, BaseDistribution]
    data_dir: Path
    study_dir: Path
    folds: list[int]
    folds_file: Path | None = None
    keep_checkpoints: bool = False
    stride: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stride", epoch_stride(self.space, self.base))

    def signature(self) -> dict[str, Any]:
        """What must match for a study to be continued: base config, space, folds (JSON round-tripped)."""
        sig = {"config": self.base.to_dict(), "space": {k: distribution_to_json(d) for k, d in self.space.items()},
               "folds": self.folds, "stride": self.stride}
        return json.loads(json.dumps(sig))


def open_study(name: str, storage: RDBStorage, setup: TuneSetup, sampler: BaseSampler | None = None,
               pruner: BasePruner | None = None) -> optuna.Study:
    """Create the study or load it (several workers, a restart); refuse one made with another config or space."""
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    stored, mine = study.user_attrs.get("kit"), setup.signature()
    if stored is None:
        study.set_user_attr("kit", mine)
    elif stored != mine:
        differs = [k for k in mine if stored.get(k) != mine[k]]
        raise ConfigError(f"study '{name}' was created with another {', '.join(differs)}; continue it with the "
                          f"same --config/--set/--space/--folds, or start another --study")
    return study


def study_base_config(study: optuna.Study) -> Config:
    stored = study.user_attrs.get("kit")
    if stored is None:
        raise KitError(f"study '{study.study_name}' was not created by kit tune (no base config in its attributes)")
    return from_dict(stored["config"])


# ---------------------------------------------------------------------------------------------------------------
# The objective and the worker loop


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def counted(trial: FrozenTrial) -> bool:
    """A trial that counts toward --trials: it ran to an end its hyperparameters decided (a dead worker's does not)."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and FAIL_REASON in trial.user_attrs)


def _trial_dir(setup: TuneSetup, trial: optuna.Trial) -> Path:
    """trial-<n>/; a retry of a dead worker's trial takes over its folder so its folds resume from last.pt."""
    path = setup.study_dir / f"trial-{trial.number}"
    # a retry inherits the user attributes of the trial it repeats, its run_dir among them
    previous = trial.user_attrs.get("run_dir")
    if previous is not None and Path(previous) != path:
        trial.set_user_attr("resumed_from", previous)
        if Path(previous).is_dir() and not path.exists():
            Path(previous).rename(path)
    return path


def _epochs_trained(run_dir: Path) -> int:
    return sum(len(pd.read_csv(p)) for p in run_dir.glob("fold*/history.csv"))


def _finish(trial: optuna.Trial, run_dir: Path, setup: TuneSetup, attrs: dict[str, Any] | None = None) -> None:
    """Record the trial's epochs (and ``attrs``), then drop its checkpoints: it will not be resumed."""
    with deferred_interrupt():
        for key, value in {**(attrs or {}), "epochs": _epochs_trained(run_dir)}.items():
            trial.set_user_attr(key, value)
    if not setup.keep_checkpoints:  # a study of 100 trials x 5 folds would keep 1000 checkpoints otherwise
        for ckpt in run_dir.glob("fold*/*.pt"):
            ckpt.unlink()


def objective(trial: optuna.Trial, setup: TuneSetup) -> float:
    """Train the setup's folds with the suggested config; the pooled OOF CV score."""
    with deferred_interrupt():
        run_dir = _trial_dir(setup, trial)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", worker_id())
        params = _suggest(trial, setup.space)
    try:
        cfg = trial_config(setup.base, params)
        callback = FoldPruningCallback(trial, run_dir, setup.folds, setup.stride, _metric_name(cfg))
        result = train_folds(cfg, setup.data_dir, run_dir, setup.folds, setup.folds_file, on_epoch=callback)
    except optuna.TrialPruned:
        _finish(trial, run_dir, setup)
        raise
    except TRIAL_FAILURES as e:
        if isinstance(e, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        _finish(trial, run_dir, setup, {FAIL_REASON: f"{type(e).__name__}: {e}"})
        raise
    _finish(trial, run_dir, setup, {"mean_fold_score": result.mean_fold_score,
                                    "fold_scores": {str(k): v for k, v in result.fold_scores.items()}})
    return result.cv_score


def _suggest(trial: optuna.Trial, space: dict[str, BaseDistribution]) -> dict[str, Any]:
    params = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            params[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            params[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            params[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return params


def _metric_name(cfg: Config) -> str:
    from kit.competitions import get_competition

    return get_competition(cfg.competition).metric


def _budget(trials: list[FrozenTrial], n_trials: int) -> str:
    """'run' another trial, 'wait' for other workers' last trials (to retry one if its worker dies), or 'done'."""
    done = sum(counted(t) for t in trials)
    if done >= n_trials:
        return "done"
    waiting = any(t.state == TrialState.WAITING for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return "run" if waiting or done + running < n_trials else "wait"


def _requeue(study: optuna.Study, number: int, retry: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
    """Queue an interrupted trial again (as a dead worker's would be) so the next run resumes its folder."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if retry is not None and trial is not None and trial.state == TrialState.FAIL and not counted(trial):
        retry(study, trial)


def run_study(study: optuna.Study, setup: TuneSetup, n_trials: int, poll_s: float = 10.0,
              retry: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> list[int]:
    """Run trials until the study holds ``n_trials`` counted ones; the numbers of the trials this worker ran.

    ``retry`` (the storage's stale-trial callback) re-queues a trial interrupted with Ctrl-C, so that the next run
    resumes its folder instead of starting over.
    """
    ran: list[int] = []
    current: list[int] = []

    def tracked(trial: optuna.Trial) -> float:
        current[:] = [trial.number]
        return objective(trial, setup)

    announced = False
    while True:
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.RUNNING for t in trials):  # some may belong to dead workers: fail and requeue
            fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
        state = _budget(trials, n_trials)
        if state == "done":
            return ran
        if state == "wait":
            if not announced:
                print(f"kit tune: {n_trials} trials are finished or running elsewhere; waiting for them "
                      f"(a trial whose worker dies is retried here)", flush=True)
                announced = True
            time.sleep(poll_s)
            continue
        try:
            study.optimize(tracked, n_trials=1, catch=TRIAL_FAILURES, gc_after_trial=True)
        except KeyboardInterrupt:
            if current:
                _requeue(study, current[0], retry)
            raise
        ran.extend(current)
        current.clear()


# ---------------------------------------------------------------------------------------------------------------
# Results


def best_config(study: optuna.Study) -> Config:
    """The study's base config with its best trial's values."""
    try:
        best = study.best_trial
    except ValueError:
        raise KitError(f"study '{study.study_name}' has no completed trial yet") from None
    return trial_config(study_base_config(study), best.params)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_table(study: optuna.Study, top: int = 10) -> str:
    """The ``top`` completed trials by score, and a count of trials by state with the failure reasons."""
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True)
    keys = list(dict.fromkeys(k for t in complete for k in t.params))
    header = ["trial", "cv", "mean_fold", "epochs", *keys]
    rows = [[str(t.number), f"{t.value:.4f}", _fmt(t.user_attrs.get("mean_fold_score", "")),
             str(t.user_attrs.get("epochs", "")), *(_fmt(t.params.get(k, "")) for k in keys)] for t in complete[:top]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    states = pd.Series([t.state.name for t in trials]).value_counts().to_dict()
    lines.append(f"\n{len(trials)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in states.items()))
    epochs = sum(t.user_attrs.get("epochs", 0) for t in trials)
    lines.append(f"{epochs} epochs trained in all")
    for t in trials:
        if t.state == TrialState.FAIL:
            reason = t.user_attrs.get(FAIL_REASON, "its worker stopped (stale heartbeat or interrupted)")
            lines.append(f"  trial {t.number} failed: {reason}")
    return "\n".join(lines)


def _save_figure(ax: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = ax.figure
    fig.set_size_inches(8, 5)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def save_plots(study: optuna.Study, out_dir: Path) -> dict[str, Path | str]:
    """history.png, intermediate.png and importances.png; a plot that cannot be drawn gets a reason instead."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    from optuna.visualization import matplotlib as vis

    plots: dict[str, Path | str] = {}
    plots["history"] = _save_figure(vis.plot_optimization_history(study), out_dir / "history.png")
    plots["intermediate"] = _save_figure(vis.plot_intermediate_values(study), out_dir / "intermediate.png")
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_complete < 2:
        plots["importances"] = f"needs 2 completed trials, the study has {n_complete}"
    else:
        try:
            plots["importances"] = _save_figure(vis.plot_param_importances(study), out_dir / "importances.png")
        except (RuntimeError, ValueError) as e:  # e.g. every completed trial has the same values
            plots["importances"] = f"not computable: {e}"
    return plots


def write_best(study: optuna.Study, path: Path) -> Path:
    """The best config as a preset YAML that ``kit train --config`` accepts."""
    cfg = best_config(study)
    best = study.best_trial
    header = (f"# best trial {best.number} of study '{study.study_name}': cv {best.value:.4f}\n"
              f"# train it on all folds: kit train --competition {cfg.competition} --config {path} --data DIR --out DIR\n")
    return write_text_atomic(path, header + config_to_yaml(cfg))
