"""The fold loop: train on k-1 folds, validate on the held-out one, keep the best checkpoint and its OOF predictions.

Per epoch: (maybe unfreeze) -> train_one_epoch -> validate -> scheduler step -> the epoch-end handlers of
:mod:`kit.epoch_handlers` (best.pt on improvement, history and log line, last.pt, the caller's callback such as Optuna
pruning, early stopping; a new per-epoch concern is a new handler). Everything a fold needs to
continue is in ``last.pt``, and every source of randomness of an epoch is derived from (seed, fold, epoch), so a run
killed at any point resumes to the same predictions as an uninterrupted one.

Files are read and written through :class:`kit.rundir.RunDir` (the layout) and :mod:`kit.checkpoint` (the
checkpoint); the device, precision and loaders come from :mod:`kit.runtime`, the OOF frames and scores from
:mod:`kit.oof`.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from kit.averaging import averaging_handler
from kit.checkpoint import (
    Checkpoint,
    ModelDescription,
    TrainingState,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from kit.competitions import Competition, get_competition
from kit.config import Config
from kit.data.dataset import ImageDataset, JoinedImages, StoreImages
from kit.data.extra import ExtraSource, load_extra_sources
from kit.data.folds import make_folds, read_folds, write_folds
from kit.data.labels import load_train_table
from kit.data.meta import MetaEncoder
from kit.data.pack import split_pack
from kit.data.readers import check_images_exist, open_store
from kit.data.sampling import subsample_negatives
from kit.data.targets import TargetSpace, run_targets, target_space
from kit.distributed import EpochSampler, current_group
from kit.epoch_handlers import (
    BestCheckpoint,
    EarlyStopping,
    EpochCallback,
    EpochCallbackHandler,
    EpochEnd,
    EpochHandler,
    History,
    LastCheckpoint,
)
from kit.errors import ConfigError, KitError
from kit.gpu_augment import build_batch_augment, on_device
from kit.losses import build_loss
from kit.metrics import get_metric
from kit.mixing import BatchMix
from kit.models import build_model, data_config, frozen_modules, set_backbone_trainable
from kit.oof import log_loss, prediction_frame, score_oof
from kit.progress import Eta, Progress
from kit.pseudo import PseudoSource, describe_pseudo, load_pseudo_sources, soft_targets
from kit.records import FoldResult, RunInfo, Scores
from kit.rundir import RunDir
from kit.runtime import (
    Runtime,
    compile_model,
    default_workers,
    make_loader,
    predict_loader,
    resolve_amp,
    resolve_device,
)
from kit.trackers import tracker_handlers
from kit.transforms import build_eval_transform, build_train_transform
from kit.warm_start import InitRun, open_init_run
from kit.weights import WeightsSource, resolve_weights
from kit.words import plural

log = logging.getLogger(__name__)

__all__ = ["EpochCallback", "FoldResult", "FoldRunner", "RunData", "RunResult", "TrainingError", "prepare_data",
           "resume_config", "train_fold", "train_folds", "train_one_epoch", "train_sequentially"]



class TrainingError(KitError):
    """Training cannot go on (NaN loss, ...); the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------------------------
# One epoch of training, one pass of validation


@dataclass
class EpochStats:
    loss: float
    images_per_s: float
    images: int = 0
    """The epoch's training rows (with data.extra: the fold's own and every extra one; subsampled: those drawn)."""
    pseudo_images: int = 0
    """Of those, the pseudo-labelled test images (data.pseudo)."""


def _backward(loss: torch.Tensor, rt: Runtime) -> None:
    """Add the loss's gradients to those already accumulated (scaled under fp16 autocast)."""
    if rt.scaler is not None:
        rt.scaler.scale(loss).backward()
    else:
        loss.backward()


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime, grad_clip: float) -> None:
    """One optimizer step on the gradients accumulated since the group's first batch cleared them."""
    if rt.scaler is not None:
        if grad_clip:
            rt.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        rt.scaler.step(optimizer)
        rt.scaler.update()
    else:
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()


