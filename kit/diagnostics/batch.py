"""``kit show batch``: training images as the model receives them (augmented, normalised, de-normalised for display)
beside the evaluation view, labelled with their class, read by the competition's real reader and resized as the pack
resizes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kit.competitions import Competition, get_competition
from kit.config import Config
from kit.data.labels import load_train_table
from kit.data.readers import fit_square, open_store
from kit.diagnostics.grid import Grid, Tile, write_grid
from kit.errors import ConfigError
from kit.progress import Progress
from kit.transforms import build_eval_transform, build_train_transform, normalize

__all__ = ["BatchPreview", "class_name", "model_input", "preview_batch", "to_display", "write_batch_grids"]

COLUMNS = 8


@dataclass
class BatchPreview:
    spec: Competition
    ids: list[str]
    labels: list[str]
    train: list[np.ndarray]
    """H x W x 3 uint8: the training view (augmentation of ``aug.preset``), as the network's input de-normalised."""
    eval: list[np.ndarray]
    """The evaluation view (validation and prediction without TTA)."""
    what: str
    """How the training view was made, for the titles."""


def class_name(spec: Competition, target: int) -> str:
    """``label=1`` (binary) or the class's name (multiclass)."""
    return f"{spec.classes[0]}={int(target)}" if spec.is_binary else spec.classes[int(target)]


def model_input(cfg: Config) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(input side, mean, std) of the config's model: the backbone decides, as in training (no weights loaded)."""
    from kit.models import create_backbone, data_config

    dcfg = data_config(create_backbone(cfg.model.name, 1, None, cfg.model.img_size), cfg.model.img_size)
    return dcfg["input_size"][-1], dcfg["mean"], dcfg["std"]


def to_display(x: torch.Tensor, mean, std) -> list[np.ndarray]:
    """A uint8 NCHW batch normalised as the network receives it, then de-normalised back to HWC uint8 pixels."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    z = normalize(x, m, s)  # what the first layer sees
    back = ((z * s + m).clamp(0, 1) * 255).round().to(torch.uint8)
    return list(back.permute(0, 2, 3, 1).numpy())


def _training_view(cfg: Config, raw: list[np.ndarray], size: int, seed: int) -> torch.Tensor:
    """The preset on the CPU workers, or (``aug.on_device``) per batch as the device would run it."""
    a = cfg.aug
    pipeline = build_train_transform("none" if a.on_device else a.preset, size, a.strength, size, seed=seed)
    x = torch.stack([pipeline(img) for img in raw])
    if a.on_device:
        from kit.gpu_augment import build_batch_augment

        x = build_batch_augment(a.preset, a.strength)(x, torch.Generator().manual_seed(seed))
    return x


def preview_batch(cfg: Config, data_dir: str | Path, n: int = 16, seed: int = 0,
                  ids: list[str] | None = None) -> BatchPreview:
    """``n`` training images drawn with ``seed`` (or the given ``ids``), in both views, sorted by class."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    spec = get_competition(cfg.competition)
    table = load_train_table(spec, data_dir)
    if ids:
        unknown = sorted(set(ids) - set(table["id"]))
        if unknown:
            raise ConfigError(f"--ids: {unknown[0]} is not a training id of {Path(data_dir) / spec.labels_file}")
        rows = table[table["id"].isin(ids)]
    else:
        pick = np.random.default_rng(seed).choice(len(table), size=min(n, len(table)), replace=False)
        rows = table.iloc[pick].sort_values(["target", "id"])
    size, mean, std = model_input(cfg)
    store = open_store(spec, Path(data_dir), "train")
    with Progress(len(rows), "batch preview: reading", unit="img") as bar:
        raw = [fit_square(store.read(i, min_side=size), size) for i in bar.wrap(rows["id"])]  # as the pack holds them
    evaluation = torch.stack([build_eval_transform(size, size)(img) for img in raw])
    what = f"aug.preset={cfg.aug.preset} strength {cfg.aug.strength:g}" + (" on device" if cfg.aug.on_device else "")
    return BatchPreview(spec, [str(i) for i in rows["id"]], [class_name(spec, t) for t in rows["target"]],
                        to_display(_training_view(cfg, raw, size, seed), mean, std), to_display(evaluation, mean, std),
                        f"{what}, {size} px, seed {seed}")


def _rows(tiles: list[Tile]) -> list[list[Tile]]:
    return [tiles[i:i + COLUMNS] for i in range(0, len(tiles), COLUMNS)]


def write_batch_grids(preview: BatchPreview, out_dir: str | Path) -> list[Grid]:
    """``batch_train.png`` (the training view) and ``batch_eval.png`` in ``out_dir``."""
    out, grids = Path(out_dir), []
    for name, images, what in (("batch_train", preview.train, f"training view ({preview.what})"),
                               ("batch_eval", preview.eval, "evaluation view (no augmentation)")):
        tiles = [Tile(img, f"{i}\n{label}", i) for img, i, label in zip(images, preview.ids, preview.labels,
                                                                         strict=True)]
        grids.append(write_grid(_rows(tiles), out / f"{name}.png", f"{preview.spec.name}: {what}"))
    return grids
