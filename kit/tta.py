"""Test-time augmentation as batched tensor operations on the model's device.

Views are pure functions on NCHW batches (the dihedral group of the square: flips, 90-degree rotations, transposes),
registered by name; merges turn the stacked per-view logits into probabilities. ``TTA`` ties them together for one
batch: the caller iterates batches, TTA handles the views inside a batch.

>>> tta = TTA(views="8", merge="mean", task="binary")
>>> probs = tta(model, images)            # N for binary, N x C for multiclass
>>> probs = tta(model, images, meta)      # models with a metadata input: model(images, meta)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from kit.errors import ConfigError
from kit.registry import Registry

__all__ = [
    "MERGES",
    "TTA",
    "VIEWS",
    "VIEW_SETS",
    "View",
    "default_views_per_forward",
    "get_merge",
    "get_view",
    "get_view_set",
    "list_merges",
    "list_views",
    "register_merge",
    "register_view",
]

Task = Literal["binary", "multiclass"]
Merge = Callable[[Tensor, Task], Tensor]
"""(logits V x N x C, task) -> probabilities N x C."""


# --------------------------------------------------------------------------------------------------- views
@dataclass(frozen=True)
class View:
    """A named bijection of the pixel grid; ``swaps_hw`` says whether it exchanges height and width."""

    name: str
    fn: Callable[[Tensor], Tensor]
    swaps_hw: bool = False

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


VIEWS: Registry[View] = Registry("TTA view")


def register_view(name: str, swaps_hw: bool = False) -> Callable[[Callable[[Tensor], Tensor]], Callable]:
    """Decorator: register a pure tensor function on NCHW batches as the view ``name``."""

    def deco(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        VIEWS.add(name, View(name, fn, swaps_hw))
        return fn

    return deco


def list_views() -> list[str]:
    return VIEWS.names()


def get_view(name: str) -> View:
    """Return the registered view ``name``; an unknown name raises with the list of known ones."""
    return VIEWS.get(name)


# torch.rot90 with dims (-2, -1) turns counter-clockwise as displayed (row 0 at the top).
@register_view("identity")
def identity(x: Tensor) -> Tensor:
    return x


@register_view("hflip")
def hflip(x: Tensor) -> Tensor:
    return x.flip(-1)


@register_view("vflip")
def vflip(x: Tensor) -> Tensor:
    return x.flip(-2)


@register_view("rot90", swaps_hw=True)
def rot90(x: Tensor) -> Tensor:
    return torch.rot90(x, 1, (-2, -1))


@register_view("rot180")
def rot180(x: Tensor) -> Tensor:
    return x.flip(-2, -1)


@register_view("rot270", swaps_hw=True)
def rot270(x: Tensor) -> Tensor:
    return torch.rot90(x, 3, (-2, -1))


@register_view("transpose", swaps_hw=True)
def transpose(x: Tensor) -> Tensor:
    return x.transpose(-2, -1)


@register_view("transverse", swaps_hw=True)
def transverse(x: Tensor) -> Tensor:
    """Mirror across the anti-diagonal: out[i, j] = x[H-1-j, W-1-i]."""
    return x.flip(-2, -1).transpose(-2, -1)


VIEW_SETS: Registry[tuple[str, ...]] = Registry("TTA view set")
"""Named view sets: the flips (4) are a subgroup of the full dihedral group (8)."""
VIEW_SETS.add("1", ("identity",))
VIEW_SETS.add("2", ("identity", "hflip"))
VIEW_SETS.add("4", ("identity", "hflip", "vflip", "rot180"))
VIEW_SETS.add("8", ("identity", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "transverse"))


def get_view_set(name: str | int) -> tuple[str, ...]:
    """Return the view names of the set ``name`` ("1", "2", "4", "8"); an unknown name raises with the known ones."""
    return VIEW_SETS.get(str(name))


# -------------------------------------------------------------------------------------------------- merges
MERGES: Registry[Merge] = Registry("TTA merge")


def register_merge(name: str) -> Callable[[Merge], Merge]:
    """Decorator: register ``fn(logits V x N x C, task) -> probabilities N x C`` as the merge ``name``."""
    return MERGES.register(name)


def list_merges() -> list[str]:
    return MERGES.names()


def get_merge(name: str) -> Merge:
    """Return the merge ``name``; an unknown name raises with the list of known ones."""
    return MERGES.get(name)


def _activate(logits: Tensor, task: Task) -> Tensor:
    return torch.sigmoid(logits) if task == "binary" else torch.softmax(logits, dim=-1)


def _renormalise(probs: Tensor, task: Task) -> Tensor:
    # Multiclass output is a distribution per row whatever the merge, so submissions and argmax agree.
    return probs if task == "binary" else probs / probs.sum(dim=-1, keepdim=True)


@register_merge("mean")
def merge_mean(logits: Tensor, task: Task) -> Tensor:
    """Arithmetic mean of the views' probabilities."""
    return _activate(logits, task).mean(dim=0)


@register_merge("gmean")
def merge_gmean(logits: Tensor, task: Task) -> Tensor:
    """Geometric mean of the views' probabilities (renormalised for multiclass, where it equals "logits")."""
    # log-sigmoid / log-softmax keep tiny probabilities finite where log(sigmoid(z)) would give -inf.
    log_p = torch.nn.functional.logsigmoid(logits) if task == "binary" else torch.log_softmax(logits, dim=-1)
    return _renormalise(log_p.mean(dim=0).exp(), task)


@register_merge("max")
def merge_max(logits: Tensor, task: Task) -> Tensor:
    """Largest probability over the views (renormalised for multiclass)."""
    return _renormalise(_activate(logits, task).amax(dim=0), task)


