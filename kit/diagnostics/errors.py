"""``kit show errors``: the most confidently wrong out-of-fold images (highest loss), as false positives and false
negatives (binary) or per true class (multiclass), and a few confident correct ones for comparison (``kit show cam``'s
default). Everything is read from the run's saved predictions (oof.csv, oof_tta.csv)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kit.competitions import Competition
from kit.diagnostics.batch import class_name
from kit.diagnostics.grid import Grid, Tile, write_grid
from kit.diagnostics.images import RunImages
from kit.errors import ConfigError
from kit.oof import prediction_values
from kit.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["ErrorGroup", "caption", "confident_correct", "oof_losses", "predicted_class", "scored_rows", "worst_errors",
           "write_error_grids"]

EPS = 1e-7


def oof_losses(spec: Competition, oof: pd.DataFrame) -> np.ndarray:
    """Each row's cross-entropy of its true class (binary: of its 0/1 target): the loss the row costs the model."""
    probs, target = prediction_values(spec, oof), oof["target"].to_numpy().astype(int)
    if spec.is_binary:
        p_true = np.where(target == 1, probs, 1 - probs)
    else:
        p_true = probs[np.arange(len(target)), target]
    return -np.log(np.clip(p_true, EPS, 1.0))


def predicted_class(spec: Competition, oof: pd.DataFrame) -> np.ndarray:
    probs = prediction_values(spec, oof)
    return (probs >= 0.5).astype(int) if spec.is_binary else probs.argmax(axis=1)


def scored_rows(spec: Competition, oof: pd.DataFrame) -> pd.DataFrame:
    """``oof`` with its ``loss``, ``predicted`` class and that class's probability ``p``."""
    probs, pred = prediction_values(spec, oof), predicted_class(spec, oof)
    p = np.where(pred == 1, probs, 1 - probs) if spec.is_binary else probs[np.arange(len(pred)), pred]
    return oof.assign(loss=oof_losses(spec, oof), predicted=pred, p=p)


@dataclass
class ErrorGroup:
    name: str
    rows: pd.DataFrame
    """The group's wrong rows, highest loss first (with ``loss``, ``predicted`` and ``p`` columns)."""


def worst_errors(spec: Competition, oof: pd.DataFrame, n: int = 8) -> list[ErrorGroup]:
    """Up to ``n`` wrong rows per group, by loss: false positives and false negatives, or one group per true class."""
    df = scored_rows(spec, oof)
    wrong = df[df["predicted"] != df["target"]].sort_values("loss", ascending=False, kind="stable")
    if spec.is_binary:
        groups = [("false positives (truth 0)", wrong[wrong["target"] == 0]),
                  ("false negatives (truth 1)", wrong[wrong["target"] == 1])]
    else:
        groups = [(f"true {c}, predicted otherwise", wrong[wrong["target"] == j]) for j, c in enumerate(spec.classes)]
    return [ErrorGroup(name, rows.head(n).reset_index(drop=True)) for name, rows in groups if len(rows)]


def confident_correct(spec: Competition, oof: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """``n`` right rows of lowest loss, taking the classes in turn (the best of each class, then the second, ...)."""
    df = scored_rows(spec, oof)
    right = df[df["predicted"] == df["target"]].sort_values("loss", kind="stable")
    turn = right.groupby("target").cumcount()
    return right.assign(turn=turn).sort_values(["turn", "loss"], kind="stable").head(n).drop(columns="turn") \
        .reset_index(drop=True)


def caption(spec: Competition, row: pd.Series) -> str:
    """id, fold, truth, prediction with its probability, loss: the title of one image."""
    return (f"{row[spec.id_col]}\nfold {int(row['fold'])}, true {class_name(spec, row['target'])}\n"
            f"pred {class_name(spec, row['predicted'])} p={row['p']:.2f}\nloss {row['loss']:.2f}")


def _grid(spec: Competition, images: RunImages, groups: list[ErrorGroup], path: Path, title: str) -> Grid:
    ckpt = images.any_checkpoint()
    ids = [str(i) for g in groups for i in g.rows[spec.id_col]]
    pixels = dict(zip(ids, images.pixels(ids, ckpt), strict=True))
    rows = [[Tile(pixels[str(r[spec.id_col])], caption(spec, r), str(r[spec.id_col])) for _, r in g.rows.iterrows()]
            for g in groups]
    headings = [f"{g.name}: {len(g.rows)} highest loss" for g in groups]
    return write_grid(rows, path, title, headings)


def write_error_grids(run_dir: str | Path, out_dir: str | Path, n: int = 8,
                      data_dir: str | Path | None = None) -> list[Grid]:
    """``errors.png`` (from oof.csv) and, once ``kit predict`` has run, ``errors_tta.png`` (from oof_tta.csv) in
    ``out_dir``: one row per group (false positives / negatives, or per true class), highest loss first."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    run = RunDir.open(run_dir)
    spec, images = run.competition(), RunImages(run, data_dir)
    frames = [("errors", run.oof(), "no TTA"), ("errors_tta", run.oof_tta(), "TTA")]
    grids = []
    for name, oof, tta in frames:
        if oof is None:
            continue
        groups = worst_errors(spec, oof, n)
        if not groups:
            log.warning("%s: no wrong out-of-fold prediction (%s): no %s.png", run.name, tta, name)
            continue
        title = f"{run.name}: the most confidently wrong out-of-fold images, {tta}"
        grids.append(_grid(spec, images, groups, Path(out_dir) / f"{name}.png", title))
    return grids
