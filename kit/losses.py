"""Losses by name: BCE / CE (optionally class-weighted, label-smoothed) and focal loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kit.errors import ConfigError
from kit.registry import Registry

TASKS = ("binary", "multiclass")


def smooth_binary(target: torch.Tensor, eps: float) -> torch.Tensor:
    """Binary label smoothing, as CE's ``label_smoothing`` does for two classes: 1 -> 1 - eps/2, 0 -> eps/2."""
    return target * (1 - eps) + 0.5 * eps if eps else target


class SmoothedBCE(nn.BCEWithLogitsLoss):
    """BCE on logits with label-smoothed targets (``label_smoothing`` of nn.CrossEntropyLoss has no BCE twin)."""

    def __init__(self, pos_weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__(pos_weight=pos_weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits, smooth_binary(target, self.label_smoothing))


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) on logits; binary (N,) targets in [0, 1] or multiclass (N,) class indices or
    (N, C) class probabilities (mixup's soft targets).

    With ``label_smoothing`` the cross-entropy inside is taken against smoothed targets; the focusing term
    (1 - p_t)^gamma still uses the model's probability of the true class. Soft multiclass targets take the usual
    generalisation, sum_c y_c (1 - p_c)^gamma (-log p_c): the same as class indices when y is one-hot and
    unsmoothed.
    """

    def __init__(self, gamma: float = 2.0, binary: bool = True, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.gamma = gamma
        self.binary = binary
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary:
            ce = F.binary_cross_entropy_with_logits(logits, smooth_binary(target, self.label_smoothing),
                                                    reduction="none")
            p_t = torch.exp(-ce)
            loss = (1 - p_t) ** self.gamma * ce
            if self.weight is not None:  # weight = (w_neg, w_pos); a mixed target weighs by its share of each
                loss = loss * (target * self.weight[1] + (1 - target) * self.weight[0])
            return loss.mean()
        if target.ndim == 2:
            return self._soft_multiclass(logits, target)
        p_t = F.softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        loss = (1 - p_t) ** self.gamma * ce
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()

    def _soft_multiclass(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        eps, n_classes = self.label_smoothing, logits.shape[1]
        target = target * (1 - eps) + eps / n_classes  # as F.cross_entropy smooths
        log_p = F.log_softmax(logits, dim=1)
        per_class = target * (1 - log_p.exp()) ** self.gamma * -log_p
        if self.weight is not None:
            per_class = per_class * self.weight
        return per_class.sum(1).mean()


def class_weights(targets: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, each present class weighing the same in total and the mean over the rows 1; a
    class absent from ``targets`` (from a fold's training part) gets 0."""
    counts = np.bincount(targets, minlength=n_classes).astype(float)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    return torch.tensor(w, dtype=torch.float32)


@dataclass(frozen=True)
class LossFactory:
    """Builds a loss module: ``factory(binary, weight, gamma, label_smoothing)``; ``tasks`` are the competition
    tasks (binary, multiclass) it is for. ``weight`` is the per-class weight tensor or None."""

    build: Callable[[bool, torch.Tensor | None, float, float], nn.Module]
    tasks: tuple[str, ...] = TASKS

    def __call__(self, binary: bool, weight: torch.Tensor | None = None, gamma: float = 2.0,
                 label_smoothing: float = 0.0) -> nn.Module:
        return self.build(binary, weight, gamma, label_smoothing)


LOSSES: Registry[LossFactory] = Registry("loss")


def register_loss(name: str, tasks: tuple[str, ...] = TASKS) -> Callable:
    """Decorator: register ``fn(binary, weight, gamma, label_smoothing) -> nn.Module`` as the loss ``name``."""

    def deco(fn: Callable[[bool, torch.Tensor | None, float, float], nn.Module]) -> Callable:
        LOSSES.add(name, LossFactory(fn, tasks))
        return fn

    return deco


@register_loss("bce", tasks=("binary",))
def _bce(binary: bool, weight: torch.Tensor | None, gamma: float, label_smoothing: float) -> nn.Module:
    pos_weight = (weight[1] / weight[0]).reshape(1) if weight is not None else None
    return SmoothedBCE(pos_weight, label_smoothing)


@register_loss("ce", tasks=("multiclass",))
def _ce(binary: bool, weight: torch.Tensor | None, gamma: float, label_smoothing: float) -> nn.Module:
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


@register_loss("focal")
def _focal(binary: bool, weight: torch.Tensor | None, gamma: float, label_smoothing: float) -> nn.Module:
    return FocalLoss(gamma, binary, weight, label_smoothing)


def resolve_loss(name: str, task: str) -> str:
    """The registered loss for ``name`` on a ``task`` competition ("auto": bce for binary, ce for multiclass);
    an unknown name or one for the other task raises naming the ones that fit."""
    if name == "auto":
        return "bce" if task == "binary" else "ce"
    if name not in LOSSES:
        raise ConfigError(f"train.loss={name} is not a loss. Valid: auto, {', '.join(LOSSES.names())}")
    name = LOSSES.canonical(name)
    if task not in LOSSES.get(name).tasks:
        fits = [n for n, f in LOSSES.items() if task in f.tasks]
        other = " or ".join(t for t in TASKS if t in LOSSES.get(name).tasks)
        raise ConfigError(f"train.loss={name} is for {other} competitions; use {' or '.join(fits)}")
    return name


def build_loss(name: str, n_classes: int, targets: np.ndarray, weighted: bool, gamma: float = 2.0,
               label_smoothing: float = 0.0) -> nn.Module:
    """``name`` in auto | bce | ce | focal; ``n_classes`` is 2 for binary; ``targets`` are the training targets."""
    binary = n_classes == 2
    name = resolve_loss(name, "binary" if binary else "multiclass")
    weight = class_weights(targets, n_classes) if weighted else None
    return LOSSES.get(name)(binary, weight, gamma, label_smoothing)
