"""Warm start (``model.init_from=RUN``): fold k starts from fold k's best checkpoint of an earlier run.

The recipe of growing image sizes: a short run at 64 px, then a run at 128 px whose folds start from those weights
(each size is read from its own pack). A fold model must never have seen its validation rows, so the earlier run's
folds must agree with this run's (:func:`kit.data.folds.check_folds_agree`), checked before anything is written;
its checkpoints must describe the same network (backbone, outputs, metadata features). A CNN takes its weights at
any input size; a network whose weights depend on it (a ViT's position embeddings) is refused naming the keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch import nn

from kit.checkpoint import ModelDescription, load_checkpoint
from kit.competitions import Competition
from kit.data.folds import check_folds_agree
from kit.errors import ConfigError
from kit.rundir import RunDir

__all__ = ["InitRun", "open_init_run"]


@dataclass(frozen=True)
class InitRun:
    """An earlier run whose fold checkpoints start this run's folds; its folds were checked against this run's."""

    run: RunDir

    def describe(self) -> str:
        return f"initial weights from {self.run.path}/fold{{k}}/best.pt (model.init_from)"

    def check_folds(self, folds: list[int]) -> None:
        """Every fold to be trained has a best checkpoint there."""
        missing = [k for k in folds if not self.run.best_path(k).is_file()]
        if missing:
            raise ConfigError(f"model.init_from={self.run.path}: no best.pt for fold {', '.join(map(str, missing))} "
                              f"(that run trained folds {', '.join(map(str, self.run.finished_folds())) or 'none'})")

    def load_into(self, model: nn.Module, k: int, description: ModelDescription) -> nn.Module:
        """``model`` (built like ``description``) with fold ``k``'s best weights of the earlier run."""
        path = self.run.best_path(k)
        ckpt = load_checkpoint(path)
        theirs, ours = ckpt.model, description
        for what, a, b in (("model", theirs.name, ours.name), ("outputs", theirs.num_outputs, ours.num_outputs),
                           ("metadata features", theirs.n_meta, ours.n_meta)):
            if a != b:
                raise ConfigError(f"model.init_from: {path} holds {what} {a}, this run has {b}; warm-start from a "
                                  "run of the same network")
        try:
            model.load_state_dict(ckpt.model_state)
        except RuntimeError as e:  # a weight whose shape depends on the input size (position embeddings)
            first = str(e).strip().splitlines()[-1].strip()
            raise ConfigError(f"model.init_from: {path} does not fit this run's {ours.name} at "
                              f"{ours.img_size} px: {first}") from None
        return model


def open_init_run(path: str | Path, spec: Competition, ids: pd.Series, fold) -> InitRun:
    """The earlier run of ``model.init_from``, refused with one line when it is another competition's or its folds
    disagree with this run's (``ids``, ``fold``)."""
    run = RunDir.open(path)
    theirs = run.config().competition
    if theirs != spec.name:
        raise ConfigError(f"model.init_from={path} is a {theirs} run, this run is {spec.name}")
    check_folds_agree(run.folds_path, ids, fold, spec.id_col, f"model.init_from={path}")
    return InitRun(run)
