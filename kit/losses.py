"""Losses by name: BCE / CE (optionally class-weighted, label-smoothed) and focal loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kit.errors import ConfigError


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) on logits; binary (N,) targets in {0,1} or multiclass (N,) class indices."""

    def __init__(self, gamma: float = 2.0, binary: bool = True, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.binary = binary
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary:
            ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            p_t = torch.exp(-ce)
            loss = (1 - p_t) ** self.gamma * ce
            if self.weight is not None:  # weight = (w_neg, w_pos)
                loss = loss * torch.where(target > 0.5, self.weight[1], self.weight[0])
            return loss.mean()
        logp = F.log_softmax(logits, dim=1)
        logp_t = logp.gather(1, target[:, None]).squeeze(1)
        loss = -(1 - logp_t.exp()) ** self.gamma * logp_t
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


def class_weights(targets: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 over the classes present (absent classes get 0)."""
    counts = np.bincount(targets, minlength=n_classes).astype(float)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def build_loss(name: str, n_classes: int, targets: np.ndarray, weighted: bool, gamma: float = 2.0,
               label_smoothing: float = 0.0) -> nn.Module:
    """``name`` in auto | bce | ce | focal; ``n_classes`` is 2 for binary; ``targets`` are the training targets."""
    binary = n_classes == 2
    if name == "auto":
        name = "bce" if binary else "ce"
    weight = class_weights(targets, n_classes) if weighted else None
    if name == "bce":
        if not binary:
            raise ConfigError("train.loss=bce is for binary competitions; use ce or focal")
        pos_weight = (weight[1] / weight[0]).reshape(1) if weight is not None else None
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    if name == "ce":
        if binary:
            raise ConfigError("train.loss=ce is for multiclass competitions; use bce or focal")
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(gamma, binary, weight)
    raise ConfigError(f"unknown loss '{name}'; known: auto, bce, ce, focal")