def optimizer_steps(batches: int, accum_steps: int) -> int:
    """Optimizer steps of an epoch of ``batches``: one per ``accum_steps`` batches, the last group maybe shorter."""
    return -(-batches // accum_steps)


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                    rt: Runtime, scheduler=None, ema=None, grad_clip: float = 0.0, epoch: int = 0,
                    progress: Progress | None = None, accum_steps: int = 1, mix: BatchMix | None = None) -> EpochStats:
    """One epoch; the optimizer steps once per ``accum_steps`` batches, and the schedule, the EMA and ``progress``
    count those steps. ``mix``: mixup / CutMix of every batch (images, metadata and targets)."""
    model.train()
    for m in frozen_modules(model):  # frozen backbone: BatchNorm keeps the statistics it was loaded with
        m.eval()
    loss_sum = torch.zeros((), device=rt.device)  # summed on-device: .item() each step would sync a GPU
    n_seen, batches = 0, len(loader)
    steps_per_epoch = optimizer_steps(batches, accum_steps)
    start = time.perf_counter()
    if progress is not None:  # the loss is read (a GPU sync) only when a bar refresh or a line shows it
        progress.postfix_fn = lambda: f"loss {loss_sum.item() / max(n_seen, 1):.4f}"
    for i, batch in enumerate(loader):
        if i % accum_steps == 0:  # a group's first batch
            optimizer.zero_grad(set_to_none=True)
        x, meta = rt.inputs(batch)
        # soft targets (data.pseudo): probabilities for every row; BCE and CE take them as they are
        y = batch["soft" if "soft" in batch else "target"].to(rt.device, non_blocking=True)
        y = y.float() if rt.binary else y
        if mix is not None:
            x, meta, y = mix(x, meta, y)
        loss = loss_fn(rt.forward(model, x, meta), y)
        # the batches of a group are equal (the sampler drops an incomplete one): the mean of their mean losses is
        # the loss of the group as one batch, so the step is the one a batch accum_steps times larger would take
        group_start = i - i % accum_steps
        _backward(loss / min(accum_steps, batches - group_start), rt)
        loss_sum += loss.detach() * len(y)
        n_seen += len(y)
        if (i + 1) % accum_steps and i + 1 < batches:
            continue  # the group goes on: gradients add up
        _step(model, optimizer, rt, grad_clip)
        global_step = epoch * steps_per_epoch + i // accum_steps + 1
        if ema is not None:  # the step drives the EMA's warm-up: early on it follows the model closely
            ema.update(model, step=global_step)
        if scheduler is not None:
            scheduler.step_update(global_step)  # per-step warmup / cosine
        if progress is not None:
            progress.update(1)
    elapsed = time.perf_counter() - start
    return EpochStats(loss=loss_sum.item() / max(n_seen, 1), images_per_s=n_seen / max(elapsed, 1e-9))


def validate(model: nn.Module, loader: DataLoader, rt: Runtime, targets: np.ndarray,
             metric: Callable[[np.ndarray, np.ndarray], float],
             progress: Progress | None = None,
             gather: Callable[[np.ndarray], np.ndarray] | None = None,
             scored: int | None = None) -> tuple[float, np.ndarray]:
    """The metric and probabilities of ``loader``; ``gather`` joins the parts of several processes first; a model
    trained on a finer target is scored on its column ``scored`` (the competition's class)."""
    probs = predict_loader(model, loader, rt, progress)
    if gather is not None:
        probs = gather(probs)
    bad = int((~np.isfinite(probs)).sum())
    if bad:  # diverged weights can give a finite epoch loss but NaN outputs; the metric would fail obscurely
        raise TrainingError(f"{bad} of {probs.size} validation predictions are not finite: the weights diverged; "
                            f"lower train.lr or set train.grad_clip")
    if scored is not None:
        probs = probs[:, scored]
    return metric(targets, probs), probs


# ---------------------------------------------------------------------------------------------------------------
# Seeds, optimizer, scheduler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    return (seed * 1_000_003 + fold * 10_007 + epoch) % 2**31


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
    if t.scheduler == "none":  # the config allows cosine, plateau, step and none alone
        return None
    per_step = t.scheduler == "cosine"
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=t.scheduler, num_epochs=t.epochs, warmup_epochs=t.warmup_epochs, min_lr=t.min_lr,
        warmup_lr=t.lr * 0.01, decay_epochs=max(t.epochs // 3, 1), plateau_mode="max",
        patience_epochs=2, step_on_epochs=not per_step, updates_per_epoch=steps_per_epoch)
    return scheduler


# ---------------------------------------------------------------------------------------------------------------
# Preparing a run: data, folds, model description


@dataclass
class RunData:
    spec: Competition
    table: pd.DataFrame
    """The competition's own rows: folds, validation, OOF and CV are over these alone."""
    fold: np.ndarray
    dataset: ImageDataset
    """The rows of ``table``, then those of the extra sources (no transform yet): folds and epochs are index views of
    it (``ImageDataset.subset``)."""
    meta_encoder: MetaEncoder | None
    input_size: int
    native_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model: ModelDescription
    space: TargetSpace
    """What the model outputs: the competition's target, or a finer one of which it scores one class."""
    train_targets: np.ndarray
    """The training target in ``space`` of every row of ``dataset``."""
    fold_source: Path | None = None
    """The folds file the folds came from (None: made here); copied into the run as folds.csv."""
    weights: WeightsSource | None = None
    """Where the initial weights came from (recorded in config.yaml as a name and sha256, not a path)."""
    extra: list[ExtraSource] = field(default_factory=list)
    """``data.extra``, then ``data.pseudo`` (one source per fold): sources whose rows (``dataset`` rows len(table)
    on) join the training part of every fold (a pseudo source: of its own fold) only."""
    init: InitRun | None = None
    """``model.init_from``: the earlier run whose fold checkpoints start the folds (its folds checked)."""

    def training_only_rows(self, k: int, pseudo_only: bool = False) -> np.ndarray:
        """The ``dataset`` rows that train fold ``k`` and validate none: every ``data.extra`` row and fold ``k``'s
        pseudo-labelled test images (``pseudo_only``: those alone)."""
        rows, start = [np.empty(0, dtype=np.int64)], len(self.table)
        for source in self.extra:
            if source.trains_fold(k) and (isinstance(source, PseudoSource) or not pseudo_only):
                rows.append(np.arange(start, start + len(source.table)))
            start += len(source.table)
        return np.concatenate(rows)


