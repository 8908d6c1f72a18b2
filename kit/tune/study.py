"""The study: its setup, the objective, and the worker loop that runs trials until the study holds enough.

A trial trains the chosen folds (``kit.train.train_folds``) with the suggested config into
``<out>/<study>/trial-<n>/`` and returns the pooled out-of-fold CV score (maximised).

Many workers (processes, machines) run ``run_study`` on one storage. A trial of a worker that died is failed once
its heartbeat is stale (kit.tune.storage) and queued again with the same values; the worker that takes the copy
adopts the dead trial's folder, and its folds resume from their ``last.pt``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from kit.config import Config, from_dict
from kit.errors import ConfigError, KitError
from kit.progress import Eta
from kit.rundir import RunDir
from kit.trackers import RunTracking
from kit.train import TrainingError, train_folds
from kit.tune.pruning import FoldPruningCallback
from kit.tune.space import epoch_stride, suggest, trial_config
from kit.tune.storage import deferred_interrupt

__all__ = ["FAIL_REASON", "TRIAL_FAILURES", "TuneSetup", "counted", "objective", "open_study", "run_study",
           "study_base_config", "worker_id"]

log = logging.getLogger(__name__)

TRIAL_FAILURES: tuple[type[BaseException], ...] = (TrainingError, ConfigError, torch.cuda.OutOfMemoryError,
                                                   MemoryError)
"""What a trial may fail with and the study survive: a diverged loss, an invalid combination of suggested values,
running out of (GPU) memory. Anything else (missing data, a bug) stops the worker."""

FAIL_REASON = "fail_reason"
"""The user attribute of a trial failed by its values; a trial failed without it (a dead worker's) does not count."""


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
        raise ConfigError(f"study '{name}' was created with another {_differences(stored, mine)}; continue it with "
                          f"the same --config/--set/--space/--folds, or start another --study")
    return study


def _differences(stored: dict[str, Any], mine: dict[str, Any]) -> str:
    """What differs between a study's signature and this worker's, naming the config keys and space entries
    (``config key train.lr: 0.01 in the study, 0.001 here``); the first three."""
    out = []
    for part in mine:
        old, new = stored.get(part), mine[part]
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            flat_old, flat_new = _flat(old), _flat(new)
            what = "config key" if part == "config" else f"{part} entry"
            out += [f"{what} {k}: {flat_old.get(k, '(absent)')} in the study, {flat_new.get(k, '(absent)')} here"
                    for k in sorted(set(flat_old) | set(flat_new)) if flat_old.get(k) != flat_new.get(k)]
        else:
            out.append(f"{part}: {old} in the study, {new} here")
    return "; ".join(out[:3]) + (f" (and {len(out) - 3} more)" if len(out) > 3 else "")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``section.key`` -> value (a search space's entries stay whole)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and prefix == "" and k in ("model", "aug", "train", "data"):
            out.update(_flat(v, f"{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def study_base_config(study: optuna.Study) -> Config:
    stored = study.user_attrs.get("kit")
    if stored is None:
        raise KitError(f"study '{study.study_name}' was not created by kit tune (no base config in its attributes)")
    return from_dict(stored["config"])


# ---------------------------------------------------------------------------------------------------------------
# The objective


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


def _epochs_trained(run: RunDir) -> int:
    return sum(len(run.history(k)) for k in run.fold_numbers() if run.history_path(k).is_file())


def _finish(trial: optuna.Trial, run_dir: Path, setup: TuneSetup, attrs: dict[str, Any] | None = None) -> None:
    """Record the trial's epochs (and ``attrs``), then drop its checkpoints: it will not be resumed."""
    run = RunDir(run_dir)
    with deferred_interrupt():
        for key, value in {**(attrs or {}), "epochs": _epochs_trained(run)}.items():
            trial.set_user_attr(key, value)
    if not setup.keep_checkpoints:  # a study of 100 trials x 5 folds would keep 1000 checkpoints otherwise
        for ckpt in run.checkpoints():
            ckpt.unlink()


def _metric_name(cfg: Config) -> str:
    from kit.competitions import get_competition

    return get_competition(cfg.competition).metric


def objective(trial: optuna.Trial, setup: TuneSetup) -> float:
    """Train the setup's folds with the suggested config; the pooled OOF CV score."""
    with deferred_interrupt():
        run_dir = _trial_dir(setup, trial)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", worker_id())
        params = suggest(trial, setup.space)
    try:
        cfg = trial_config(setup.base, params)
        callback = FoldPruningCallback(trial, run_dir, setup.folds, setup.stride, _metric_name(cfg))
        # train.loggers: the trial's MLflow run nests in the study's; a pruned trial ends as KILLED, not FAILED
        with RunTracking(cfg, run_dir, study=(setup.study_dir, setup.study_dir.name),
                         stopped=(optuna.TrialPruned,)) as tracking:
            result = train_folds(cfg, setup.data_dir, run_dir, setup.folds, setup.folds_file, on_epoch=callback)
            tracking.finish({"cv": result.cv_score, "mean_fold_score": result.mean_fold_score})
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


# ---------------------------------------------------------------------------------------------------------------
# The worker loop


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


def _trial_line(study: optuna.Study, number: int, progress: Eta, n_trials: int) -> str:
    """After a trial: its end, the study's count of counted trials and the ETA at this worker's pace."""
    trials = study.get_trials(deepcopy=False)
    trial = next(t for t in trials if t.number == number)
    progress.update(1)
    progress.done = sum(counted(t) for t in trials)  # other workers' trials count too
    value = f" {trial.value:.4f}" if trial.value is not None else ""
    best = max((t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None), default=None)
    best_text = f", best {best:.4f}" if best is not None else ""
    return (f"kit tune: trial {number} {trial.state.name.lower()}{value}; {progress.done:.0f}/{n_trials} trials "
            f"({100 * progress.fraction:.0f}%){best_text}, ETA {progress.eta()}")


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
    progress = Eta(n_trials, done=sum(counted(t) for t in study.get_trials(deepcopy=False)))
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
                log.info(f"kit tune: {n_trials} trials are finished or running elsewhere; waiting for them "
                         f"(a trial whose worker dies is retried here)")
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
        for number in current:
            log.info(_trial_line(study, number, progress, n_trials))
        current.clear()
