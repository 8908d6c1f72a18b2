"""Fold-aware pruning: one sequence of intermediate values per trial, across folds trained one after another.

The intermediate value of a trial at fold position ``p`` (the index of the fold in the trained list) and epoch ``e``
is reported at step ``p * stride + e``, where ``stride`` is the largest number of epochs a trial of this study can
train per fold; the value is the mean over the folds already finished of their best metric and the current fold's
best metric so far. Every trial trains the same folds in the same order, so two values at one step always describe
the same folds after the same number of epochs, and the value at the last step is the mean of the fold scores the
objective is built from.

Pruners are registered by name in ``PRUNERS``: each entry builds an optuna pruner from ``PrunerOptions``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
)
from optuna.trial import TrialState

from kit.errors import KitError
from kit.registry import Registry
from kit.rundir import RunDir
from kit.tune.storage import deferred_interrupt

__all__ = ["PRUNERS", "FoldPruningCallback", "PrunerOptions", "fold_best", "intermediate_value", "make_pruner",
           "pruning_step"]


def pruning_step(position: int, epoch: int, stride: int) -> int:
    """The global step of epoch ``epoch`` (0-based) of the fold at ``position`` in the trained list."""
    return position * stride + epoch


def intermediate_value(finished_bests: list[float], current_best: float) -> float:
    """The running estimate of the mean fold score: finished folds at their best, the current one at its best so far."""
    return (sum(finished_bests) + current_best) / (len(finished_bests) + 1)


def fold_best(run: RunDir, fold: int, metric: str, upto_epoch: int | None = None) -> float:
    """Best validation metric in fold ``fold``'s history.csv (epochs are 1-based there), up to ``upto_epoch``."""
    path = run.history_path(fold)
    if not path.is_file():
        raise KitError(f"{path} is missing: cannot compute the pruning value of {run.path}")
    history = run.history(fold)
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
        self.run = RunDir(run_dir)
        self._reported: set[int] | None = None

    def value(self, position: int, epoch: int) -> float:
        """The intermediate value after epoch ``epoch`` (0-based) of the fold at ``position``."""
        finished = [fold_best(self.run, k, self.metric) for k in self.folds[:position]]
        return intermediate_value(finished, fold_best(self.run, self.folds[position], self.metric, epoch + 1))

    def _backfill(self, position: int, epoch: int) -> None:
        trial = next(t for t in self.trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                     if t.number == self.trial.number)
        self._reported = set(trial.intermediate_values)  # a retry inherits what its predecessor reported
        for p in range(position + 1):
            trained = len(self.run.history(self.folds[p])) if p < position else epoch
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


PRUNERS: Registry[Callable[[PrunerOptions], BasePruner]] = Registry("pruner")
"""Pruner factories by name: ``fn(PrunerOptions) -> BasePruner``."""


@PRUNERS.register("median")
def _median(o: PrunerOptions) -> BasePruner:
    return MedianPruner(n_startup_trials=o.startup_trials, n_warmup_steps=o.warmup_steps)


@PRUNERS.register("percentile")
def _percentile(o: PrunerOptions) -> BasePruner:
    return PercentilePruner(o.percentile, n_startup_trials=o.startup_trials, n_warmup_steps=o.warmup_steps)


@PRUNERS.register("halving")
def _halving(o: PrunerOptions) -> BasePruner:
    return SuccessiveHalvingPruner(min_resource=1, reduction_factor=o.reduction_factor)


@PRUNERS.register("hyperband")
def _hyperband(o: PrunerOptions) -> BasePruner:
    return HyperbandPruner(min_resource=1, max_resource=o.max_resource, reduction_factor=o.reduction_factor)


@PRUNERS.register("none")
def _nop(o: PrunerOptions) -> BasePruner:
    return NopPruner()


def make_pruner(name: str, options: PrunerOptions | None = None) -> BasePruner:
    """A pruner by name (see PRUNERS); an unknown name raises ConfigError with the closest and the known names."""
    return PRUNERS.get(name)(options or PrunerOptions())
