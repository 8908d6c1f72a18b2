"""Samplers by name (``SAMPLERS``), each seeded per trial so that workers and restarts do not repeat draws."""

from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from kit.registry import Registry

__all__ = ["SAMPLERS", "TrialSeededSampler", "make_sampler"]


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


SAMPLERS: Registry[Callable[[int | None], BaseSampler]] = Registry("sampler")
"""Sampler factories by name: ``fn(seed) -> BaseSampler`` (``seed`` may be None: unseeded)."""


@SAMPLERS.register("tpe")
def _tpe(seed: int | None) -> BaseSampler:
    return TPESampler(seed=seed)


@SAMPLERS.register("random")
def _random(seed: int | None) -> BaseSampler:
    return RandomSampler(seed=seed)


def make_sampler(name: str, seed: int | None = None) -> BaseSampler:
    """A sampler by name (see SAMPLERS), seeded per trial; an unknown name raises ConfigError with the known ones."""
    return TrialSeededSampler(SAMPLERS.get(name), seed)
