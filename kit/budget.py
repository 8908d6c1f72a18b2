"""A time budget for training: stop at an epoch boundary when the next epoch would not fit.

Kaggle ends a session at its time limit (12 hours) with SIGTERM, which ``kit train`` survives (the last checkpoint
is intact) but which loses the epoch in progress and leaves no time to save the output. :class:`TimeBudget` is an
``on_epoch`` callback of :func:`kit.train.train_folds`: after each epoch's checkpoint it compares the time left with
the longest epoch measured so far and, when the next one would overrun, raises :class:`TimeBudgetReached`; every
finished epoch is in ``last.pt`` and ``kit train --resume`` continues from there.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from kit.errors import ConfigError, KitError

__all__ = ["EXIT_BUDGET", "TimeBudget", "TimeBudgetReached"]

EXIT_BUDGET = 75  # EX_TEMPFAIL: "try again later"; a script tells a planned stop from a failure (1) or SIGTERM (143)


class TimeBudgetReached(KitError):
    """Training stopped cleanly at an epoch boundary because the next epoch would not fit in the budget."""


class TimeBudget:
    """``on_epoch(fold, epoch, metric)``: raise :class:`TimeBudgetReached` when the next epoch would overrun.

    The estimate of the next epoch is the longest gap between two epoch ends of this process (it includes
    validation, checkpointing and a new fold's setup); the first gap, which also holds the data preparation, is used
    only until there is another. At least one epoch runs per call, so a run always makes progress.
    """

    def __init__(self, seconds: float, epochs: int, folds: Sequence[int], start: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not seconds > 0:
            raise ConfigError(f"--time-budget must be a positive number of seconds, got {seconds}")
        self.seconds, self.epochs, self.last_fold, self.clock = float(seconds), epochs, max(folds), clock
        self.start = clock() if start is None else start
        self._previous, self.gaps = self.start, []

    def next_epoch_estimate(self) -> float:
        return max(self.gaps[1:] or self.gaps or [0.0])

    def __call__(self, fold: int, epoch: int, metric: float) -> None:
        now = self.clock()
        self.gaps.append(now - self._previous)
        self._previous = now
        if fold == self.last_fold and epoch + 1 >= self.epochs:
            return  # the run's last epoch: nothing follows but writing the scores
        elapsed, estimate = now - self.start, self.next_epoch_estimate()
        if elapsed + estimate > self.seconds:
            raise TimeBudgetReached(
                f"stopped by the time budget after fold {fold} epoch {epoch + 1}: {elapsed:.0f} s of "
                f"{self.seconds:.0f} s used and the next epoch takes about {estimate:.0f} s; every finished epoch is "
                "saved")