def _assign_folds(cfg: Config, spec: Competition, table: pd.DataFrame, run: RunDir,
                  folds_file: Path | None) -> tuple[np.ndarray, Path | None]:
    """Fold per row: from --folds-file, else the run's own folds.csv (a resume), else made from the config."""
    source = folds_file if folds_file is not None else (run.folds_path if run.folds_path.is_file() else None)
    if source is not None:
        fold = read_folds(source, table["id"], spec.id_col)
    else:
        groups = table["group"].to_numpy() if spec.group_col else None
        fold = make_folds(table["target"].to_numpy(), groups, cfg.n_folds, cfg.fold_seed,
                          None if spec.is_binary else list(spec.classes))
    n_folds_found = int(fold.max()) + 1
    if n_folds_found != cfg.n_folds:
        raise ConfigError(f"the folds file has {n_folds_found} folds but n_folds is {cfg.n_folds}; "
                          f"pass --set n_folds={n_folds_found}")
    return fold, source


def prepare_data(cfg: Config, data_dir: Path, run: RunDir, folds_file: Path | None = None,
                 exclude: list[str] | None = None) -> RunData:
    """Labels, folds, metadata and (cached) images of a run, and its model built once: nothing is written here."""
    spec = get_competition(cfg.competition)
    space = target_space(spec, cfg.train.target)
    # every feature column of the metadata only where the metadata branch takes them: they are ~40 on ISIC 2024
    table = load_train_table(spec, data_dir, features=cfg.model.use_metadata)
    all_ids = table["id"].tolist()  # the pack covers the whole split, whatever this run leaves out
    if exclude:
        table = table[~table["id"].isin(set(exclude))].reset_index(drop=True)
    store = open_store(spec, data_dir, "train")
    check_images_exist(store, list(table["id"]))
    targets = run_targets(space, spec, table, data_dir / spec.labels_file)
    extra = load_extra_sources(cfg.data.extra, space, spec)
    fold, fold_source = _assign_folds(cfg, spec, table, run, folds_file)
    meta_encoder = _meta_encoder(cfg, spec, table)
    n_meta = 0 if meta_encoder is None else meta_encoder.size
    init = open_init_run(cfg.model.init_from, spec, table["id"], fold) if cfg.model.init_from else None
    weights = _initial_weights(cfg, init, resuming=run.config_path.is_file())
    # built once with its weights file before anything is written: a bad name, size or file fails here
    weights_file, pretrained = _weights_args(cfg, init)
    probe = build_model(cfg.model.name, space.num_outputs, weights_file, cfg.model.img_size, cfg.model.drop_rate,
                        n_meta, pretrained)
    dcfg = data_config(probe, cfg.model.img_size)
    del probe
    size = dcfg["input_size"][-1]
    extra = [*extra, *load_pseudo_sources(cfg, spec, data_dir, table["id"], fold, size)]
    # the competition's own rows fit the encoder: extra rows are encoded with its fit
    meta = None if meta_encoder is None else np.concatenate([meta_encoder.transform(t)
                                                             for t in [table, *(e.table for e in extra)]])
    all_targets = np.concatenate([targets, *(e.targets for e in extra)])
    dataset = _run_dataset(cfg, spec, data_dir, table, all_ids, store, size, meta, all_targets, extra)
    dataset.soft = soft_targets(spec, all_targets, extra)
    description = ModelDescription(cfg.model.name, space.num_outputs, cfg.model.img_size, cfg.model.drop_rate, n_meta)
    return RunData(spec, table, fold, dataset, meta_encoder, size, size if cfg.train.cache_images else None,
                   dcfg["mean"], dcfg["std"], description, space, all_targets, fold_source, weights, extra, init)


def _meta_encoder(cfg: Config, spec: Competition, table: pd.DataFrame) -> MetaEncoder | None:
    """The metadata branch's encoder fitted on the run's own rows (None without the branch)."""
    if not cfg.model.use_metadata:
        return None
    if not spec.has_metadata:
        raise ConfigError(f"model.use_metadata is on but {spec.name} has no metadata")
    encoder = MetaEncoder.fit(table)
    log.info(f"metadata branch: {encoder.size} features from {len(encoder.columns)} columns")
    return encoder


def _weights_args(cfg: Config, init: InitRun | None) -> tuple[str | None, bool | str]:
    """(model.weights, model.pretrained) to build with: none of them under a warm start, which loads its own."""
    return (None, False) if init is not None else (cfg.model.weights, cfg.model.pretrained)


def _initial_weights(cfg: Config, init: InitRun | None, resuming: bool) -> WeightsSource | None:
    """Where the initial weights come from, said in one line; None under a warm start (``model.init_from``)."""
    if init is not None:
        ignored = [k for k, v in (("model.pretrained", cfg.model.pretrained), ("model.weights", cfg.model.weights))
                   if v]
        log.info(f"model {cfg.model.name}: {init.describe()}" + (f"; {' and '.join(ignored)} not used" if ignored
                 else ""))
        return None
    weights = resolve_weights(cfg.model.name, cfg.model.pretrained, cfg.model.weights)
    log.info(_weights_line(cfg, weights, resuming))
    return weights


