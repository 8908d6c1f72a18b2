"""Augmentation presets built with albumentations, by name.

Pipelines output uint8 CHW tensors: normalisation (the backbone's mean/std from its timm data config) runs on the
model's device inside the training loop, which is cheaper than normalising float images on CPU workers and moves a
quarter of the bytes to the GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import albumentations as A
import numpy as np
import torch

from kit.errors import ConfigError
from kit.registry import Registry

PresetFn = Callable[[int, float], list]
"""(image side in pixels, strength) -> the list of albumentations transforms of a preset."""

AUG_PRESETS: Registry[PresetFn] = Registry("augmentation preset")


def register_preset(name: str) -> Callable[[PresetFn], PresetFn]:
    """Decorator: register ``fn(size, strength) -> list of albumentations transforms`` as the preset ``name``."""
    return AUG_PRESETS.register(name)


@register_preset("none")
def _none(size: int, s: float) -> list:
    return []


@register_preset("classic")
def _classic(size: int, s: float) -> list:
    """The lecture's Keras ImageDataGenerator list: rotation 40, shifts 0.2, shear 0.2, zoom 0.2, horizontal flip."""
    return [
        A.Affine(rotate=(-40 * s, 40 * s), translate_percent=(-0.2 * s, 0.2 * s),
                 shear=(-np.degrees(np.arctan(0.2 * s)), np.degrees(np.arctan(0.2 * s))),  # Keras shear is a ratio
                 scale=(1 - 0.2 * s, 1 + 0.2 * s), border_mode=0, p=1.0),
        A.HorizontalFlip(p=0.5),
    ]


@register_preset("histo")
def _histo(size: int, s: float) -> list:
    """The dihedral group (histology has no up or left) plus mild stain / colour jitter."""
    return [
        A.D4(p=1.0),
        A.ColorJitter(brightness=0.1 * s, contrast=0.1 * s, saturation=0.1 * s, hue=0.05 * s, p=0.5 * min(s, 2)),
    ]


@register_preset("isic")
def _isic(size: int, s: float) -> list:
    """The SIIM-ISIC 2020 winners' list (transpose, flips, colour, blur/noise, distortions, CLAHE, HSV, SSR, dropout)."""
    p = min(1.0, 0.75 * s)
    return [
        A.Transpose(p=0.5),
        A.VerticalFlip(p=0.5),
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2 * s, contrast_limit=0.2 * s, p=p),
        A.OneOf([A.MotionBlur(blur_limit=5), A.MedianBlur(blur_limit=5), A.GaussianBlur(blur_limit=(3, 5)),
                 A.GaussNoise(std_range=(0.02, 0.1))], p=0.7 * p),
        # albumentations caps distortion limits at 1: stronger settings saturate there
        A.OneOf([A.OpticalDistortion(distort_limit=min(1.0, 1.0 * s)),
                 A.GridDistortion(num_steps=5, distort_limit=min(1.0, 1.0 * s)),
                 A.ElasticTransform(alpha=3 * s)], p=0.7 * p),
        A.CLAHE(clip_limit=4.0, p=0.7 * p),
        A.HueSaturationValue(hue_shift_limit=10 * s, sat_shift_limit=20 * s, val_shift_limit=10 * s, p=0.5 * p),
        A.Affine(translate_percent=(-0.1 * s, 0.1 * s), scale=(1 - 0.1 * s, 1 + 0.1 * s), rotate=(-15 * s, 15 * s),
                 border_mode=0, p=0.85 * p),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.1, 0.375), hole_width_range=(0.1, 0.375),
                        p=0.7 * p),
    ]


class ToCHWTensor:
    """HWC uint8 numpy -> CHW uint8 tensor (no copy of the pixels beyond the transpose)."""

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class Pipeline:
    """An albumentations Compose followed by the tensor conversion: ``pipeline(image) -> uint8 CHW tensor``."""

    def __init__(self, compose: A.Compose):
        self.compose = compose
        self.to_tensor = ToCHWTensor()

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.to_tensor(self.compose(image=image)["image"])

    def set_seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def save(self, path: str | Path) -> None:
        """Albumentations serialization (YAML), so the exact pipeline of a run can be reloaded with A.load."""
        from kit.io import atomic_path

        with atomic_path(path) as tmp:
            A.save(self.compose, str(tmp), data_format="yaml")


def _resize(size: int) -> list:
    # applied only when the image is not already size x size (cheap check inside albumentations is not available)
    return [A.Resize(size, size, p=1.0)]


def build_train_transform(preset: str, size: int, strength: float = 1.0, native_size: int | None = None,
                          seed: int = 0) -> Pipeline:
    fn = AUG_PRESETS.get(preset)
    resize = [] if native_size == size else _resize(size)
    return Pipeline(A.Compose(resize + fn(size, strength), seed=seed))


def check_preset(preset: str, strength: float, size: int = 64) -> None:
    """Build the preset at ``strength`` and apply it to one image: albumentations rejects some magnitudes (a
    distortion limit above 1, say) only when the transform is built, which would otherwise be inside training."""
    fn = AUG_PRESETS.get(preset)
    try:
        pipeline = Pipeline(A.Compose(fn(size, strength), seed=0))
        pipeline(np.zeros((size, size, 3), dtype=np.uint8))
    except (ValueError, TypeError) as e:
        detail = " ".join(str(e).split())[:300]
        raise ConfigError(f"aug.strength={strength} does not work with aug.preset={preset}: {detail}") from None


def build_eval_transform(size: int, native_size: int | None = None) -> Pipeline:
    return Pipeline(A.Compose([] if native_size == size else _resize(size)))


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float, scaled to [0, 1] and standardised; ``mean``/``std`` are (1, C, 1, 1) on x's device."""
    return (x.float().div_(255.0) - mean) / std
