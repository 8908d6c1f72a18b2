"""Pseudo-labels (``data.pseudo=RUN``, ``kit pseudo RUN``): confident test images join the training part of a fold.

The Histopathologic Cancer Detection winners' recipe: predict the test images, keep those the model is sure about,
and train again on them with the predicted labels. Here a test image enters the training part of fold k with the
probabilities of the source run's fold k model (its ``test_fold{k}.csv`` from ``kit predict``) as a soft target
(``data.pseudo_hard``: the argmax class), when its top probability (binary: p or 1 - p) reaches
``data.pseudo_threshold``. Fold k's labels come from fold k's model, never from the blend of every fold: that model
never saw fold k's validation rows (the source's folds must agree with this run's), so nothing of them reaches fold
k through the labels and its score stays out-of-fold. Test images never validate and never appear in ``folds.csv``,
``oof.csv`` or the CV; ``history.csv`` counts them per epoch (``pseudo_images``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kit.checkpoint import load_checkpoint
from kit.competitions import Competition
from kit.config import Config
from kit.data.dataset import StoreImages
from kit.data.extra import ExtraSource
from kit.data.folds import check_folds_agree
from kit.data.labels import load_test_table
from kit.data.pack import split_pack
from kit.data.readers import check_images_exist, open_store
from kit.errors import ConfigError, DataError
from kit.oof import prediction_values
from kit.records import PredictInfo
from kit.rundir import RunDir

__all__ = ["PseudoSource", "describe_pseudo", "load_pseudo_sources", "soft_targets"]


@dataclass
class PseudoSource(ExtraSource):
    """The confident test images of one fold: they train fold ``fold`` only, with ``soft`` targets (None: hard)."""

    fold: int = 0
    soft: np.ndarray | None = None
    """Per row: the probability of the positive class (binary) or of every class (multiclass)."""
    source: Path = field(default_factory=Path)
    split_ids: list[str] = field(default_factory=list)
    """Every test id: the test pack is the whole split's, shared with kit predict."""

    def trains_fold(self, k: int) -> bool:
        return k == self.fold

    def images(self, size: int, cached: bool) -> tuple[Sequence[np.ndarray], np.ndarray]:
        ids = self.table["id"].to_numpy(dtype=str)
        if not cached:
            return StoreImages(self.store, ids), np.arange(len(ids))
        pack = split_pack(self.spec, self.data_dir, "test", size, self.split_ids)
        return pack.rows, pack.index(ids)

    def describe(self) -> str:
        return f"{len(self.table)} pseudo-labelled test images of fold {self.fold} from {self.source}"


def _source_run(cfg: Config, spec: Competition, input_size: int) -> RunDir:
    """The predicted run of ``data.pseudo``, refused in one line unless it is this competition's at this size."""
    run = RunDir.open(cfg.data.pseudo)
    theirs = run.config().competition
    if theirs != spec.name:
        raise ConfigError(f"data.pseudo={cfg.data.pseudo} is a {theirs} run, this run is {spec.name}")
    folds = run.load(PredictInfo).folds
    size = load_checkpoint(run.best_path(folds[0])).input_size
    if size != input_size:
        raise ConfigError(f"data.pseudo={cfg.data.pseudo} predicted at {size} px, this run trains at {input_size} "
                          f"px; pseudo-label from a run at the same image size")
    missing = [k for k in range(cfg.n_folds) if not run.test_path(k).is_file()]
    if missing:
        raise ConfigError(f"data.pseudo={cfg.data.pseudo}: no test predictions of fold "
                          f"{', '.join(map(str, missing))} ({run.test_path(missing[0]).name}); fold k is "
                          f"pseudo-labelled by fold k's model: kit predict {run.path} with every fold")
    return run


def _confident(spec: Competition, probs: np.ndarray, threshold: float) -> np.ndarray:
    """Rows whose top probability (binary: p or 1 - p) reaches ``threshold``."""
    top = np.maximum(probs, 1 - probs) if spec.is_binary else probs.max(axis=1)
    return np.flatnonzero(top >= threshold)


def _fold_source(cfg: Config, spec: Competition, run: RunDir, k: int, test: pd.DataFrame, store,
                 data_dir: Path) -> PseudoSource:
    path = run.test_path(k)
    df = run.test_predictions(k)
    probs = prediction_values(spec, df, path)
    ids = df[spec.id_col].astype(str).to_numpy()
    unknown = np.flatnonzero(~pd.Index(ids).isin(test["id"].astype(str)))
    if len(unknown):
        raise DataError(f"data.pseudo: {path} predicts {len(unknown)} ids that are not test images of {data_dir} "
                        f"(first: {', '.join(ids[unknown[:3]])})")
    keep = _confident(spec, probs, cfg.data.pseudo_threshold)
    probs = probs[keep]
    if not spec.is_binary:
        probs = probs / probs.sum(axis=1, keepdims=True)
    targets = (probs >= 0.5).astype(np.int64) if spec.is_binary else probs.argmax(axis=1)
    table = test.set_index(test["id"].astype(str)).loc[ids[keep]].reset_index(drop=True)
    soft = None if cfg.data.pseudo_hard else probs
    return PseudoSource(spec, data_dir, table, targets, store, fold=k, soft=soft, source=run.path,
                        split_ids=test["id"].astype(str).tolist())


def load_pseudo_sources(cfg: Config, spec: Competition, data_dir: Path, ids: pd.Series, fold: np.ndarray,
                        input_size: int) -> list[PseudoSource]:
    """One source per fold from ``data.pseudo``'s test predictions (none without it); its folds must agree with
    this run's (``ids``, ``fold``)."""
    if not cfg.data.pseudo:
        return []
    run = _source_run(cfg, spec, input_size)
    check_folds_agree(run.folds_path, ids, fold, spec.id_col, f"data.pseudo={cfg.data.pseudo}")
    test = load_test_table(spec, data_dir, features=cfg.model.use_metadata)
    store = open_store(spec, data_dir, "test")
    sources = [_fold_source(cfg, spec, run, k, test, store, data_dir) for k in range(cfg.n_folds)]
    check_images_exist(store, sorted({i for s in sources for i in s.table["id"]}), what="data.pseudo test ids")
    return sources


def describe_pseudo(sources: Sequence[ExtraSource]) -> str:
    """`` + pseudo-labelled test images from RUN (fold 0: 12, fold 1: 15; training only)`` for the start line."""
    pseudo = [s for s in sources if isinstance(s, PseudoSource)]
    if not pseudo:
        return ""
    counts = ", ".join(f"fold {s.fold}: {len(s.table)}" for s in pseudo)
    return f" + pseudo-labelled test images from {pseudo[0].source} ({counts}; training only)"


def soft_targets(spec: Competition, targets: np.ndarray, sources: Sequence[ExtraSource]) -> np.ndarray | None:
    """The training target of every row as probabilities when a source has soft labels (None when none has):
    the run's own rows and hard sources one-hot (binary: 0 or 1), soft sources their probabilities."""
    if not any(isinstance(s, PseudoSource) and s.soft is not None and len(s.soft) for s in sources):
        return None  # hard labels, or no confident test image: the plain class-index targets
    n_classes = len(spec.classes)
    soft = targets.astype(np.float32) if spec.is_binary else np.eye(n_classes, dtype=np.float32)[targets]
    start = len(targets) - sum(len(s.targets) for s in sources)
    for s in sources:
        if isinstance(s, PseudoSource) and s.soft is not None:
            soft[start:start + len(s.targets)] = s.soft
        start += len(s.targets)
    return soft