def _weights_line(cfg: Config, weights: WeightsSource, resuming: bool) -> str:
    """Where the model's weights come from; on a resume the folds with a last.pt continue from it instead."""
    if resuming:
        return (f"model {cfg.model.name}: folds with a last.pt continue from it; a fold not started yet begins from "
                f"{weights.describe()}")
    hint = ("; set model.pretrained=true or model.weights=FILE to start from ImageNet weights"
            if weights.kind == "scratch" else "")
    return f"model {cfg.model.name}: {weights.describe()}{hint}"


def _run_dataset(cfg: Config, spec: Competition, data_dir: Path, table: pd.DataFrame, all_ids: list[str],
                 store, size: int, meta: np.ndarray | None, targets: np.ndarray,
                 extra: list[ExtraSource]) -> ImageDataset:
    """The run's rows, then the extra sources' rows, over the split's pack (built on first use, then reused by every
    fold, run and trial at this size) and each source's own, or over the image files when ``train.cache_images`` is
    off."""
    ids, cached = table["id"].to_numpy(dtype=str), cfg.train.cache_images
    if cached:
        pack = split_pack(spec, data_dir, "train", size, all_ids)
        own = (pack.rows, pack.index(ids))
    elif not extra:
        return ImageDataset(ids, None, store=store, targets=targets, meta=meta)
    else:
        own = (StoreImages(store, ids), np.arange(len(ids)))
    if not extra:
        return ImageDataset(ids, None, images=own[0], image_rows=own[1], targets=targets, meta=meta)
    images = JoinedImages([own, *(e.images(size, cached) for e in extra)])
    all_ids = np.concatenate([ids, *(e.table["id"].to_numpy(dtype=str) for e in extra)])
    return ImageDataset(all_ids, None, images=images, targets=targets, meta=meta)


# ---------------------------------------------------------------------------------------------------------------
# One fold


def build_handlers(cfg: Config, metric: str, eta: Callable[[], str | None],
                   on_epoch: EpochCallback | None = None) -> list[EpochHandler]:
    """The epoch-end handlers of a fold, in the order they run (kit/epoch_handlers.py says why this order).
    A new concern joins the ``concerns`` list."""
    t = cfg.train
    concerns: list[EpochHandler] = []  # between the best checkpoint and the history: may add history columns
    if t.swa_epochs or t.top_k:
        concerns.append(averaging_handler(cfg, metric))
    # after the history: they log its complete row, before a callback may raise (a pruned trial)
    trackers = tracker_handlers(cfg)
    return [BestCheckpoint(), *concerns, History(metric, t.epochs, eta), *trackers, LastCheckpoint(),
            *([EpochCallbackHandler(on_epoch)] if on_epoch is not None else []),
            *([EarlyStopping(t.early_stopping)] if t.early_stopping else [])]


@dataclass
class FoldProgress:
    """What changes from epoch to epoch, saved in last.pt."""

    history: list[dict] = field(default_factory=list)
    best_metric: float = -math.inf
    best_loss: float = math.inf
    best_epoch: int = -1
    stale: int = 0

    def update(self, epoch: int, metric: float, loss: float) -> bool:
        """Record a validated epoch (1-based); True when it is the best so far.

        A tie on the metric (AUC saturates at 1.0 on easy folds) goes to the lower validation loss: the
        better-calibrated epoch, whose predictions pool better with the other folds' into the OOF score.
        """
        improved = metric > self.best_metric or (metric == self.best_metric and loss < self.best_loss)
        if improved:
            self.best_metric, self.best_loss, self.best_epoch, self.stale = metric, loss, epoch, 0
        else:
            self.stale += 1
        return improved


