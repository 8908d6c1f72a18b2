"""Augmentation per batch on the training device (``aug.on_device``): the CPU workers only read and resize.

A batch preset is a function ``strength -> augment``, where ``augment(images, generator)`` maps a uint8 NCHW batch
on the device to an augmented uint8 batch, drawing its parameters per image from ``generator`` (seeded per epoch,
so a resumed run draws what an uninterrupted one would). Each preset reproduces the *distribution* of views of the
albumentations preset of the same name in :mod:`kit.transforms` (tests/test_gpu_augment.py compares them
statistically); the per-image random streams differ.

Plain torch ops, no extra dependency: the dihedral group by flips, rotations and transposes, and torchvision's
colour-jitter arithmetic (the one albumentations' ``ColorJitter`` follows), vectorised with a factor per image.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from kit.registry import Registry

__all__ = ["BATCH_PRESETS", "BatchAugment", "HistoBatch", "build_batch_augment", "dihedral", "dihedral_element",
           "on_device"]

BatchAugment = Callable[[Tensor, torch.Generator], Tensor]
"""(uint8 NCHW batch on the device, generator on the device) -> augmented uint8 NCHW batch."""

BATCH_PRESETS: Registry[Callable[[float], BatchAugment]] = Registry("on-device augmentation preset")


def build_batch_augment(preset: str, strength: float = 1.0) -> BatchAugment:
    """The on-device version of the augmentation preset ``preset``; an unknown one lists those that exist."""
    return BATCH_PRESETS.get(preset)(strength)


# ------------------------------------------------------------------------------------------------- dihedral
def dihedral_element(x: Tensor, e: int) -> Tensor:
    """Element ``e`` (0-7) of the dihedral group of the square: a transpose for e >= 4, then e % 4 quarter turns."""
    if e >= 4:
        x = x.transpose(-2, -1)
    return torch.rot90(x, e % 4, dims=(-2, -1))


def dihedral(x: Tensor, g: torch.Generator) -> Tensor:
    """Each image of a square NCHW batch under one of the 8 symmetries of the square, uniformly (albumentations'
    ``D4(p=1)``)."""
    which = torch.randint(0, 8, (x.shape[0],), generator=g, device=x.device)
    out = torch.empty_like(x)
    for e in range(8):
        sel = which == e
        out[sel] = dihedral_element(x[sel], e)
    return out


# --------------------------------------------------------------------------------------------------- colour
_GRAY = (0.299, 0.587, 0.114)  # OpenCV's RGB2GRAY weights, as albumentations uses


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    """Float RGB in [0, 1] -> HSV in [0, 1] (torchvision's formulas)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    delta = maxc - minc
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta == 0, torch.zeros_like(h), (h / 6.0) % 1.0)
    return torch.stack((h, s, maxc), 1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack((torch.stack((v, q, p, p, t, v), 1), torch.stack((t, v, v, q, p, p), 1),
                         torch.stack((p, p, t, v, v, q), 1)), 1)  # N x 3 x 6 x H x W
    return table.gather(2, i[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return x * f


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return x * f + mean * (1 - f)


def _saturation(x: Tensor, f: Tensor) -> Tensor:
    return x * f + _gray(x) * (1 - f)


def _hue(x: Tensor, f: Tensor) -> Tensor:
    hsv = _rgb_to_hsv(x / 255.0)
    hsv = torch.cat(((hsv[:, :1] + f) % 1.0, hsv[:, 1:]), 1)
    return _hsv_to_rgb(hsv) * 255.0


_COLOUR_OPS = (_brightness, _contrast, _saturation, _hue)


def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> Tensor:
    return (low + (high - low) * torch.rand(n, generator=g, device=device)).view(n, 1, 1, 1)


class HistoBatch:
    """kit.transforms' ``histo`` preset per batch: a uniform dihedral symmetry, then with probability
    0.5 * min(s, 2) a colour jitter of brightness, contrast and saturation by factors in [1 - 0.1 s, 1 + 0.1 s] and
    hue by up to 0.05 s of the colour circle, in a random order per image, rounded to uint8 after each step (as the
    CPU preset works on uint8 images)."""

    def __init__(self, strength: float = 1.0):
        s = strength
        self.limits = (0.1 * s, 0.1 * s, 0.1 * s)
        self.hue = 0.05 * s
        self.p = 0.5 * min(s, 2)

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        x = dihedral(x, g)
        n, dev = x.shape[0], x.device
        jitter = torch.rand(n, generator=g, device=dev) < self.p
        factors = [_uniform(n, max(0.0, 1 - lim), 1 + lim, g, dev) for lim in self.limits]
        factors.append(_uniform(n, -self.hue, self.hue, g, dev))
        order = torch.argsort(torch.rand(n, 4, generator=g, device=dev), dim=1)  # a uniform permutation per image
        if not bool(jitter.any()):
            return x
        y = x[jitter].float()
        order, factors = order[jitter], [f[jitter] for f in factors]
        for step in range(4):
            for op_index, op in enumerate(_COLOUR_OPS):
                idx = (order[:, step] == op_index).nonzero().squeeze(1)
                if idx.numel():
                    y[idx] = op(y[idx], factors[op_index][idx]).round().clamp(0, 255)
        out = x.clone()
        out[jitter] = y.to(torch.uint8)
        return out


BATCH_PRESETS.add("histo", HistoBatch)
BATCH_PRESETS.add("none", lambda strength: (lambda x, g: x))


# ---------------------------------------------------------------------------------------------- the loader
class _OnDevice:
    """Batches of ``loader`` with their images moved to ``device`` and augmented there."""

    def __init__(self, loader, augment: BatchAugment, device: torch.device, seed: int):
        self.loader, self.augment, self.device, self.seed = loader, augment, device, seed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        g = torch.Generator(device=self.device).manual_seed(self.seed)
        for batch in self.loader:
            images = batch["image"].to(self.device, non_blocking=True)
            yield {**batch, "image": self.augment(images, g)}


def on_device(loader, augment: BatchAugment, device: torch.device, seed: int) -> _OnDevice:
    """Wrap a training loader: its images are augmented per batch on ``device``, from a generator seeded ``seed``."""
    return _OnDevice(loader, augment, device, seed)
