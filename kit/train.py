"""The fold loop: train on k-1 folds, validate on the held-out one, keep the best checkpoint and its OOF predictions.

Per epoch, in this order: (maybe unfreeze) -> train_one_epoch -> validate -> scheduler step -> log -> checkpoint
(best.pt on improvement, last.pt always) -> callback (Optuna pruning) -> early stopping. Everything a fold needs to
continue is in ``last.pt``, and every source of randomness of an epoch is derived from (seed, fold, epoch), so a run
killed at any point resumes to the same predictions as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from kit.competitions import Competition, get_competition
from kit.config import Config, save_config
from kit.data.dataset import ImageDataset, load_image_cache
from kit.data.folds import make_folds, read_folds, write_folds
from kit.data.labels import load_train_table
from kit.data.meta import MetaEncoder
from kit.data.readers import check_images_exist, open_store
from kit.errors import ConfigError, KitError
from kit.io import atomic_path, write_csv_atomic, write_text_atomic
from kit.losses import build_loss
from kit.metrics import get_metric
from kit.models import build_model, data_config, frozen_modules, set_backbone_trainable
from kit.transforms import build_eval_transform, build_train_transform, normalize

EpochCallback = Callable[[int, int, float], None]
"""on_epoch(fold, epoch, val_metric): called after each epoch's checkpoint; may raise (e.g. optuna.TrialPruned)."""


class TrainingError(KitError):
    """Training cannot go on (NaN loss, ...); the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------------------------
# Runtime: device, precision, normalisation


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

    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = batch["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = normalize(x, self.mean, self.std)
        meta = batch["meta"].to(self.device, non_blocking=True) if self.use_meta else None
        return x, meta

    def forward(self, model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = model(x, meta) if self.use_meta else model(x)
        logits = logits.float()
        return logits.squeeze(1) if self.binary else logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.binary else torch.softmax(logits, dim=1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here")
    return torch.device(name)


def resolve_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed)."""
    if device.type != "cuda" or mode == "off":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            raise ConfigError(f"train.amp={mode} needs a CUDA device; this run is on {device}")
        return None, False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode not in ("bf16", "fp16"):
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or off, got '{mode}'")
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


# ---------------------------------------------------------------------------------------------------------------
# One epoch of training, one pass of validation


@dataclass
class EpochStats:
    loss: float
    images_per_s: float


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                    rt: Runtime, scheduler=None, ema=None, grad_clip: float = 0.0, epoch: int = 0,
                    progress: bool = False) -> EpochStats:
    model.train()
    for m in frozen_modules(model):  # frozen backbone: BatchNorm keeps the statistics it was loaded with
        m.eval()
    loss_sum = torch.zeros((), device=rt.device)  # summed on-device: .item() each step would sync a GPU
    n_seen, steps_per_epoch = 0, len(loader)
    start = time.perf_counter()
    bar = _progress(loader, epoch, progress)
    for step, batch in enumerate(bar):
        x, meta = rt.inputs(batch)
        y = batch["target"].to(rt.device, non_blocking=True)
        logits = rt.forward(model, x, meta)
        loss = loss_fn(logits, y.float() if rt.binary else y)
        optimizer.zero_grad(set_to_none=True)
        if rt.scaler is not None:
            rt.scaler.scale(loss).backward()
            if grad_clip:
                rt.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            rt.scaler.step(optimizer)
            rt.scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if ema is not None:
            ema.update(model)
        if scheduler is not None:
            scheduler.step_update(epoch * steps_per_epoch + step + 1)  # per-step warmup / cosine
        loss_sum += loss.detach() * len(y)
        n_seen += len(y)
        if progress and step % 10 == 0:  # the only per-step sync, and only with a progress bar
            bar.set_postfix(loss=f"{loss_sum.item() / n_seen:.4f}",
                            img_s=f"{n_seen / (time.perf_counter() - start):.0f}")
    elapsed = time.perf_counter() - start
    return EpochStats(loss=loss_sum.item() / max(n_seen, 1), images_per_s=n_seen / max(elapsed, 1e-9))