class FoldTrainer:
    """Everything one fold trains with, built from the config and the run's data; ``run`` trains it."""

    overall: Eta | None = None  # the run's epochs left, for the overall ETA of the progress lines
    show_progress: bool = False

    def __init__(self, cfg: Config, data: RunData, k: int, run: RunDir):
        self.cfg, self.data, self.k, self.run = cfg, data, k, run
        t, spec = cfg.train, data.spec
        self.metric = get_metric(spec.metric)
        self.dist = current_group()  # rank 0 of 1 outside torchrun
        device = self.dist.device(resolve_device(t.device))
        self.workers = default_workers(t.num_workers, device)
        # the extra sources' rows train every fold, fold k's pseudo-labelled test images fold k; they validate none
        self.train_idx = np.concatenate([np.flatnonzero(data.fold != k), data.training_only_rows(k)])
        self.pseudo_idx = data.training_only_rows(k, pseudo_only=True)
        self.val_idx = np.flatnonzero(data.fold == k)
        self.targets = data.table["target"].to_numpy()  # the competition's: what validation scores
        if len(np.unique(self.targets[self.val_idx])) < 2:
            raise ConfigError(f"fold {k} has a single class in its validation part; use fewer folds or more data")
        # aug.on_device: the CPU side only resizes, the preset runs per batch on the device
        self.batch_aug = build_batch_augment(cfg.aug.preset, cfg.aug.strength) if cfg.aug.on_device else None
        self.train_tf = build_train_transform("none" if cfg.aug.on_device else cfg.aug.preset, data.input_size,
                                              cfg.aug.strength, data.native_size)
        self.train_ds = self._subset(self.train_idx, self.train_tf)
        # each process validates every world-th row; validate() gathers them back in order
        self.val_ds = self._subset(self.dist.shard(self.val_idx),
                                   build_eval_transform(data.input_size, data.native_size))
        seed_everything(t.seed + k)  # the same initial weights for a fold, whatever ran before it
        self.rt = Runtime.create(device, t.amp, t.channels_last, data.mean, data.std, data.space.task == "binary",
                                 data.model.n_meta > 0)
        self.model = self.rt.place(self._initial_model())
        if t.sync_bn:  # before the optimizer: it replaces the BatchNorm modules
            self.model = self.dist.sync_batchnorm(self.model, device)
        if t.compile:
            compile_model(self.model)
        self._build_optimisation()
        self.progress = FoldProgress()
        self.handlers: list[EpochHandler] = []
        self.stop: str | None = None  # set by a handler: the fold ends after this epoch
        self.weights: str | None = None  # set by a weight-averaging handler that replaced best.pt
        self.weights_metric: float | None = None  # and the validation metric of those weights

    def _initial_model(self) -> nn.Module:
        """The fold's network: from its weights file, timm's pretrained weights, scratch, or (``model.init_from``)
        the same fold's best weights of an earlier run."""
        cfg, d = self.cfg, self.data
        weights, pretrained = _weights_args(cfg, d.init)
        model = build_model(cfg.model.name, d.space.num_outputs, weights, cfg.model.img_size, cfg.model.drop_rate,
                            d.model.n_meta, pretrained)
        return model if d.init is None else d.init.load_into(model, self.k, d.model)

    def _subset(self, idx: np.ndarray, transform) -> ImageDataset:
        return self.data.dataset.subset(idx).with_transform(transform)

    def _build_optimisation(self) -> None:
        t, device = self.cfg.train, self.rt.device
        n_classes = self.data.space.n_classes
        train_targets = self.data.train_targets[self.train_idx]
        self.loss_fn = build_loss(t.loss, n_classes, train_targets, t.class_weights, t.focal_gamma,
                                  t.label_smoothing).to(device)
        self.sample_weights = None
        if t.balanced_sampler:
            counts = np.bincount(train_targets, minlength=n_classes)
            self.sample_weights = 1.0 / counts[train_targets]
        self.val_loader = make_loader(self.val_ds, t.batch_size * 2, self.workers, device, train=False)
        batches = len(make_loader(self.epoch_dataset(0), t.batch_size, 0, device, train=True))
        steps_per_epoch = optimizer_steps(batches, t.accum_steps)
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.mix = BatchMix(n_classes, self.data.space.task == "binary", t.mixup, t.cutmix, t.mixup_prob,
                            t.mixup_switch_prob, t.mixup_mode) if t.mixup or t.cutmix else None
        self.scheduler = build_scheduler(self.optimizer, self.cfg, steps_per_epoch)
        self.ema = None
        if t.ema:
            from timm.utils import ModelEmaV3

            # Without warm-up a decay of 0.998 keeps the EMA within 1-0.998**n of the random initial weights for the
            # first n steps: hundreds of steps of validating a model that has barely moved. timm's warm-up raises the
            # decay from 0 towards ema_decay as 1 - (1 + step)**-2/3.
            self.ema = ModelEmaV3(self.model, decay=t.ema_decay, use_warmup=True)

    def epoch_dataset(self, epoch: int) -> ImageDataset:
        """The training rows of ``epoch``: all of them, or every positive and a fresh subset of the negatives."""
        t = self.cfg.train
        if not t.negatives_per_positive:
            return self.train_ds
        rows = subsample_negatives(self.train_idx, self.data.train_targets, t.negatives_per_positive,
                                   epoch_seed(t.seed, self.k, epoch))
        return self.train_ds.subset(rows)

    # ---------------------------------------------------------------------------------------- checkpoints
    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one that writes."""
        return self.dist.is_main

    def history(self) -> list[dict]:
        return self.progress.history

    def stale_epochs(self) -> int:
        return self.progress.stale

    def checkpoint(self, epoch: int, metric: float, model: nn.Module,
                   training: TrainingState | None = None) -> Checkpoint:
        d, spec = self.data, self.data.spec
        return Checkpoint(model=d.model, competition=spec.name, task=d.space.task, classes=list(d.space.classes),
                          scored=d.space.scored, input_size=d.input_size, mean=list(d.mean), std=list(d.std),
                          config=self.cfg.to_dict(),
                          meta_encoder=d.meta_encoder.to_dict() if d.meta_encoder else None, fold=self.k,
                          epoch=epoch, metric=metric, model_state=model.state_dict(), training=training)

    def training_state(self) -> TrainingState:
        p = self.progress
        return TrainingState(
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            scaler=self.rt.scaler.state_dict() if self.rt.scaler is not None else None,
            ema=self.ema.module.state_dict() if self.ema is not None else None, rng=rng_state(),
            history=p.history, best_metric=p.best_metric, best_loss=p.best_loss, best_epoch=p.best_epoch,
            stale=p.stale, handlers={h.name: h.state_dict() for h in self.handlers})

    def save_best(self, epoch: int, metric: float, model: nn.Module, val_probs: np.ndarray) -> None:
        """``best.pt`` from ``model`` and the fold's OOF rows from its validation predictions (rank 0 alone)."""
        if not self.is_main:
            return
        save_checkpoint(self.run.best_path(self.k), self.checkpoint(epoch, metric, model))
        ids = self.data.table["id"].to_numpy()[self.val_idx]
        self.run.write_csv(self.run.fold_oof_path(self.k), prediction_frame(
            self.data.spec, ids, val_probs, fold=self.k, target=self.targets[self.val_idx]))

    def resume(self) -> int:
        """Restore every piece of state from last.pt when there is one; the number of epochs already trained."""
        path = self.run.last_path(self.k)
        if not path.is_file():
            return 0
        ckpt = load_checkpoint(path)
        state = ckpt.training
        if state is None:
            raise KitError(f"{path}: holds no training state (a best.pt renamed?); delete it to retrain the fold")
        self.model.load_state_dict(ckpt.model_state)
        self.optimizer.load_state_dict(state.optimizer)
        if self.scheduler is not None and state.scheduler is not None:
            self.scheduler.load_state_dict(state.scheduler)
        if self.rt.scaler is not None and state.scaler is not None:
            self.rt.scaler.load_state_dict(state.scaler)
        if self.ema is not None and state.ema is not None:
            self.ema.module.load_state_dict(state.ema)
        for handler in self.handlers:
            if handler.name in state.handlers:
                handler.load_state_dict(state.handlers[handler.name])
        set_rng_state(state.rng)
        self.progress = FoldProgress(state.history, state.best_metric, state.best_loss, state.best_epoch, state.stale)
        log.info(f"fold {self.k}: resuming after epoch {ckpt.epoch} (best {self.data.spec.metric} "
                 f"{state.best_metric:.4f})")
        return ckpt.epoch

    # ---------------------------------------------------------------------------------------------- epochs
    def train_epoch(self, epoch: int, show_progress: bool) -> EpochStats:
        t = self.cfg.train
        if self.cfg.model.freeze_epochs > 0:  # feature extraction for the first freeze_epochs, then fine-tuning
            set_backbone_trainable(self.model, epoch >= self.cfg.model.freeze_epochs, self.cfg.model.unfreeze_blocks)
        seed = epoch_seed(t.seed, self.k, epoch)
        d = self.dist  # the epoch's order is the same on every rank; each trains its part of every batch
        self.train_tf.set_seed(seed + d.rank)
        dataset = self.epoch_dataset(epoch)
        sampler = EpochSampler(len(dataset), t.batch_size, seed, d.rank, d.world, self.sample_weights)
        loader = make_loader(dataset, d.local_batch(t.batch_size), self.workers, self.rt.device, True, seed + d.rank,
                             sampler=sampler)
        if self.batch_aug is not None:
            loader = on_device(loader, self.batch_aug, self.rt.device, seed + d.rank)
        steps = optimizer_steps(len(loader), t.accum_steps)
        mix = self.mix if epoch < t.epochs - t.mixup_off_epochs else None  # the last epochs train on plain images
        with Progress(steps, f"fold {self.k} epoch {epoch + 1}/{t.epochs}", unit="step",
                      enabled=show_progress and d.is_main, overall=self.overall,
                      overall_weight=1 / max(steps, 1)) as bar:
            stats = train_one_epoch(d.wrap(self.model, self.rt.device), loader, self.optimizer, self.loss_fn, self.rt,
                                    self.scheduler, self.ema, t.grad_clip, epoch, bar, t.accum_steps, mix)
        stats = EpochStats(d.mean(stats.loss), stats.images_per_s * d.world, len(dataset),
                           int(np.isin(dataset.rows, self.pseudo_idx).sum()))
        if not math.isfinite(stats.loss):
            raise TrainingError(f"fold {self.k} epoch {epoch + 1}: the loss became {stats.loss}; lower train.lr or "
                                f"set train.grad_clip. Last good checkpoint kept: {self.run.last_path(self.k)}")
        return stats

    def eval_model(self) -> nn.Module:
        """The model that is validated and saved: the EMA copy with train.ema, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def best_epoch(self) -> tuple[int, float]:
        return self.progress.best_epoch, self.progress.best_metric

    def statistics_loader(self) -> DataLoader:
        """This rank's share of the rows the last epoch trained on, unaugmented, in order: what weight averaging
        measures BatchNorm statistics on."""
        rows = self.epoch_dataset(self.cfg.train.epochs - 1)
        plain = rows.subset(self.dist.shard(rows.rows)).with_transform(
            build_eval_transform(self.data.input_size, self.data.native_size))
        return make_loader(plain, self.cfg.train.batch_size, self.workers, self.rt.device, train=False)

    def validate_model(self, model: nn.Module, title: str) -> tuple[float, np.ndarray]:
        """``model``'s metric and predictions on the fold's validation rows (gathered from every rank)."""
        self.dist.sync_buffers(model)  # rank 0's BatchNorm statistics: every rank validates one model
        with Progress(len(self.val_ds), title, unit="img", enabled=self.show_progress and self.dist.is_main) as bar:
            return validate(model, self.val_loader, self.rt, self.targets[self.val_idx], self.metric, bar,
                            lambda part: self.dist.gather_rows(part, len(self.val_idx)),
                            self.data.space.scored_index)

    def end_epoch(self, epoch: int, stats: EpochStats) -> EpochEnd:
        """Validate epoch ``epoch`` (0-based), step the scheduler, and hand the result to the handlers."""
        eval_model = self.eval_model()
        val_metric, val_probs = self.validate_model(eval_model, f"fold {self.k} epoch {epoch + 1} validation")
        val_loss = log_loss(self.targets[self.val_idx], val_probs)
        if self.scheduler is not None:
            self.scheduler.step(epoch + 1, val_metric)
        lr = self.optimizer.param_groups[0]["lr"]
        row = {"epoch": epoch + 1, "train_loss": stats.loss, "val_loss": val_loss,
               self.data.spec.metric: val_metric, "lr": lr, "images_per_s": stats.images_per_s,
               "train_images": stats.images}
        if self.cfg.data.pseudo:  # of train_images, the test images of data.pseudo
            row["pseudo_images"] = stats.pseudo_images
        end = EpochEnd(epoch + 1, stats.loss, stats.images_per_s, stats.images, val_metric, val_loss, val_probs, lr,
                       self.progress.update(epoch + 1, val_metric, val_loss), eval_model, row)
        for handler in self.handlers:
            handler.on_epoch_end(self, end)
        return end

    def fit(self, on_epoch: EpochCallback | None = None, show_progress: bool = False,
            overall: Eta | None = None) -> FoldResult:
        """Train the fold's remaining epochs: train, then the epoch-end handlers, until the last epoch or a stop."""
        t = self.cfg.train
        self.show_progress, self.overall = show_progress, overall
        self.handlers = build_handlers(self.cfg, self.data.spec.metric,
                                       lambda: overall.eta() if overall is not None else None, on_epoch)
        start = self.resume()
        if overall is not None:
            overall.total -= start  # epochs a killed run already trained
        for handler in self.handlers:
            handler.on_fit_start(self, start)
        for epoch in range(start, t.epochs):
            if self.stop is not None:
                break  # resumed after the epoch that stopped the fold
            self.end_epoch(epoch, self.train_epoch(epoch, show_progress))
            self.stop = self.dist.broadcast(self.stop)  # rank 0 decides
            if self.stop is not None:
                log.info(f"fold {self.k}: {self.stop}")
                if overall is not None:
                    overall.total -= t.epochs - epoch - 1
                break
        for handler in self.handlers:
            handler.on_fit_end(self)
        return self._finish()

    def _finish(self) -> FoldResult:
        p = self.progress
        kept = self.weights_metric if self.weights else p.best_metric  # the metric of what best.pt holds
        result = FoldResult(self.k, kept, p.best_epoch, len(p.history), self.weights or f"best epoch {p.best_epoch}")
        if self.is_main:
            self.run.save(result, fold=self.k)  # last: marks the fold finished
            if not self.cfg.train.keep_last:  # finished: nothing will resume from it
                self.run.last_path(self.k).unlink(missing_ok=True)
        return result


