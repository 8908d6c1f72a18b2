"""Weight averaging of a fold (torch.optim.swa_utils): SWA over the last epochs and the average of the top-k epochs
by validation score, BatchNorm statistics recomputed on the training rows afterwards.

An average of weights is not an average of BatchNorm statistics: the running means and variances of the averaged
weights are those of none of the averaged epochs, so they are measured again with one pass over the training fold
(``swa_utils.update_bn``), as the SWA paper does. Both averages keep only tensors and numbers in their state, so it
travels in ``last.pt`` (read with weights_only) and a resumed fold averages exactly what an uninterrupted one does.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from kit.runtime import Runtime

__all__ = ["EpochAverage", "TopK", "recompute_batchnorm"]


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
