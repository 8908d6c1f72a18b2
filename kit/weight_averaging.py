"""Weight averaging as epoch-end handlers: ``train.swa_epochs`` (SWA over the last epochs) and ``train.top_k`` (the
k best epochs by validation score). At the fold's end the average, its BatchNorm statistics measured again on the
fold's training rows, replaces ``best.pt`` and the fold's OOF predictions: a normal fold checkpoint that kit
predict, the bundle and the kernels take unchanged. ``result.json`` (``weights``) and the log say which weights the
fold kept.
"""

from __future__ import annotations

import logging

from torch import nn

from kit.averaging import EpochAverage, TopK, recompute_batchnorm
from kit.config import Config
from kit.epoch_handlers import EpochEnd, EpochHandler, FoldLoop

__all__ = ["SWAHandler", "TopKHandler", "averaging_handler"]

log = logging.getLogger(__name__)


def _epochs_text(epochs: list[int]) -> str:
    consecutive = epochs == list(range(epochs[0], epochs[-1] + 1))
    return f"{epochs[0]}-{epochs[-1]}" if consecutive and len(epochs) > 2 else ",".join(map(str, epochs))


def replace_best(trainer: FoldLoop, model: nn.Module, weights: str, epoch: int, metric_name: str) -> float:
    """Measure ``model``'s BatchNorm statistics on the fold's training rows, validate it, and make it the fold's
    best.pt and OOF predictions; its validation metric."""
    recompute_batchnorm(model, trainer.statistics_loader(), trainer.rt)
    metric, probs = trainer.validate_model(model, f"fold {trainer.k} {weights} validation")
    best_epoch, best_metric = trainer.best_epoch()
    log.info(f"fold {trainer.k}: best.pt holds the {weights}: {metric_name} {metric:.4f} (the best single epoch, "
             f"{best_epoch}, had {best_metric:.4f})")
    trainer.weights = weights
    trainer.save_best(epoch, metric, model, probs)
    return metric


class SWAHandler(EpochHandler):
    """Averages the validated weights (the EMA's with train.ema) at the end of each epoch from ``first`` (1-based)
    on (torch.optim.swa_utils.AveragedModel), under the run's own learning-rate schedule."""

    name = "swa"

    def __init__(self, first: int, metric_name: str):
        self.first, self.metric_name = first, metric_name
        self.average: EpochAverage | None = None
        self.restored: dict | None = None

    def on_fit_start(self, trainer: FoldLoop, start_epoch: int) -> None:
        # built here, where the model is known; a resume restored the state before
        self.average = EpochAverage(trainer.eval_model())
        if self.restored is not None:
            self.average.load_state_dict(self.restored)

    def on_epoch_end(self, trainer: FoldLoop, end: EpochEnd) -> None:
        if end.epoch >= self.first:
            self.average.add(end.eval_model, end.epoch)

    def on_fit_end(self, trainer: FoldLoop) -> None:
        epochs = self.average.epochs
        if epochs:
            replace_best(trainer, self.average.model(), f"SWA of epochs {_epochs_text(epochs)}", epochs[-1],
                         self.metric_name)

    def state_dict(self) -> dict:
        return self.average.state_dict() if self.average is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.restored = state or None


class TopKHandler(EpochHandler):
    """Keeps the validated weights of the ``k`` best epochs (on the CPU) and averages them at the fold's end."""

    name = "top_k"

    def __init__(self, k: int, metric_name: str):
        self.top, self.metric_name = TopK(k), metric_name

    def on_epoch_end(self, trainer: FoldLoop, end: EpochEnd) -> None:
        self.top.offer(end.eval_model, end.epoch, end.val_metric, end.val_loss)

    def on_fit_end(self, trainer: FoldLoop) -> None:
        epochs = self.top.epochs
        if len(epochs) > 1:  # a fold stopped after one epoch has nothing to average
            replace_best(trainer, self.top.average(trainer.eval_model()),
                         f"top-{len(epochs)} average of epochs {_epochs_text(epochs)}", max(epochs), self.metric_name)

    def state_dict(self) -> dict:
        return self.top.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.top.load_state_dict(state)


def averaging_handler(cfg: Config, metric_name: str) -> EpochHandler:
    """The averaging the config asks for: train.swa_epochs or train.top_k (the config allows one)."""
    t = cfg.train
    if t.swa_epochs:
        return SWAHandler(t.epochs - t.swa_epochs + 1, metric_name)
    return TopKHandler(t.top_k, metric_name)