def train_fold(cfg: Config, data: RunData, k: int, run: RunDir, on_epoch: EpochCallback | None = None,
               progress: bool = False, overall: Eta | None = None) -> FoldResult:
    """Train (or resume) fold ``k`` of ``run`` holding the fold's lock; the caller holds the run's, or (a fold
    trained in a process of its own) none."""
    with current_group().writing(run, fold=k):
        return FoldTrainer(cfg, data, k, run).fit(on_epoch, progress, overall)


# ---------------------------------------------------------------------------------------------------------------
# All folds


@dataclass
class RunResult:
    run_dir: Path
    fold_scores: dict[int, float]
    cv_score: float
    mean_fold_score: float
    metric: str


def _check_folds(cfg: Config, folds: list[int] | None) -> list[int]:
    folds = list(range(cfg.n_folds)) if folds is None else list(folds)
    bad = [k for k in folds if not 0 <= k < cfg.n_folds]
    if bad:
        raise ConfigError(f"--folds {bad} out of range for {cfg.n_folds} folds")
    return folds


def _start(run: RunDir, fresh: bool, overwrite: bool) -> None:
    """Inside the lock: refuse to train over another run unless told to, or clear it for ``overwrite``."""
    if overwrite:
        for path in run.path.iterdir():
            if path.name != ".kit-lock":
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    elif fresh and run.config_path.exists():
        raise ConfigError(f"{run.path} already holds a run; continue it with kit train --resume {run.path}, "
                          "replace it with --overwrite, or choose another --out")


