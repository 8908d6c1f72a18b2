"""Weight averaging of a fold (torch.optim.swa_utils): SWA over the last epochs and the average of the top-k epochs
by validation score, BatchNorm statistics recomputed on the training rows afterwards.

An average of weights is not an average of BatchNorm statistics: the running means and variances of the averaged
weights are those of none of the averaged epochs, so they are measured again with one pass over the training fold
(``swa_utils.update_bn``), as the SWA paper does. Both averages keep only tensors and numbers in their state, so it
travels in ``last.pt`` (read with weights_only) and a resumed fold averages exactly what an uninterrupted one does.
"""

from __future__ import annotations

import copy
import logging
from typing import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from kit.config import Config
from kit.epoch_handlers import EpochEnd, EpochHandler, FoldLoop
from kit.runtime import Runtime

__all__ = ["EpochAverage", "SWAHandler", "TopK", "TopKHandler", "averaging_handler", "recompute_batchnorm"]

log = logging.getLogger(__name__)


class EpochAverage:
    """The equal-weight average of the weights it was given (SWA: the end of each epoch of its window)."""

    def __init__(self, model: nn.Module):
        # AveragedModel copies the model once; parameters are averaged, buffers (BatchNorm's) are measured afterwards
        self.averaged = AveragedModel(model)
        self.epochs: list[int] = []

    def add(self, model: nn.Module, epoch: int) -> None:
        self.averaged.update_parameters(model)
        self.epochs.append(epoch)

    def model(self) -> nn.Module:
        """The averaged model (the running average itself: later ``add`` calls change it)."""
        return self.averaged.module

    def state_dict(self) -> dict:
        return {"epochs": list(self.epochs), "averaged": self.averaged.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = list(state["epochs"])
        self.averaged.load_state_dict(state["averaged"])


class TopK:
    """The weights of the ``k`` best epochs by validation metric (a tie goes to the lower validation loss), kept on
    the CPU, and their equal-weight average."""

    def __init__(self, k: int):
        self.k = k
        self.kept: list[dict] = []  # {"epoch", "metric", "loss", "state"}, best first

    def offer(self, model: nn.Module, epoch: int, metric: float, loss: float) -> bool:
        """Keep this epoch's weights if they rank among the k best; whether they did."""
        entry = {"epoch": epoch, "metric": float(metric), "loss": float(loss),
                 "state": {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}}
        self.kept = sorted([*self.kept, entry], key=lambda e: (-e["metric"], e["loss"], e["epoch"]))
        self.kept = self.kept[:self.k]
        return any(e is entry for e in self.kept)

    @property
    def epochs(self) -> list[int]:
        return sorted(e["epoch"] for e in self.kept)

    def average(self, template: nn.Module) -> nn.Module:
        """A copy of ``template`` holding the average of the kept weights (torch's SWA average, one epoch at a
        time)."""
        work = copy.deepcopy(template)
        averaged = AveragedModel(work)
        for entry in sorted(self.kept, key=lambda e: e["epoch"]):
            work.load_state_dict(entry["state"])
            averaged.update_parameters(work)
        return averaged.module

    def state_dict(self) -> dict:
        return {"k": self.k, "kept": [dict(e) for e in self.kept]}

    def load_state_dict(self, state: dict) -> None:
        self.k, self.kept = int(state["k"]), [dict(e) for e in state["kept"]]


class _RuntimeInputs(nn.Module):
    """Feeds a loader's batches (dicts) to ``model`` as training does: normalised, with the metadata rows."""

    def __init__(self, model: nn.Module, rt: Runtime):
        super().__init__()
        self.model, self.rt = model, rt

    def forward(self, batch: dict) -> torch.Tensor:
        x, meta = self.rt.inputs(batch)
        return self.rt.forward(self.model, x, meta)


def recompute_batchnorm(model: nn.Module, loader: Iterable[dict], rt: Runtime) -> bool:
    """Measure the BatchNorm statistics of ``model`` again over ``loader`` (``swa_utils.update_bn``); False when the
    model has no BatchNorm."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    was_training = model.training
    update_bn(loader, _RuntimeInputs(model, rt))
    model.train(was_training)
    return True


# ---------------------------------------------------------------------------------------------- weight averaging
# train.swa_epochs (SWA over the last epochs) and train.top_k (the k best epochs by validation score): at the fold's
# end the average, its BatchNorm statistics measured again on the fold's training rows, replaces best.pt and the
# fold's OOF predictions: a normal fold checkpoint that kit predict, the bundle and the kernels take unchanged.
# result.json (``weights``) and the log say which weights the fold kept. The math is above.


def _epochs_text(epochs: list[int]) -> str:
    consecutive = epochs == list(range(epochs[0], epochs[-1] + 1))
    return f"{epochs[0]}-{epochs[-1]}" if consecutive and len(epochs) > 2 else ",".join(map(str, epochs))


def _replace_best(trainer: FoldLoop, model: nn.Module, weights: str, epoch: int, metric_name: str) -> float:
    """Measure ``model``'s BatchNorm statistics on the fold's training rows, validate it, and make it the fold's
    best.pt and OOF predictions; its validation metric."""
    recompute_batchnorm(model, trainer.statistics_loader(), trainer.rt)
    metric, probs = trainer.validate_model(model, f"fold {trainer.k} {weights} validation")
    best_epoch, best_metric = trainer.best_epoch()
    log.info(f"fold {trainer.k}: best.pt holds the {weights}: {metric_name} {metric:.4f} (the best single epoch, "
             f"{best_epoch}, had {best_metric:.4f})")
    trainer.weights, trainer.weights_metric = weights, metric
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
            _replace_best(trainer, self.average.model(), f"SWA of epochs {_epochs_text(epochs)}", epochs[-1],
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
            _replace_best(trainer, self.top.average(trainer.eval_model()),
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