@torch.inference_mode()
def predict_loader(model: nn.Module, loader: DataLoader, rt: Runtime) -> np.ndarray:
    """Probabilities for every item of ``loader`` (N for binary, N x C for multiclass), in loader order."""
    model.eval()
    out = []
    for batch in loader:
        x, meta = rt.inputs(batch)
        out.append(rt.probabilities(rt.forward(model, x, meta)).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def validate(model: nn.Module, loader: DataLoader, rt: Runtime, targets: np.ndarray,
             metric: Callable[[np.ndarray, np.ndarray], float]) -> tuple[float, np.ndarray]:
    probs = predict_loader(model, loader, rt)
    bad = int((~np.isfinite(probs)).sum())
    if bad:  # diverged weights can give a finite epoch loss but NaN outputs; the metric would fail obscurely
        raise TrainingError(f"{bad} of {probs.size} validation predictions are not finite: the weights diverged; "
                            f"lower train.lr or set train.grad_clip")
    return metric(targets, probs), probs


def log_loss(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy of predicted probabilities (binary: probability of class 1), clipped like sklearn's."""
    eps = 1e-7
    if probs.ndim == 1:
        p = np.clip(probs, eps, 1 - eps)
        return float(-np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p)))
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(targets)), targets], eps, 1.0))))


def _progress(loader, epoch: int, enabled: bool):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------------------------
# Helpers: seeds, loaders, optimizer, scheduler, checkpoints


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    return (seed * 1_000_003 + fold * 10_007 + epoch) % 2**31


def _worker_init(worker_id: int) -> None:
    # each worker's augmentation stream differs and is fixed by the loader's seed for this epoch
    info = torch.utils.data.get_worker_info()
    transform = info.dataset.transform
    if hasattr(transform, "set_seed"):
        transform.set_seed(torch.initial_seed() % 2**31)


