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
from kit.epoch_handlers import EpochEnd, EpochHandler
from kit.oof import prediction_frame
from kit.runtime import make_loader
from kit.transforms import build_eval_transform

__all__ = ["SWAHandler", "TopKHandler", "averaging_handlers"]

log = logging.getLogger(__name__)


def _epochs_text(epochs: list[int]) -> str:
    consecutive = epochs == list(range(epochs[0], epochs[-1] + 1))
    return f"{epochs[0]}-{epochs[-1]}" if consecutive and len(epochs) > 2 else ",".join(map(str, epochs))


def replace_best(trainer, model: nn.Module, weights: str, epoch: int) -> float:
    """Measure ``model``'s BatchNorm statistics on the fold's training rows, validate it, and make it the fold's
    best.pt and OOF predictions; its validation metric."""
    from kit.train import validate  # the trainer's own validation: the averaged model is scored as every epoch is

    t, d, dist = trainer.cfg.train, trainer.data, trainer.dist
    rows = trainer.epoch_dataset(t.epochs - 1)  # the rows the last epoch trained on (all, or its subsample)
    bn_rows = rows.subset(dist.shard(rows.rows)).with_transform(build_eval_transform(d.input_size, d.native_size))
    recompute_batchnorm(model, make_loader(bn_rows, t.batch_size, trainer.workers, trainer.rt.device, train=False),
                        trainer.rt)
    dist.sync_buffers(model)  # rank 0's statistics: every rank validates one model
    val_targets = trainer.targets[trainer.val_idx]
    metric, probs = validate(model, trainer.val_loader, trainer.rt, val_targets, trainer.metric, None,
                             lambda part: dist.gather_rows(part, len(trainer.val_idx)), d.space.scored_index)
    p = trainer.progress
    log.info("fold %d: best.pt holds the %s (%s %.4f; the best single epoch, %d, had %.4f)", trainer.k, weights,
             d.spec.metric, metric, p.best_epoch, p.best_metric)
    trainer.weights = weights
    if dist.is_main:
        trainer.save_best(epoch, metric, model)
        ids = d.table["id"].to_numpy()[trainer.val_idx]
        trainer.run.write_csv(trainer.run.fold_oof_path(trainer.k),
                              prediction_frame(d.spec, ids, probs, fold=trainer.k, target=val_targets))
    return metric


class SWAHandler(EpochHandler):
    """Averages the validated weights (the EMA's with train.ema) at the end of each of the last ``epochs`` epochs
    (torch.optim.swa_utils.AveragedModel), under the run's own learning-rate schedule."""

    name = "swa"

    def __init__(self, trainer, epochs: int):
        self.first = trainer.cfg.train.epochs - epochs + 1  # 1-based: the first epoch averaged
        self.average = EpochAverage(trainer.ema.module if trainer.ema is not None else trainer.model)

    def on_epoch_end(self, trainer, end: EpochEnd) -> None:
        if end.epoch >= self.first:
            self.average.add(end.eval_model, end.epoch)

    def on_fit_end(self, trainer) -> None:
        epochs = self.average.epochs
        if epochs:
            replace_best(trainer, self.average.model(), f"SWA of epochs {_epochs_text(epochs)}", epochs[-1])

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)


class TopKHandler(EpochHandler):
    """Keeps the validated weights of the ``k`` best epochs (on the CPU) and averages them at the fold's end."""

    name = "top_k"

    def __init__(self, trainer, k: int):
        self.top = TopK(k)

    def on_epoch_end(self, trainer, end: EpochEnd) -> None:
        self.top.offer(end.eval_model, end.epoch, end.val_metric, end.val_loss)

    def on_fit_end(self, trainer) -> None:
        epochs = self.top.epochs
        if len(epochs) > 1:  # a fold stopped after one epoch has nothing to average
            template = trainer.ema.module if trainer.ema is not None else trainer.model
            replace_best(trainer, self.top.average(template), f"top-{len(epochs)} average of epochs "
                         f"{_epochs_text(epochs)}", max(epochs))

    def state_dict(self) -> dict:
        return self.top.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.top.load_state_dict(state)


def averaging_handlers(cfg, trainer) -> list[EpochHandler]:
    """The averaging the config asks for (train.swa_epochs or train.top_k; the config allows one)."""
    t = cfg.train
    if t.swa_epochs:
        return [SWAHandler(trainer, t.swa_epochs)]
    if t.top_k:
        return [TopKHandler(trainer, t.top_k)]
    return []
