"""What happens at the end of a fold's epoch, one concern per handler.

The fold loop (:class:`kit.train.FoldTrainer`) trains an epoch, validates it, steps the scheduler, then hands an
:class:`EpochEnd` to each handler in turn: the best checkpoint and its OOF rows, the history and its log line, the
last checkpoint, the caller's callback (Optuna pruning, a time budget), early stopping. A new per-epoch concern
(weight averaging in kit/averaging.py, the trackers in kit/trackers.py) is a new handler, listed in
:func:`kit.train.build_handlers`; the loop does not change.

Order matters and is the list's order: a handler that adds a column to the history row runs before
:class:`History` writes it, and :class:`LastCheckpoint` runs after every handler whose state it saves. A handler
with state (``state_dict``) has it saved in ``last.pt`` and restored on resume, so a killed fold resumes exactly.
A handler stops the fold after this epoch by setting ``trainer.stop`` to the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import pandas as pd
from torch import nn

from kit.checkpoint import Checkpoint, TrainingState, save_checkpoint
from kit.config import Config
from kit.rundir import RunDir
from kit.runtime import Runtime

__all__ = ["BestCheckpoint", "EarlyStopping", "EpochCallback", "EpochCallbackHandler", "EpochEnd", "EpochHandler",
           "FoldLoop", "History", "LastCheckpoint"]

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, int, float], None]
"""on_epoch(fold, epoch, val_metric): called after each epoch's checkpoint; may raise (e.g. optuna.TrialPruned)."""


@dataclass
class EpochEnd:
    """One validated epoch, as the handlers see it."""

    epoch: int
    """1-based: 3 means the third epoch has just been trained."""
    train_loss: float
    images_per_s: float
    train_images: int
    val_metric: float
    val_loss: float
    val_probs: np.ndarray
    """The fold's validation predictions, rows in the order of ``trainer.val_idx`` (complete on rank 0)."""
    lr: float
    improved: bool
    """Best epoch of the fold so far (ties on the metric go to the lower validation loss)."""
    eval_model: nn.Module
    """The model that was validated: the EMA copy with ``train.ema``, else the trained model."""
    row: dict[str, Any] = field(default_factory=dict)
    """The epoch's ``history.csv`` row; handlers before :class:`History` may add columns."""


class FoldLoop(Protocol):
    """What a handler may use of the trainer (:class:`kit.train.FoldTrainer`)."""

    cfg: Config
    k: int
    run: RunDir
    stop: str | None
    model: nn.Module

    @property
    def is_main(self) -> bool: ...

    def checkpoint(self, epoch: int, metric: float, model: nn.Module,
                   training: TrainingState | None = None) -> Checkpoint: ...

    def training_state(self) -> TrainingState: ...

    def save_best(self, epoch: int, metric: float, model: nn.Module, val_probs: np.ndarray) -> None: ...

    def history(self) -> list[dict]: ...

    def stale_epochs(self) -> int: ...

    # what weight averaging (SWAHandler, TopKHandler) uses besides
    rt: Runtime
    weights: str | None
    """What best.pt holds when it is not the best epoch's weights (an average); None: the best epoch's."""
    weights_metric: float | None
    """The validation metric of ``weights`` (result.json's ``best_metric`` then)."""

    def eval_model(self) -> nn.Module: ...

    def best_epoch(self) -> tuple[int, float]: ...

    def statistics_loader(self) -> Iterable[dict]: ...

    def validate_model(self, model: nn.Module, title: str) -> tuple[float, np.ndarray]: ...


class EpochHandler:
    """A per-epoch concern of the fold loop. Every hook is optional."""

    name = "handler"
    """The key of this handler's state in ``last.pt``."""

    def on_fit_start(self, trainer: FoldLoop, start_epoch: int) -> None:
        """Before the first epoch of this process (``start_epoch`` > 0 on resume)."""

    def on_epoch_end(self, trainer: FoldLoop, end: EpochEnd) -> None:
        """After the epoch's validation and scheduler step."""

    def on_fit_end(self, trainer: FoldLoop) -> None:
        """After the fold's last epoch (or its early stop), before its result is written."""

    def state_dict(self) -> dict:
        """What resuming needs (tensors, numbers, strings, lists, dicts: ``last.pt`` loads with weights_only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` from ``last.pt``."""


class BestCheckpoint(EpochHandler):
    """``best.pt`` and the fold's OOF rows, on each improvement."""

    name = "best"

    def on_epoch_end(self, trainer: FoldLoop, end: EpochEnd) -> None:
        if end.improved:
            trainer.save_best(end.epoch, end.val_metric, end.eval_model, end.val_probs)


class History(EpochHandler):
    """The epoch's row in ``history.csv`` and its line in the log."""

    name = "history"

    def __init__(self, metric: str, epochs: int, eta: Callable[[], str | None]):
        self.metric, self.epochs, self.eta = metric, epochs, eta

    def on_epoch_end(self, trainer: FoldLoop, end: EpochEnd) -> None:
        trainer.history().append(end.row)
        eta = self.eta()
        log.info(f"fold {trainer.k} epoch {end.epoch}/{self.epochs}: loss {end.train_loss:.4f}  val_loss "
                 f"{end.val_loss:.4f}  {self.metric} {end.val_metric:.4f}  lr {end.lr:.2e}  "
                 f"{end.images_per_s:.0f} img/s" + (f"  (run ETA {eta})" if eta else ""))
        if trainer.is_main:  # rank 0 alone writes
            trainer.run.write_csv(trainer.run.history_path(trainer.k), pd.DataFrame(trainer.history()))


class LastCheckpoint(EpochHandler):
    """``last.pt``: the model and everything a resume needs, the handlers' states included."""

    name = "last"

    def on_epoch_end(self, trainer: FoldLoop, end: EpochEnd) -> None:
        if trainer.is_main:
            save_checkpoint(trainer.run.last_path(trainer.k),
                            trainer.checkpoint(end.epoch, end.val_metric, trainer.model, trainer.training_state()))


class EpochCallbackHandler(EpochHandler):
    """The caller's ``on_epoch(fold, epoch, metric)`` (Optuna pruning, a time budget), after ``last.pt``: whatever
    it raises, the epoch is saved."""

    name = "callback"

    def __init__(self, callback: EpochCallback):
        self.callback = callback

    def on_epoch_end(self, trainer: FoldLoop, end: EpochEnd) -> None:
        self.callback(trainer.k, end.epoch - 1, end.val_metric)


class EarlyStopping(EpochHandler):
    """Stop a fold after ``patience`` epochs without improvement."""

    name = "early_stopping"

    def __init__(self, patience: int):
        self.patience = patience

    def on_fit_start(self, trainer: FoldLoop, start_epoch: int) -> None:
        if trainer.stale_epochs() >= self.patience:  # resumed after the epoch that stopped it (before result.json)
            trainer.stop = "stopped early before it was interrupted"

    def on_epoch_end(self, trainer: FoldLoop, end: EpochEnd) -> None:
        if trainer.stale_epochs() >= self.patience:
            trainer.stop = f"early stop after epoch {end.epoch} ({self.patience} epochs without improvement)"
