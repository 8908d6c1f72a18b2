"""Mixup and CutMix of a training batch (timm's ``Mixup``), with the metadata rows and the targets mixed exactly as
the images are.

timm's ``Mixup`` mixes each image with its mirror in the batch (row i with row n-1-i: ``x.flip(0)``) and returns the
targets mixed the same way, but not the mixing weight, which the metadata branch needs too. So the targets it is
given are the batch's own row numbers: what comes back is the mixing matrix ``w`` (row i: how much of each row the
mixed image i holds, summing to one), whatever the mode (one weight per batch, per pair or per image) and whether
mixup or CutMix was drawn (CutMix's weight is the pasted area's share). The class targets and the metadata are then
``w @ one_hot(y)`` and ``w @ meta``: they follow the images by construction.

Label smoothing and class weights stay with the loss (kit/losses.py takes soft targets), so a mixed epoch and a
plain one smooth and weight alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BatchMix", "MIX_MODES"]

MIX_MODES = ("batch", "pair", "elem")
"""timm's modes: one mixing weight per batch, per pair of mirrored rows, or per row."""


class BatchMix:
    """Mixes a batch of normalised images, their metadata rows and targets (binary: (n,) floats; multiclass: (n,)
    class indices) into images, metadata and soft targets (binary: (n,) in [0, 1]; multiclass: (n, classes) rows
    summing to one)."""

    def __init__(self, n_classes: int, binary: bool, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 prob: float = 1.0, switch_prob: float = 0.5, mode: str = "batch"):
        from timm.data import Mixup

        # timm draws its weights from numpy's global generator: saved in last.pt, so a resumed run mixes alike
        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                           mode=mode, label_smoothing=0.0, num_classes=2)
        self.n_classes, self.binary = n_classes, binary

    def weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``x`` (modified in place); the mixed images and the (n, n) mixing matrix. timm mixes mirrored pairs,
        so an odd batch's last row stays as it is."""
        n = len(x)
        even = n - n % 2
        w = torch.eye(n, device=x.device)
        if even < 2:
            return x, w
        self.mixup.num_classes = even  # the targets are row numbers: one "class" per row
        head, w_head = self.mixup(x[:even], torch.arange(even, device=x.device))
        x[:even] = head
        w[:even, :even] = w_head
        return x, w

    def __call__(self, x: torch.Tensor, meta: torch.Tensor | None,
                 y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        x, w = self.weights(x)
        # class indices become one-hot rows; probabilities (binary, or data.pseudo's soft rows) mix as they are
        hard = y.float() if self.binary or y.ndim == 2 else F.one_hot(y.long(), self.n_classes).float()
        soft = w @ hard
        return x, (None if meta is None else w @ meta.float()), soft
