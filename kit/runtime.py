"""Where and how a model runs: device, precision, memory format, normalisation, data loaders, batched prediction.

Shared by training and prediction (one floor below both), so that prediction never imports the trainer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from kit.checkpoint import Checkpoint
from kit.errors import ConfigError
from kit.progress import Progress
from kit.transforms import normalize

__all__ = ["Runtime", "compile_model", "default_workers", "make_loader", "predict_loader", "resolve_amp",
           "resolve_channels_last", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here")
    return torch.device(name)


def resolve_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed).

    On a CPU ``auto`` is off, and ``bf16`` runs CPU autocast (what the CUDA path does, executed where CI runs).
    """
    if device.type != "cuda" or mode == "off":
        if mode == "bf16" and device.type == "cpu":
            return torch.bfloat16, False
        if mode in ("bf16", "fp16") and device.type != "cuda":
            raise ConfigError(f"train.amp={mode} needs a CUDA device; this run is on {device}")
        return None, False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode not in ("bf16", "fp16"):
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or off, got '{mode}'")
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


def resolve_channels_last(mode: str, device: torch.device) -> bool:
    """On where it is faster (CUDA) unless said otherwise; on a CPU it slows most convnets down."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """``train.compile``: torch.compile the model in place (``nn.Module.compile``), so that its state_dict keys, and
    hence its checkpoints, stay those of the plain model; the first steps are slow while it compiles."""
    model.compile(backend=backend)
    return model


def default_workers(num_workers: int, device: torch.device) -> int:
    """``train.num_workers``; -1 means none on a CPU (images are cached in memory), min(8, cores) on CUDA."""
    if num_workers >= 0:
        return num_workers
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    channels_last: bool
    mean: torch.Tensor
    std: torch.Tensor
    binary: bool
    use_meta: bool

    @classmethod
    def create(cls, device: torch.device, amp: str, channels_last: str, mean, std, binary: bool,
               use_meta: bool, training: bool = True) -> Runtime:
        # the precision a model was trained in may not exist here (bf16 trained on a GPU, predicted on a CPU)
        amp_dtype, needs_scaler = resolve_amp(amp if training or device.type == "cuda" else "off", device)
        scaler = torch.amp.GradScaler(device.type) if needs_scaler and training else None
        return cls(device, amp_dtype, scaler, resolve_channels_last(channels_last, device),
                   torch.tensor(mean, device=device).view(1, -1, 1, 1),
                   torch.tensor(std, device=device).view(1, -1, 1, 1), binary, use_meta)

    @classmethod
    def for_checkpoint(cls, ckpt: Checkpoint, device: torch.device) -> Runtime:
        """Prediction with a checkpoint's model: its normalisation, its training precision where it exists here."""
        train = ckpt.config["train"]
        return cls.create(device, train["amp"], train["channels_last"], ckpt.mean, ckpt.std,
                          ckpt.model.num_outputs == 1, ckpt.model.n_meta > 0, training=False)

    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = batch["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = normalize(x, self.mean, self.std)
        meta = batch["meta"].to(self.device, non_blocking=True) if self.use_meta else None
        return x, meta

    def forward(self, model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        with self.autocast():
            logits = model(x, meta) if self.use_meta else model(x)
        logits = logits.float()
        return logits.squeeze(1) if self.binary else logits

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.binary else torch.softmax(logits, dim=1)

    def place(self, model: nn.Module) -> nn.Module:
        """The model on this runtime's device and memory format."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


# ---------------------------------------------------------------------------------------------------- loaders
def _worker_init(worker_id: int) -> None:
    # each worker's augmentation stream differs and is fixed by the loader's seed for this epoch
    info = torch.utils.data.get_worker_info()
    transform = info.dataset.transform
    if hasattr(transform, "set_seed"):
        transform.set_seed(torch.initial_seed() % 2**31)


def make_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device, train: bool,
                seed: int = 0, sample_weights: np.ndarray | None = None, sampler: Sampler | None = None) -> DataLoader:
    """Shuffled (or ``sample_weights``-weighted) batches for training, in order for evaluation; ``sampler`` (the
    distributed training order, say) replaces both."""
    generator = torch.Generator().manual_seed(seed)
    if sampler is None and train and sample_weights is not None:
        sampler = WeightedRandomSampler(torch.as_tensor(sample_weights, dtype=torch.double), len(dataset),
                                        replacement=True, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      drop_last=train and len(dataset) > batch_size, generator=generator,
                      worker_init_fn=_worker_init if workers else None, persistent_workers=False)


@torch.inference_mode()
def predict_loader(model: nn.Module, loader: DataLoader, rt: Runtime, progress: Progress | None = None) -> np.ndarray:
    """Probabilities for every item of ``loader`` (N for binary, N x C for multiclass), in loader order."""
    model.eval()
    out = []
    for batch in loader:
        x, meta = rt.inputs(batch)
        out.append(rt.probabilities(rt.forward(model, x, meta)).cpu())
        if progress is not None:
            progress.update(len(x))
    return torch.cat(out).numpy().astype(np.float64)