def make_loader(dataset: ImageDataset, batch_size: int, workers: int, device: torch.device, train: bool,
                seed: int = 0, sample_weights: np.ndarray | None = None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if train and sample_weights is not None:
        sampler = WeightedRandomSampler(torch.as_tensor(sample_weights, dtype=torch.double), len(dataset),
                                        replacement=True, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda", drop_last=train and len(dataset) > batch_size,
                      generator=generator, worker_init_fn=_worker_init if workers else None,
                      persistent_workers=False)


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """timm's optimizer factory with two groups: the head at train.lr, the backbone at lr * backbone_lr_scale when
    fine-tuning pretrained weights (model.freeze_epochs > 0), else the same lr for all."""
    from timm.optim import create_optimizer_v2

    from kit.models import head_parameters

    t = cfg.train
    if cfg.model.freeze_epochs > 0:
        head = head_parameters(model)
        groups = [{"params": [p for p in model.parameters() if id(p) in head], "lr": t.lr},
                  {"params": [p for p in model.parameters() if id(p) not in head],
                   "lr": t.lr * cfg.model.backbone_lr_scale}]
        return create_optimizer_v2(groups, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay)
    return create_optimizer_v2(model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    from timm.scheduler import create_scheduler_v2

    t = cfg.train
    if t.scheduler == "none":
        return None
    if t.scheduler not in ("cosine", "plateau", "step"):
        raise ConfigError(f"unknown train.scheduler '{t.scheduler}'; known: cosine, plateau, step, none")
    per_step = t.scheduler == "cosine"
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=t.scheduler, num_epochs=t.epochs, warmup_epochs=t.warmup_epochs, min_lr=t.min_lr,
        warmup_lr=t.lr * 0.01, decay_epochs=max(t.epochs // 3, 1), plateau_mode="max",
        patience_epochs=2, step_on_epochs=not per_step, updates_per_epoch=steps_per_epoch)
    return scheduler


def save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict:
    try:
        # our own files; weights_only=False because they hold numpy RNG states and config dicts
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as e:
        raise KitError(f"{path}: cannot read checkpoint ({e})") from e


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------------------
# Preparing a run: data, folds, model description


@dataclass
class RunData:
    spec: Competition
    table: pd.DataFrame
    fold: np.ndarray
    images: np.ndarray | None
    store: object
    meta: np.ndarray | None
    meta_encoder: MetaEncoder | None
    input_size: int
    native_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


def model_description(cfg: Config, spec: Competition, n_meta: int) -> dict:
    """Everything needed to rebuild the model from a checkpoint alone."""
    return {"name": cfg.model.name, "num_outputs": spec.num_outputs, "img_size": cfg.model.img_size,
            "drop_rate": cfg.model.drop_rate, "n_meta": n_meta}


def model_from_description(desc: dict) -> nn.Module:
    return build_model(desc["name"], desc["num_outputs"], None, desc["img_size"], desc["drop_rate"], desc["n_meta"])


def prepare_data(cfg: Config, data_dir: Path, run_dir: Path, folds_file: Path | None = None,
                 exclude: list[str] | None = None) -> RunData:
    spec = get_competition(cfg.competition)
    table = load_train_table(spec, data_dir)
    if exclude:
        table = table[~table["id"].isin(set(exclude))].reset_index(drop=True)
    store = open_store(spec, data_dir, "train")
    check_images_exist(store, list(table["id"]))

    run_folds = run_dir / "folds.csv"
    if folds_file is not None:
        fold = read_folds(folds_file, table["id"], spec.id_col)
        write_folds(run_folds, table["id"], fold, spec.id_col)
    elif run_folds.is_file():
        fold = read_folds(run_folds, table["id"], spec.id_col)
    else:
        groups = table["group"].to_numpy() if spec.group_col else None
        fold = make_folds(table["target"].to_numpy(), groups, cfg.n_folds, cfg.fold_seed,
                          None if spec.is_binary else list(spec.classes))
        write_folds(run_folds, table["id"], fold, spec.id_col)
    n_folds_found = int(fold.max()) + 1
    if n_folds_found != cfg.n_folds:
        raise ConfigError(f"the folds file has {n_folds_found} folds but n_folds is {cfg.n_folds}; "
                          f"pass --set n_folds={n_folds_found}")

    probe = build_model(cfg.model.name, spec.num_outputs, None, cfg.model.img_size, 0.0)
    dcfg = data_config(probe, cfg.model.img_size)
    del probe
    size = dcfg["input_size"][-1]
    images = None
    if cfg.train.cache_images:
        images = load_image_cache(store, list(table["id"]), size)
    meta_encoder = meta = None
    if cfg.model.use_metadata:
        if not spec.has_metadata:
            raise ConfigError(f"model.use_metadata is on but {spec.name} has no metadata")
        meta_encoder = MetaEncoder.fit(table)
        meta = meta_encoder.transform(table)
    return RunData(spec, table, fold, images, store, meta, meta_encoder, size,
                   size if images is not None else None, dcfg["mean"], dcfg["std"])


def _oof_frame(spec: Competition, ids, fold: int, targets: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({spec.id_col: ids, "fold": fold, "target": targets})
    if spec.is_binary:
        df["pred"] = probs
    else:
        for j, c in enumerate(spec.classes):
            df[c] = probs[:, j]
    return df


def oof_predictions(spec: Competition, oof: pd.DataFrame) -> np.ndarray:
    return oof["pred"].to_numpy() if spec.is_binary else oof[list(spec.classes)].to_numpy()


# ---------------------------------------------------------------------------------------------------------------
# One fold


@dataclass
class FoldResult:
    fold: int
    best_metric: float
    best_epoch: int
    epochs_run: int


def train_fold(cfg: Config, data: RunData, k: int, fold_dir: Path, on_epoch: EpochCallback | None = None,
               progress: bool = False) -> FoldResult:
    spec, t = data.spec, cfg.train
    metric = get_metric(spec.metric)
    device = resolve_device(t.device)
    amp_dtype, needs_scaler = resolve_amp(t.amp, device)
    channels_last = t.channels_last == "on" or (t.channels_last == "auto" and device.type == "cuda")
    workers = t.num_workers if t.num_workers >= 0 else (0 if device.type == "cpu" else min(8, os.cpu_count() or 1))

    train_idx, val_idx = np.flatnonzero(data.fold != k), np.flatnonzero(data.fold == k)
    targets = data.table["target"].to_numpy()
    if len(np.unique(targets[val_idx])) < 2:
        raise ConfigError(f"fold {k} has a single class in its validation part; use fewer folds or more data")

    def subset(idx, transform):
        return ImageDataset(data.table["id"].to_numpy()[idx], transform, store=None if data.images is not None
                            else data.store, images=None if data.images is None else data.images[idx],
                            targets=targets[idx], meta=None if data.meta is None else data.meta[idx])

    train_tf = build_train_transform(cfg.aug.preset, data.input_size, cfg.aug.strength, data.native_size)
    train_ds = subset(train_idx, train_tf)
    val_ds = subset(val_idx, build_eval_transform(data.input_size, data.native_size))
    train_tf.save(fold_dir.parent / "augmentation.yaml")

    seed_everything(t.seed + k)  # the same initial weights for a fold, whatever ran before it
    n_meta = 0 if data.meta is None else data.meta.shape[1]
    model = build_model(cfg.model.name, spec.num_outputs, cfg.model.weights, cfg.model.img_size,
                        cfg.model.drop_rate, n_meta).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_classes = 2 if spec.is_binary else len(spec.classes)
    loss_fn = build_loss(t.loss, n_classes, targets[train_idx], t.class_weights, t.focal_gamma,
                         t.label_smoothing).to(device)
    sample_weights = None
    if t.balanced_sampler:
        counts = np.bincount(targets[train_idx], minlength=n_classes)
        sample_weights = 1.0 / counts[targets[train_idx]]
    val_loader = make_loader(val_ds, t.batch_size * 2, workers, device, train=False)
    steps_per_epoch = len(make_loader(train_ds, t.batch_size, 0, device, train=True))
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
    ema = None
    if t.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=t.ema_decay)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    rt = Runtime(device, amp_dtype, scaler, channels_last, mean, std, spec.is_binary, n_meta > 0)

    description = {"model": model_description(cfg, spec, n_meta), "competition": spec.name,
                   "classes": list(spec.classes), "task": spec.task, "input_size": data.input_size,
                   "mean": list(data.mean), "std": list(data.std), "config": cfg.to_dict(), "fold": k,
                   "meta_encoder": data.meta_encoder.to_dict() if data.meta_encoder else None}
    history: list[dict] = []
    best_metric, best_loss, best_epoch, start_epoch, stale = -math.inf, math.inf, -1, 0, 0
    last_path, best_path = fold_dir / "last.pt", fold_dir / "best.pt"
    if last_path.is_file():  # resume: every piece of state, then carry on with the next epoch
        ckpt = load_checkpoint(last_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
        _set_rng_state(ckpt["rng"])
        history, best_metric, best_epoch = ckpt["history"], ckpt["best_metric"], ckpt["best_epoch"]
        best_loss = ckpt["best_loss"]
        start_epoch, stale = ckpt["epoch"] + 1, ckpt["stale"]
        print(f"fold {k}: resuming after epoch {start_epoch} (best {spec.metric} {best_metric:.4f})")

    frozen = cfg.model.freeze_epochs > 0
    for epoch in range(start_epoch, t.epochs):
        if frozen:  # feature extraction for the first freeze_epochs, then fine-tuning
            set_backbone_trainable(model, epoch >= cfg.model.freeze_epochs, cfg.model.unfreeze_blocks)
        seed = epoch_seed(t.seed, k, epoch)
        train_tf.set_seed(seed)
        train_loader = make_loader(train_ds, t.batch_size, workers, device, True, seed, sample_weights)
        stats = train_one_epoch(model, train_loader, optimizer, loss_fn, rt, scheduler, ema, t.grad_clip, epoch,
                                progress)
        if not math.isfinite(stats.loss):
            raise TrainingError(f"fold {k} epoch {epoch + 1}: the loss became {stats.loss}; lower train.lr or "
                                f"set train.grad_clip. Last good checkpoint kept: {last_path}")
        eval_model = ema.module if ema is not None else model
        val_metric, val_probs = validate(eval_model, val_loader, rt, targets[val_idx], metric)
        val_loss = log_loss(targets[val_idx], val_probs)
        if scheduler is not None:
            scheduler.step(epoch + 1, val_metric)
        lr = optimizer.param_groups[0]["lr"]
        history.append({"epoch": epoch + 1, "train_loss": stats.loss, "val_loss": val_loss, spec.metric: val_metric,
                        "lr": lr, "images_per_s": stats.images_per_s})
        print(f"fold {k} epoch {epoch + 1}/{t.epochs}: loss {stats.loss:.4f}  val_loss {val_loss:.4f}  "
              f"{spec.metric} {val_metric:.4f}  lr {lr:.2e}  {stats.images_per_s:.0f} img/s", flush=True)
        # A tie on the metric (AUC saturates at 1.0 on easy folds) goes to the lower validation loss: the
        # better-calibrated epoch, whose predictions pool better with the other folds' into the OOF score.
        improved = val_metric > best_metric or (val_metric == best_metric and val_loss < best_loss)
        if improved:
            best_metric, best_loss, best_epoch, stale = val_metric, val_loss, epoch + 1, 0
            save_checkpoint(best_path, {**description, "model_state": eval_model.state_dict(),
                                        "epoch": epoch + 1, "metric": val_metric})
            write_csv_atomic(_oof_frame(spec, data.table["id"].to_numpy()[val_idx], k, targets[val_idx],
                                        val_probs), fold_dir / "oof.csv")
        else:
            stale += 1
        write_csv_atomic(pd.DataFrame(history), fold_dir / "history.csv")
        save_checkpoint(last_path, {
            **description, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": ema.module.state_dict() if ema is not None else None, "rng": _rng_state(), "epoch": epoch,
            "history": history, "best_metric": best_metric, "best_loss": best_loss, "best_epoch": best_epoch,
            "stale": stale})
        if on_epoch is not None:
            on_epoch(k, epoch, val_metric)
        if t.early_stopping and stale >= t.early_stopping:
            print(f"fold {k}: early stop after epoch {epoch + 1} ({t.early_stopping} epochs without improvement)")
            break
    result = FoldResult(k, best_metric, best_epoch, len(history))
    write_text_atomic(fold_dir / "result.json", json.dumps(result.__dict__, indent=2))
    return result


# ---------------------------------------------------------------------------------------------------------------
# All folds


@dataclass
class RunResult:
    run_dir: Path
    fold_scores: dict[int, float]
    cv_score: float
    mean_fold_score: float
    metric: str


def score_oof(spec: Competition, oof: pd.DataFrame) -> tuple[dict[int, float], float]:
    """Per-fold and pooled scores computed from saved OOF predictions with the competition's metric."""
    metric = get_metric(spec.metric)
    per_fold = {int(k): metric(g["target"].to_numpy(), oof_predictions(spec, g)) for k, g in oof.groupby("fold")}
    return per_fold, metric(oof["target"].to_numpy(), oof_predictions(spec, oof))


def collect_oof(spec: Competition, run_dir: Path, folds: list[int]) -> pd.DataFrame:
    frames = []
    for k in folds:
        path = run_dir / f"fold{k}" / "oof.csv"
        if not path.is_file():
            raise KitError(f"{path} is missing: fold {k} has not finished")
        frames.append(pd.read_csv(path, dtype={spec.id_col: str}))
    return pd.concat(frames, ignore_index=True)


def train_folds(cfg: Config, data_dir: str | Path, run_dir: str | Path, folds: list[int] | None = None,
                folds_file: str | Path | None = None, on_epoch: EpochCallback | None = None,
                progress: bool = False, exclude: list[str] | None = None) -> RunResult:
    """Train the chosen folds (all by default) into ``run_dir``; folds already finished there are skipped."""
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    folds = list(range(cfg.n_folds)) if folds is None else list(folds)
    bad = [k for k in folds if not 0 <= k < cfg.n_folds]
    if bad:
        raise ConfigError(f"--folds {bad} out of range for {cfg.n_folds} folds")
    data = prepare_data(cfg, data_dir, run_dir, Path(folds_file) if folds_file else None, exclude)
    # written once the data checks passed, so a run that failed on bad input can simply be started again
    save_config(cfg, run_dir / "config.yaml")
    write_text_atomic(run_dir / "run.json", json.dumps({"data": str(data_dir.resolve()), "folds": folds}, indent=2))
    spec = data.spec
    for k in folds:
        fold_dir = run_dir / f"fold{k}"
        if (fold_dir / "result.json").is_file():
            print(f"fold {k}: already finished, skipped")
            continue
        fold_dir.mkdir(parents=True, exist_ok=True)
        train_fold(cfg, data, k, fold_dir, on_epoch, progress)
    oof = collect_oof(spec, run_dir, folds)
    write_csv_atomic(oof, run_dir / "oof.csv")
    per_fold, pooled = score_oof(spec, oof)
    result = RunResult(run_dir, per_fold, pooled, float(np.mean(list(per_fold.values()))), spec.metric)
    write_text_atomic(run_dir / "scores.json", json.dumps(
        {"metric": spec.metric, "cv": pooled, "mean_of_folds": result.mean_fold_score,
         "folds": {str(k): v for k, v in per_fold.items()}}, indent=2))
    return result


def resume_config(run_dir: Path) -> tuple[Config, Path, list[int]]:
    """The saved config, data folder and fold list of an existing run folder."""
    from kit.config import load_saved_config

    cfg_path, run_json = run_dir / "config.yaml", run_dir / "run.json"
    if not cfg_path.is_file() or not run_json.is_file():
        raise KitError(f"{run_dir} is not a kit run folder (no config.yaml / run.json)")
    info = json.loads(run_json.read_text())
    return load_saved_config(cfg_path), Path(info["data"]), list(info["folds"])


def with_overrides(cfg: Config, **sections) -> Config:
    """A copy of ``cfg`` with some fields of its sections replaced: ``with_overrides(cfg, train={"epochs": 2})``."""
    changes = {name: replace(getattr(cfg, name), **values) for name, values in sections.items()}
    return replace(cfg, **changes)
