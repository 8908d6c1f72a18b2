"""``kit lr-find``: the learning-rate range test (Smith 2015; fastai's ``lr_find``, Lightning's ``Tuner.lr_find``).

One fold's training part is trained for ``steps`` steps while the learning rate rises geometrically from ``start``
to ``end``; the smoothed loss against the rate shows where training is fastest before it diverges. It trains the
run's own setup: the config's model and initial weights, augmentation, loss, optimizer (its per-group rates keep
their ratio: the backbone's ``backbone_lr_scale``) and freezing stage. Nothing is written but the plot: the model is
built fresh in memory, no run folder is made, no checkpoint is touched.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kit.config import Config
from kit.errors import ConfigError
from kit.io import save_figure
from kit.models import set_backbone_trainable
from kit.progress import Progress
from kit.rundir import RunDir
from kit.runtime import make_loader
from kit.train import FoldTrainer, epoch_seed, prepare_data, train_one_epoch

__all__ = ["LrFindResult", "centred_mean", "first_minimum", "fold_trainer", "lr_find", "plot_lr_find",
           "run_schedule", "smooth", "suggest_lr"]

log = logging.getLogger(__name__)

SMOOTHING = 0.98
"""The running average (bias-corrected, as fastai's) that decides, step by step, whether the loss diverged: slow
enough that one noisy batch does not stop the test."""
DIVERGED = 4.0
"""The test stops once the running average exceeds this many times its minimum."""
RISE = 0.25
"""How far the smoothed loss may climb back (a fraction of its fall so far) before its first minimum is taken."""
FLAT = 0.5
"""While the loss has barely fallen, a rise counts only against this fraction of its level: no turn in the noise."""
STAGES = ("auto", "frozen", "unfrozen")


def smooth(losses: np.ndarray, beta: float = SMOOTHING) -> np.ndarray:
    """Bias-corrected exponential moving average of ``losses``."""
    out, avg = np.empty(len(losses)), 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def centred_mean(losses: np.ndarray, window: int | None = None) -> np.ndarray:
    """The mean of a window of steps centred on each (edges repeated): the curve that is plotted and whose minimum
    is sought. Unlike the running average it does not lag: a lag of w steps would move the minimum w steps, a
    factor (end/start)**(w/steps) in rate, to the right."""
    window = window or max(3, len(losses) // 12) | 1
    if len(losses) < window:
        return np.asarray(losses, dtype=float)
    pad = window // 2
    padded = np.pad(np.asarray(losses, dtype=float), (pad, window - 1 - pad), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def first_minimum(smoothed: np.ndarray) -> int:
    """The step of the smoothed loss's lowest point before it first turns up: a rise of ``RISE`` of what it had
    fallen from its highest point (at least ``FLAT`` of that point) ends the search. On a small training part the
    loss can recover past the first instability (the model memorises its images at any rate); the later, lower
    minimum says nothing about the rate."""
    best, peak = 0, smoothed[0]
    for i, value in enumerate(smoothed):
        if not np.isfinite(value):
            break
        peak = max(peak, value)
        if value < smoothed[best]:
            best = i
        elif value > smoothed[best] + RISE * max(peak - smoothed[best], FLAT * peak):  # noise of a flat start: no turn
            break
    return best


def suggest_lr(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """A tenth of the rate at :func:`first_minimum`: where the loss still falls fast, a decade short of where it
    turns (fastai's ``minimum / 10``)."""
    if not np.isfinite(smoothed[0]):
        raise ConfigError("the learning-rate range test diverged at its first step: lower --start")
    return float(lrs[first_minimum(smoothed)] / 10)


class _Stop(Exception):
    """Raised from inside the epoch loop when the test has run its course (or diverged)."""


class _LossRecorder(nn.Module):
    """The trainer's loss, each step's value kept (one GPU sync per step: fine for a few hundred steps)."""

    def __init__(self, loss_fn: nn.Module):
        super().__init__()
        self.loss_fn, self.values = loss_fn, []

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(logits, target)
        self.values.append(float(loss.detach()))
        return loss


class _Schedule:
    """Sets the rate of each step (``train_one_epoch`` calls ``step_update`` after every optimizer step)."""

    def __init__(self, optimizer: torch.optim.Optimizer, lrs: np.ndarray, recorder: _LossRecorder,
                 stop_on_divergence: bool, bar: Progress):
        self.optimizer, self.lrs, self.recorder, self.bar = optimizer, lrs, recorder, bar
        self.stop_on_divergence = stop_on_divergence
        base = optimizer.param_groups[0]["lr"]
        self.ratios = [g["lr"] / base for g in optimizer.param_groups]  # the backbone's rate keeps its ratio
        self.best, self.stopped = np.inf, f"reached lr {lrs[-1]:.0e}"
        self.set(0)

    def set(self, i: int) -> None:
        for group, ratio in zip(self.optimizer.param_groups, self.ratios, strict=True):
            group["lr"] = float(self.lrs[i]) * ratio

    def step_update(self, _global_step: int) -> None:
        done = len(self.recorder.values)
        self.bar.update(1)
        now = smooth(np.asarray(self.recorder.values))[-1]
        self.best = min(self.best, now)
        if self.stop_on_divergence and (not np.isfinite(now) or now > DIVERGED * self.best):
            self.stopped = f"diverged at lr {self.lrs[done - 1]:.2e}"
            raise _Stop
        if done >= len(self.lrs):
            raise _Stop
        self.set(done)


def run_schedule(trainer: FoldTrainer, lrs: np.ndarray, stop_on_divergence: bool = True,
                 what: str = "lr-find") -> tuple[np.ndarray, str]:
    """Train ``trainer``'s fold one step per rate of ``lrs``; (each step's loss, why it stopped)."""
    t, rt = trainer.cfg.train, trainer.rt
    recorder = _LossRecorder(trainer.loss_fn)
    with Progress(len(lrs), what, unit="step") as bar:
        schedule = _Schedule(trainer.optimizer, lrs, recorder, stop_on_divergence, bar)
        for epoch in range(10**6):  # as many passes over the fold's training part as the steps take
            seed = epoch_seed(t.seed, trainer.k, epoch)
            trainer.train_tf.set_seed(seed)
            loader = make_loader(trainer.epoch_dataset(epoch), t.batch_size, trainer.workers, rt.device, True, seed,
                                 sample_weights=trainer.sample_weights)
            if trainer.batch_aug is not None:
                from kit.gpu_augment import on_device

                loader = on_device(loader, trainer.batch_aug, rt.device, seed)
            try:
                train_one_epoch(trainer.model, loader, trainer.optimizer, recorder, rt, schedule, None, t.grad_clip,
                                epoch)
            except _Stop:
                break
    return np.asarray(recorder.values[:len(lrs)]), schedule.stopped


@dataclass
class LrFindResult:
    lrs: np.ndarray
    """The rate of each step taken."""
    losses: np.ndarray
    smoothed: np.ndarray
    """:func:`centred_mean` of ``losses``."""
    suggestion: float
    stage: str
    """'frozen' (only the head trains: the first model.freeze_epochs epochs) or 'unfrozen'."""
    stopped: str
    model: str


def fold_trainer(cfg: Config, data_dir: str | Path, fold: int = 0, stage: str = "auto") -> tuple[FoldTrainer, str]:
    """A fresh trainer of ``fold`` (nothing written: its run folder is a temporary one) in the freezing ``stage``."""
    if stage not in STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, got '{stage}'")
    if not 0 <= fold < cfg.n_folds:
        raise ConfigError(f"--fold {fold} out of range for {cfg.n_folds} folds")
    with tempfile.TemporaryDirectory(prefix="kit-lr-find-") as scratch:
        run = RunDir(Path(scratch) / "run")
        trainer = FoldTrainer(cfg, prepare_data(cfg, Path(data_dir), run), fold, run)
    frozen = stage == "frozen" or (stage == "auto" and cfg.model.freeze_epochs > 0)
    if frozen or cfg.model.freeze_epochs > 0:
        set_backbone_trainable(trainer.model, not frozen, cfg.model.unfreeze_blocks)
    return trainer, "frozen" if frozen else "unfrozen"


def lr_find(cfg: Config, data_dir: str | Path, start: float = 1e-7, end: float = 10.0, steps: int = 100,
            fold: int = 0, stage: str = "auto") -> LrFindResult:
    """The range test on fold ``fold``'s training part with ``cfg``'s setup; nothing is written."""
    if not 0 < start < end:
        raise ConfigError(f"--start ({start}) must be positive and below --end ({end})")
    if steps < 10:
        raise ConfigError(f"--steps must be at least 10, got {steps}")
    trainer, stage = fold_trainer(cfg, data_dir, fold, stage)
    lrs = np.geomspace(start, end, steps)
    losses, stopped = run_schedule(trainer, lrs)
    lrs = lrs[:len(losses)]
    smoothed = centred_mean(losses)
    result = LrFindResult(lrs, losses, smoothed, suggest_lr(lrs, smoothed), stage, stopped, cfg.model.name)
    log.debug("lr-find: %d steps (%s); suggestion %.2e", len(losses), stopped, result.suggestion)
    return result


def plot_lr_find(result: LrFindResult, path: str | Path) -> Path:
    """Loss against learning rate (log scale): each step faint, the smoothed loss, the suggestion marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.25, lw=1, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", lw=2, label="smoothed (centred mean)")
    at = np.argmin(np.abs(np.log(result.lrs) - np.log(result.suggestion)))
    ax.axvline(result.suggestion, color="tab:red", ls="--", lw=1)
    ax.scatter([result.suggestion], [result.smoothed[at]], color="tab:red", zorder=3,
               label=f"suggestion {result.suggestion:.1e}")
    curve = result.smoothed[:first_minimum(result.smoothed) + 1]  # the part that matters: the fall
    raw = result.losses[np.isfinite(result.losses)]
    low, high = min(curve.min(), raw.min() if len(raw) else curve.min()), max(curve.max(), result.smoothed[0])
    ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.15 * (high - low + 1e-9))
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)",
           title=f"lr-find: {result.model}, backbone {result.stage}; {result.stopped}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=100, bbox_inches="tight")
