"""The checkpoint: what a fold's ``best.pt`` and ``last.pt`` hold, and the one pair of functions that save and load it.

A checkpoint describes itself (model, classes, input size, normalisation, config, metadata encoder), so prediction
never depends on the current config. It holds only tensors and plain values (str, int, float, bool, None, lists,
dicts), so it is read with ``torch.load(weights_only=True)``: a file from elsewhere (a Kaggle dataset, a colleague's
run) is data, never code. A file that would need unpickling of anything else is refused with one line.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from kit.data.meta import load_encoder
from kit.errors import KitError, WriteError
from kit.io import atomic_path, sha256_file

__all__ = ["FORMAT", "VERSION", "Checkpoint", "CheckpointWriteError", "ModelDescription", "TrainingState",
           "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

FORMAT = "kit-checkpoint"
VERSION = 2
"""Version 1 (kit 0.1) pickled numpy RNG states and had no format marker; it is refused with a clear message."""


@dataclass(frozen=True)
class ModelDescription:
    """Everything needed to rebuild the network of a checkpoint, without weights files or the config."""

    name: str
    num_outputs: int
    img_size: int | None
    drop_rate: float
    n_meta: int

    def build(self) -> nn.Module:
        from kit.models import build_model

        return build_model(self.name, self.num_outputs, None, self.img_size, self.drop_rate, self.n_meta)


@dataclass
class TrainingState:
    """What ``last.pt`` adds to resume a fold exactly: optimiser, schedule, scaler, EMA, RNGs, the fold's history."""

    optimizer: dict
    scheduler: dict | None
    scaler: dict | None
    ema: dict | None
    rng: dict
    history: list[dict]
    best_metric: float
    best_loss: float
    best_epoch: int
    stale: int
    handlers: dict = field(default_factory=dict)
    """The epoch-end handlers' states (:mod:`kit.epoch_handlers`), by handler name."""


@dataclass
class Checkpoint:
    model: ModelDescription
    competition: str
    task: str
    classes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    config: dict
    meta_encoder: dict | None
    fold: int
    epoch: int
    """Epochs trained when it was saved (1-based: 3 means after the third epoch)."""
    metric: float
    model_state: dict[str, torch.Tensor]
    training: TrainingState | None = None
    """Only in ``last.pt``."""
    extra: dict = field(default_factory=dict)
    scored: str | None = None
    """A model trained on a finer target (``classes``, multiclass) for a binary competition: the class whose
    probability is the competition's prediction. None: the outputs are the competition's own."""

    def build_model(self) -> nn.Module:
        """The network with this checkpoint's weights, on the CPU, in eval mode."""
        model = self.model.build()
        model.load_state_dict(self.model_state)
        return model.eval()

    def competition_probs(self, probs: np.ndarray) -> np.ndarray:
        """The competition's predictions from this model's probabilities (the scored class's column, if any)."""
        return probs if self.scored is None else probs[:, self.classes.index(self.scored)]

    @property
    def cache_images(self) -> bool:
        """Whether the run read its images from the pack (train.cache_images): predictions read them the same way."""
        return bool(self.config["train"]["cache_images"])

    def encoded_meta(self, table: pd.DataFrame) -> np.ndarray | None:
        """The metadata features of ``table``'s rows as this model takes them (its own saved encoder); None when
        the model takes none."""
        if self.model.n_meta == 0:
            return None
        if self.meta_encoder is None:
            raise KitError(f"fold {self.fold}: the model takes metadata but its checkpoint has no meta_encoder")
        meta = load_encoder(self.meta_encoder).transform(table)
        if meta.shape[1] != self.model.n_meta:
            raise KitError(f"fold {self.fold}: the metadata encoder gives {meta.shape[1]} features but the model "
                           f"takes {self.model.n_meta}")
        return meta


class CheckpointWriteError(WriteError):
    """A checkpoint could not be written (disk full, read-only folder, ...); the previous one is intact."""