def _write_start(run: RunDir, cfg: Config, data: RunData, data_dir: Path, folds: list[int]) -> None:
    """The run's own files, written once the data and the model passed their checks."""
    if data.fold_source is None or Path(data.fold_source).resolve() != run.folds_path.resolve():  # not a resume
        write_folds(run.folds_path, data.table["id"], data.fold, data.spec.id_col)
    run.write_config(cfg, {"weights": data.weights.record()} if data.weights else None)
    run.save_info(data_dir, folds)
    # the preset as albumentations describes it (with aug.on_device it runs per batch on the device instead)
    build_train_transform(cfg.aug.preset, data.input_size, cfg.aug.strength, data.native_size).save(
        run.augmentation_path)


def _finish(run: RunDir, spec: Competition, folds: list[int]) -> RunResult:
    folds = [k for k in folds if run.result_path(k).is_file()]  # a fold trained elsewhere may not have finished
    oof = run.collect_oof(folds)
    run.write_csv(run.oof_path, oof)
    per_fold, pooled = score_oof(spec, oof)
    result = RunResult(run.path, per_fold, pooled, float(np.mean(list(per_fold.values()))), spec.metric)
    run.save(Scores(spec.metric, pooled, result.mean_fold_score, per_fold))
    return result


FoldRunner = Callable[[Config, RunData, RunDir, list[int], "EpochCallback | None", bool], None]
"""(cfg, data, run, folds to train, on_epoch, progress) -> None: trains folds of a run whose lock the caller holds
(:func:`train_sequentially` here; ``kit.parallel_folds`` one process per device)."""


