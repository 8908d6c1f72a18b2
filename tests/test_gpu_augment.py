"""aug.on_device: the histo preset per batch on the device draws the views the CPU preset draws, in distribution
(tested on the CPU device; the same torch ops run on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from kit.config import load_config
from kit.errors import ConfigError
from kit.gpu_augment import build_batch_augment, dihedral_element
from kit.transforms import build_train_transform

N = 2000
SIZE = 8
# the same comparisons on a GPU where there is one (marked cuda; skipped elsewhere)
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """An asymmetric H&E-like patch: its 8 dihedral views all differ, and colour jitter moves its statistics."""
    rng = np.random.default_rng(0)
    base = np.array([200, 120, 170], dtype=np.float64)
    img = base + rng.normal(0, 35, (SIZE, SIZE, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _cpu_views(image: np.ndarray, strength: float) -> np.ndarray:
    pipeline = build_train_transform("histo", SIZE, strength, native_size=SIZE, seed=1)
    return np.stack([pipeline(image).numpy() for _ in range(N)])  # N x C x H x W


def _device_views(image: np.ndarray, strength: float, seed: int = 1, device: str = "cpu") -> np.ndarray:
    batch = torch.from_numpy(image.transpose(2, 0, 1).copy()).unsqueeze(0).repeat(N, 1, 1, 1).to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    out = build_batch_augment("histo", strength)(batch, g)
    assert out.dtype == torch.uint8 and out.shape == batch.shape and out.device.type == device
    return out.cpu().numpy()


def _orientation(views: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Which of the 8 symmetries each (uncoloured) view is; -1 for none."""
    chw = torch.from_numpy(image.transpose(2, 0, 1).copy())
    elements = np.stack([dihedral_element(chw, e).numpy() for e in range(8)])
    match = (views[:, None] == elements[None]).all(axis=(2, 3, 4))
    return np.where(match.any(1), match.argmax(1), -1)


def _colour_stats(views: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics a dihedral symmetry leaves alone: per-channel means and the image's contrast."""
    v = views.astype(np.float64)
    return {"red": v[:, 0].mean((1, 2)), "green": v[:, 1].mean((1, 2)), "blue": v[:, 2].mean((1, 2)),
            "contrast": v.mean(1).std((1, 2)), "spread": v.reshape(len(v), -1).std(1)}


@pytest.mark.parametrize("device", DEVICES)
def test_the_dihedral_symmetries_are_drawn_uniformly_as_on_the_cpu(image, device):
    cpu = _orientation(_cpu_views(image, 0.0), image)  # strength 0: no colour jitter, the symmetries alone
    device = _orientation(_device_views(image, 0.0, device=device), image)
    assert (cpu >= 0).all() and (device >= 0).all()
    cpu_counts, device_counts = np.bincount(cpu, minlength=8), np.bincount(device, minlength=8)
    assert stats.chisquare(device_counts).pvalue > 1e-3  # uniform over the 8
    assert stats.chi2_contingency(np.stack([cpu_counts, device_counts])).pvalue > 1e-3  # as the CPU draws them


@pytest.mark.parametrize("device", DEVICES)
def test_the_colour_jitter_matches_the_cpu_preset(image, device):
    cpu, device = _colour_stats(_cpu_views(image, 1.0)), _colour_stats(_device_views(image, 1.0, device=device))
    for name in cpu:
        p = stats.ks_2samp(cpu[name], device[name]).pvalue
        assert p > 1e-3, f"{name}: the on-device distribution differs from the CPU preset's (KS p={p:.2g})"


def test_the_comparison_tells_a_different_strength_apart(image):
    """The test above can fail: twice the strength on the device is caught on some statistic."""
    cpu, device = _colour_stats(_cpu_views(image, 1.0)), _colour_stats(_device_views(image, 2.0))
    assert min(stats.ks_2samp(cpu[n], device[n]).pvalue for n in cpu) < 1e-6


def test_a_seeded_generator_draws_the_same_batch(image):
    np.testing.assert_array_equal(_device_views(image, 1.0, seed=4), _device_views(image, 1.0, seed=4))
    assert not np.array_equal(_device_views(image, 1.0, seed=4), _device_views(image, 1.0, seed=5))


def test_on_device_needs_a_preset_that_has_a_batch_version():
    with pytest.raises(ConfigError, match="aug.on_device=true is not valid with aug.preset=isic"):
        load_config("histopathologic-cancer-detection", overrides=["aug.preset=isic", "aug.on_device=true"])
    assert load_config("histopathologic-cancer-detection", overrides=["aug.on_device=true"]).aug.on_device