@register_merge("logits")
def merge_logits(logits: Tensor, task: Task) -> Tensor:
    """Mean of the views' logits, then the activation."""
    return _activate(logits.mean(dim=0), task)


# ----------------------------------------------------------------------------------------------------- TTA
def default_views_per_forward(device: torch.device, n_views: int) -> int:
    """How many views go through the model together by default: all on an accelerator, one on the CPU.

    A GPU is filled better by a larger batch. On the CPU a batch 8x larger spills out of the caches: with resnet18,
    64 x 96px, scripts/bench_tta.py --sweep measured 8 views at 6.9x a plain forward with one view per forward,
    9.8x with two and 12.3x with all eight.
    """
    return 1 if device.type == "cpu" else n_views


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return param.device if param is not None else fallback


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _repeat(meta: Any, k: int) -> Any:
    """The same metadata for each of k stacked views: tensors repeated along the batch dimension."""
    if k == 1 or meta is None:
        return meta
    if isinstance(meta, Tensor):
        return torch.cat([meta] * k)
    if isinstance(meta, dict):
        return {key: _repeat(v, k) for key, v in meta.items()}
    if isinstance(meta, (list, tuple)):
        return type(meta)(_repeat(v, k) for v in meta)
    raise ConfigError(f"TTA metadata must be a tensor, or a dict/list/tuple of tensors; got {type(meta).__name__}")


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _chunks(views: Sequence[View], per_forward: int, square: bool) -> list[list[int]]:
    """Indices of the views that go through the model together; views of different shapes never share a batch."""
    groups = [list(range(len(views)))] if square else [
        [i for i, v in enumerate(views) if v.swaps_hw == swapped] for swapped in (False, True)
    ]
    return [g[s:s + per_forward] for g in groups if g for s in range(0, len(g), per_forward)]


def _stack(images: Tensor, views: Sequence[View], fmt: torch.memory_format) -> Tensor:
    """The views of a batch as one batch, in the input's memory format, with no copy where none is needed."""
    if len(views) == 1:
        # identity returns the input itself; flips keep its layout; only transposes need a copy to stay channels_last.
        return views[0](images).contiguous(memory_format=fmt)
    first = views[0](images)
    n = len(images)
    out = torch.empty((len(views) * n, *first.shape[1:]), dtype=images.dtype, device=images.device, memory_format=fmt)
    for i, view in enumerate(views):
        out[i * n:(i + 1) * n].copy_(first if i == 0 else view(images))
    return out


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation for one batch: views, how their outputs merge, how many views per forward.

    Args:
        views: a view set name ("1", "2", "4", "8") or a sequence of registered view names.
        merge: a registered merge name ("mean", "gmean", "max", "logits").
        task: "binary" (model output N or N x 1, sigmoid) or "multiclass" (N x C, softmax).
        views_per_forward: views stacked into one forward; None picks per device (see default_views_per_forward).
    """

    views: str | int | tuple[str, ...] = "8"
    merge: str = "mean"
    task: Task = "binary"
    views_per_forward: int | None = None

    def __post_init__(self) -> None:
        names = get_view_set(self.views) if isinstance(self.views, (str, int)) else tuple(self.views)
        if not names:
            raise ConfigError("TTA needs at least one view")
        for name in names:
            get_view(name)
        object.__setattr__(self, "views", names)  # normalised once; frozen afterwards
        get_merge(self.merge)
        if self.task not in ("binary", "multiclass"):
            raise ConfigError(f"unknown TTA task '{self.task}'. Known: binary, multiclass")
        if self.views_per_forward is not None and self.views_per_forward < 1:
            raise ConfigError(f"TTA views_per_forward must be >= 1; got {self.views_per_forward}")

    def __call__(self, model: Callable[..., Tensor], images: Tensor, meta: Any = None) -> Tensor:
        """Merged probabilities for ``images`` (N x C x H x W) on the model's device: N (binary) or N x C."""
        if images.dim() != 4:
            raise ConfigError(f"TTA expects an N x C x H x W batch; got shape {tuple(images.shape)}")
        device = _model_device(model, images.device)
        images, meta = images.to(device, non_blocking=True), _to_device(meta, device)
        views = [get_view(name) for name in self.views]
        per_forward = self.views_per_forward or default_views_per_forward(device, len(views))
        fmt = _memory_format(images)
        logits: list[Tensor | None] = [None] * len(views)
        with torch.inference_mode():
            for idx in _chunks(views, per_forward, images.shape[-2] == images.shape[-1]):
                batch = _stack(images, [views[i] for i in idx], fmt)
                out = model(batch) if meta is None else model(batch, _repeat(meta, len(idx)))
                for i, part in zip(idx, self._split(out, len(idx), len(images)), strict=True):
                    logits[i] = part
            probs = get_merge(self.merge)(torch.stack(logits), self.task)
        return probs.squeeze(-1) if self.task == "binary" else probs

    def _split(self, out: Tensor, k: int, n: int) -> Tensor:
        """The model output of k stacked views as k x N x C float logits, checked against the task."""
        if out.dim() == 1:
            out = out.unsqueeze(-1)
        if out.dim() != 2 or out.shape[0] != k * n:
            raise ConfigError(f"TTA expects model output of shape ({k * n},) or ({k * n}, C); got {tuple(out.shape)}")
        if self.task == "binary" and out.shape[1] != 1:
            raise ConfigError(f"task 'binary' expects one output per image; the model gives {out.shape[1]}")
        if self.task == "multiclass" and out.shape[1] < 2:
            raise ConfigError(f"task 'multiclass' expects N x C outputs with C >= 2; got {tuple(out.shape)}")
        # float32 for the merge: half-precision logits under autocast would lose the small differences between views.
        return out.float().reshape(k, n, -1)