def train_sequentially(cfg: Config, data: RunData, run: RunDir, folds: list[int],
                       on_epoch: EpochCallback | None = None, progress: bool = False) -> None:
    """The folds one after the other in this process (with the other ranks of a torchrun launch, if any)."""
    dist = current_group()
    on_epoch = dist.decided_by_main(on_epoch)  # a stop (pruning, a time budget) decided once, for every rank
    finished = dist.broadcast([run.result_path(k).is_file() for k in folds])  # rank 0's view of the run decides
    overall = Eta((len(folds) - sum(finished)) * cfg.train.epochs)  # the run's epochs left, for the ETA
    for k, done in zip(folds, finished, strict=True):
        if done:
            log.info(f"fold {k}: already finished, skipped")
            continue
        train_fold(cfg, data, k, run, on_epoch, progress, overall)


def train_folds(cfg: Config, data_dir: str | Path, run_dir: str | Path, folds: list[int] | None = None,
                folds_file: str | Path | None = None, on_epoch: EpochCallback | None = None,
                progress: bool = False, exclude: list[str] | None = None, fresh: bool = False,
                overwrite: bool = False, only: list[int] | None = None,
                runner: FoldRunner | None = None) -> RunResult:
    """Train the chosen folds (all by default) into ``run_dir``; folds already finished there are skipped.

    ``fresh`` refuses a folder that already holds a run (``overwrite`` clears it instead). The folder's write lock
    is held throughout, so a second trainer started into the same folder stops at once. ``only`` trains a subset of
    ``folds`` now (a failed fold again, say); the scores pool every finished one. ``runner`` trains the folds
    (default: :func:`train_sequentially`). Under torchrun rank 0 alone locks and writes.
    """
    run, data_dir, dist = RunDir(run_dir), Path(data_dir), current_group()
    folds = _check_folds(cfg, folds)
    created = not run.path.exists()
    with dist.writing(run):
        try:
            dist.on_main(_start, run, fresh, overwrite)
            data = prepare_data(cfg, data_dir, run, Path(folds_file) if folds_file else None, exclude)
            if data.init is not None:
                data.init.check_folds(folds)
        except BaseException:
            if dist.is_main and created and not run.config_path.exists():  # a failed start leaves nothing behind
                shutil.rmtree(run.path, ignore_errors=True)
            raise
        dist.on_main(_write_start, run, cfg, data, data_dir, folds)
        log.info(start_line(cfg, data, folds, run))
        todo = [k for k in folds if only is None or k in only]
        (runner or train_sequentially)(cfg, data, run, todo, on_epoch, progress)
        return dist.on_main(_finish, run, data.spec, folds)


def start_line(cfg: Config, data: RunData, folds: list[int], run: RunDir) -> str:
    """What a run is about to do, in one line: device, precision, images, folds, model, weights."""
    device = resolve_device(cfg.train.device)
    amp, _ = resolve_amp(cfg.train.amp, device)
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[amp]
    images = "from the pack" if cfg.train.cache_images else "decoded from the files each epoch"
    weights = (f"warm start from {cfg.model.init_from}" if cfg.model.init_from else
               data.weights.short() if data.weights else "from scratch")
    if run.config_path.is_file() and any(run.last_path(k).is_file() for k in folds):
        weights = f"continuing from each fold's last.pt (initial weights: {weights})"
    fresh_folds = data.fold_source is not None and Path(data.fold_source).resolve() != run.folds_path.resolve()
    fold_file = f" (from {data.fold_source})" if fresh_folds else ""
    extra = "".join(f" + {e.describe()} (training only)" for e in data.extra if not isinstance(e, PseudoSource))
    extra += describe_pseudo(data.extra)
    target = f"; trains on {len(data.space.classes)} classes, scores {data.space.scored}" if data.space.scored else ""
    return (f"kit train {run.path}: {device}, {precision}; {len(data.table)} images{extra} ({images}, "
            f"{data.input_size} px); folds {','.join(map(str, folds))} of {cfg.n_folds}{fold_file}; "
            f"{plural(cfg.train.epochs, 'epoch')}; "
            f"{cfg.model.name}, {weights}{target}")


def resume_config(run_dir: Path) -> tuple[Config, Path, list[int]]:
    """The saved config, data folder and fold list of an existing run folder."""
    run = RunDir.open(run_dir)
    return run.config(), run.data_dir(), run.load(RunInfo).folds