def save_checkpoint(path: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically: a reader (or a resume after a kill) sees the old file or the new one.

    A failed write (a full disk, a read-only folder) raises one line naming the file and the cause.
    """
    payload = {"format": FORMAT, "version": VERSION, **dataclasses.asdict(_portable(ckpt))}
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except (OSError, RuntimeError, WriteError) as e:
        if isinstance(e, WriteError) and isinstance(e.__context__, OSError):
            e = e.__context__  # atomic_path's one line: the OSError under it says more (free space, the weights)
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {_write_failure(Path(path), e, ckpt)}; "
                                   "the previous checkpoint there is intact") from None
    return Path(path)


def _portable(ckpt: Checkpoint) -> Checkpoint:
    """The checkpoint with its config's paths reduced to names (``model.weights`` to the file's name, its SHA-256 in
    ``extra``; ``data.extra``'s folders to theirs): a checkpoint travels (Kaggle datasets) and must not carry the
    user's paths."""
    config, extra = dict(ckpt.config), dict(ckpt.extra)
    weights = (config.get("model") or {}).get("weights")
    if weights:
        config["model"] = {**config["model"], "weights": Path(weights).name}
        extra["weights_sha256"] = sha256_file(weights) if Path(weights).is_file() else None
    sources = (config.get("data") or {}).get("extra")
    if sources:
        config["data"] = {**config["data"], "extra": [{**e, "data": Path(e["data"]).name} for e in sources]}
    return dataclasses.replace(ckpt, config=config, extra=extra)


def _write_failure(path: Path, err: Exception, ckpt: Checkpoint) -> str:
    """Why a write failed, in words: torch's zip writer reports a full disk as "unexpected pos A vs B"."""
    free = _free_bytes(path.parent)
    need = sum(t.numel() * t.element_size() for t in ckpt.model_state.values() if isinstance(t, torch.Tensor))
    where = f"{_mb(free)} free in {path.parent}" if free is not None else f"{path.parent}"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror.lower()} ({where})"
    if free is not None and free < 2 * need:
        return f"no space left on device ({where}, the weights alone need {_mb(need)})"
    return (f"the write stopped short ({str(err).splitlines()[0][:120]}): the disk is full or a file size limit "
            f"was hit ({where})")


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a kit checkpoint without running any code from the file; anything else raises one KitError line."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path} is missing")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise KitError(f"{path}: {_unpickling_refusal(e)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise KitError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if isinstance(payload, dict) and "model_state" in payload and "config" in payload:
            raise KitError(f"{path}: a checkpoint of an earlier kit version (format 1); this kit reads format "
                           f"{VERSION}: retrain the fold")
        raise KitError(f"{path}: not a kit checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise KitError(f"{path}: kit checkpoint format {payload.get('version')}; this kit reads format {VERSION}")
    return _from_payload(path, payload)


def _unpickling_refusal(err: Exception) -> str:
    """Why torch's safe loader refused the file, in one line: the globals it would have had to import, if any."""
    named = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err))))
    if not named:  # not a pickle of anything: a truncated or foreign file
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", str(err))
        return f"not a readable checkpoint ({detail.group(1).strip() if detail else 'not a torch.save file'})"
    listed = ", ".join(named[:4])
    if all(g.startswith("numpy") for g in named):
        return (f"refused: it holds pickled Python objects ({listed}), as the last.pt of kit 0.1 did; kit reads only "
                "plain checkpoints (format 2): retrain the fold")
    return f"refused: it needs unpickling of arbitrary Python objects ({listed}), which could run code; not loaded"


def _from_payload(path: Path, payload: dict) -> Checkpoint:
    try:
        training = payload.get("training")
        return Checkpoint(
            model=ModelDescription(**payload["model"]), competition=payload["competition"], task=payload["task"],
            classes=list(payload["classes"]), input_size=int(payload["input_size"]), mean=list(payload["mean"]),
            std=list(payload["std"]), config=payload["config"], meta_encoder=payload["meta_encoder"],
            fold=int(payload["fold"]), epoch=int(payload["epoch"]), metric=float(payload["metric"]),
            model_state=payload["model_state"], training=TrainingState(**training) if training else None,
            extra=payload.get("extra") or {}, scored=payload.get("scored"))
    except (KeyError, TypeError) as e:
        raise KitError(f"{path}: a damaged kit checkpoint ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------------ RNG states
def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors and plain lists (no pickled objects)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
