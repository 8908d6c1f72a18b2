"""Test and out-of-fold prediction from a run folder's checkpoints, with test-time augmentation.

Every fact about a model comes from its checkpoint (architecture, input size, normalisation, metadata encoder,
competition, how images were decoded), never from the current config, so prediction cannot drift from training.
The OOF images of each fold are predicted with the same TTA as the test images: the CV with and without TTA,
side by side, is the measured gain of TTA (``scores_tta.json``).

This stage stops at per-fold predictions: it writes ``test_fold{k}.csv``, ``oof_tta.csv``, ``scores_tta.json`` and
``predict.json`` into the run folder. Blending the folds is :func:`kit.blend.blend_folds`'s job,
writing the submission the submission module's; :func:`kit.pipeline.predict_and_submit` chains them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from kit.checkpoint import Checkpoint, load_checkpoint
from kit.competitions import Competition
from kit.data.dataset import ImageDataset
from kit.data.folds import load_folds
from kit.data.labels import load_test_table, load_train_table
from kit.data.pack import Pack, split_pack
from kit.data.readers import ImageStore, check_images_exist, open_store
from kit.errors import ConfigError, KitError
from kit.io import portable_path
from kit.oof import prediction_frame, score_oof
from kit.progress import Eta, Progress
from kit.records import PredictInfo, TtaScores
from kit.rundir import RunDir
from kit.runtime import Runtime, default_workers, make_loader, resolve_device
from kit.transforms import build_eval_transform
from kit.tta import TTA, default_views_per_forward, get_view_set
from kit.words import article

__all__ = ["PredictResult", "format_tta_scores", "load_fold_model", "predict_dataset", "predict_run",
           "resolve_folds"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- models
def load_fold_model(path: Path, device: torch.device) -> tuple[nn.Module, Checkpoint, Runtime]:
    """The model of a ``best.pt`` rebuilt from the checkpoint's own description, in eval mode on ``device``."""
    if not path.is_file():
        raise KitError(f"{path} is missing: that fold has not finished training")
    ckpt = load_checkpoint(path)
    rt = Runtime.for_checkpoint(ckpt, device)
    return rt.place(ckpt.build_model()), ckpt, rt


# ---------------------------------------------------------------------------------------------------- images
class ImageSource:
    """Datasets over one split's images, read the way the checkpoint's run read them in training.

    ``cache_images`` runs read the split's pack (kit.data.pack: decoded once, resized with INTER_AREA, shared with
    training and every later prediction at that size); others read the image files and resize in the transform.
    Mirroring training keeps the identity view's predictions equal to training's validation.
    """

    def __init__(self, spec: Competition, data_dir: Path, split: str, store: ImageStore):
        self.spec, self.data_dir, self.split, self.store = spec, data_dir, split, store
        self._packs: dict[int, Pack] = {}

    def dataset(self, ids: Sequence[str], size: int, cached: bool, meta: np.ndarray | None) -> ImageDataset:
        ids = np.asarray(ids, dtype=str)
        if not cached:
            return ImageDataset(ids, build_eval_transform(size, None), store=self.store, meta=meta)
        if size not in self._packs:  # the folds of a run share one input size, so this opens one pack
            self._packs[size] = split_pack(self.spec, self.data_dir, self.split, size)
        pack = self._packs[size]
        return ImageDataset(ids, build_eval_transform(size, size), images=pack.rows, image_rows=pack.index(ids),
                            meta=meta)


@torch.inference_mode()
def predict_dataset(model: nn.Module, dataset: ImageDataset, rt: Runtime, tta: TTA, batch_size: int,
                    workers: int = 0, progress: Progress | None = None) -> np.ndarray:
    """TTA probabilities for every item of ``dataset``, in order: N (binary) or N x C (multiclass)."""
    model.eval()
    out = []
    for batch in make_loader(dataset, batch_size, workers, rt.device, train=False):
        x, meta = rt.inputs(batch)  # uint8 -> normalised float on the device; flips commute with normalisation
        with rt.autocast():
            out.append(tta(model, x, meta).float().cpu())
        if progress is not None:
            progress.update(len(x) * len(tta.views))
    return torch.cat(out).numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------------- a run
@dataclass
class PredictResult:
    run_dir: Path
    folds: list[int]
    test_files: dict[int, Path]
    oof_tta: Path | None
    scores: TtaScores | None
    tta: TTA


def resolve_folds(run: RunDir, folds: Sequence[int] | None) -> list[int]:
    """The folds asked for, or every finished fold of the run (run.json lists only the last `kit train` call's)."""
    if folds is None:
        unfinished = [f"fold{k}" for k in run.fold_numbers()
                      if run.best_path(k).is_file() and not run.result_path(k).is_file()]
        if unfinished:
            log.info(f"note: {', '.join(unfinished)} not finished (no result.json): left out; continue "
                     f"{'them' if len(unfinished) > 1 else 'it'} with `kit train --resume {run.path}`")
        folds = run.finished_folds()
        if not folds:
            started = [f"fold{k}" for k in run.fold_numbers()]
            what = f"{', '.join(started)} did not finish" if started else "no fold has trained an epoch"
            raise KitError(f"{run.path} has no finished fold (no fold*/result.json; {what}): continue it with "
                           f"`kit train --resume {run.path}`")
    chosen = [int(k) for k in folds]
    if not chosen:
        raise ConfigError("no folds to predict")
    missing = [str(run.best_path(k)) for k in chosen if not run.best_path(k).is_file()]
    if missing:
        raise KitError(f"no checkpoint for {len(missing)} of the folds {chosen}: {', '.join(missing)} "
                       f"(train them with kit train --resume {run.path})")
    return chosen


def tta_scores(spec: Competition, before: pd.DataFrame, after: pd.DataFrame, tta: TTA) -> TtaScores:
    f0, cv0 = score_oof(spec, before)
    f1, cv1 = score_oof(spec, after)
    return TtaScores(spec.metric, {"views": list(tta.views), "merge": tta.merge},
                     {str(k): {"no_tta": f0[k], "tta": f1[k], "gain": f1[k] - f0[k]} for k in f0},
                     {"no_tta": cv0, "tta": cv1, "gain": cv1 - cv0},
                     {"no_tta": float(np.mean(list(f0.values()))), "tta": float(np.mean(list(f1.values())))})


def format_tta_scores(scores: TtaScores) -> str:
    """The side-by-side table of CV without and with TTA printed by ``kit predict``."""
    label = f"TTA x{len(scores.views)} ({scores.tta['merge']})"
    before = f"{scores.metric} no TTA"
    w0, w1 = max(len(before), 8), max(len(label), 8)
    lines = [f"{'fold':>6}  {before:>{w0}}  {label:>{w1}}  {'gain':>8}"]
    rows = [(k, v) for k, v in scores.folds.items()] + [("CV", scores.cv)]
    for k, v in rows:
        lines.append(f"{k:>6}  {v['no_tta']:>{w0}.4f}  {v['tta']:>{w1}.4f}  {v['gain']:>+8.4f}")
    return "\n".join(lines)


class _RunPredictor:
    """The images of one run's data folder (test, and the training rows for OOF), shared by its folds."""

    def __init__(self, run: RunDir, data_dir: Path, with_oof: bool):
        self.run, self.data_dir, self.spec = run, data_dir, run.competition()
        self.test_table = load_test_table(self.spec, data_dir)
        test_store = open_store(self.spec, data_dir, "test")
        check_images_exist(test_store, list(self.test_table["id"]), what="test ids")
        self.test = ImageSource(self.spec, data_dir, "test", test_store)
        self.train = None
        if with_oof:
            self.train = ImageSource(self.spec, data_dir, "train", open_store(self.spec, data_dir, "train"))
        self._train_rows: pd.DataFrame | None = None
        self._test_rows: pd.DataFrame | None = None
        self.overall: Eta | None = None
        self.label = ""

    def start(self, folds: list[int], views: int) -> None:
        """The overall ETA of predicting ``folds`` (test and OOF images) with ``views`` TTA views each."""
        oof = sum(len(self.run.fold_oof(k)) for k in folds) if self.train is not None else 0
        self.overall = Eta((len(folds) * len(self.test_table) + oof) * views)

    def bar(self, what: str, n: int, tta: TTA) -> Progress:
        return Progress(n * len(tta.views), f"{self.label} {what}, TTA x{len(tta.views)}", unit="view",
                        overall=self.overall)

    def train_rows(self) -> pd.DataFrame:
        """The training table as the run saw it (the ids of its folds.csv, in table order), for the OOF metadata."""
        if self._train_rows is None:
            table = load_train_table(self.spec, self.data_dir, features=True)
            kept = set(load_folds(self.run.folds_path, self.spec.id_col).index)
            self._train_rows = table[table["id"].isin(kept)].reset_index(drop=True)
        return self._train_rows

    def test_rows(self) -> pd.DataFrame:
        """The test table with every feature column of its metadata, for the metadata branch."""
        if self._test_rows is None:
            self._test_rows = load_test_table(self.spec, self.data_dir, features=True)
        return self._test_rows

    def oof(self, k: int, model: nn.Module, ckpt: Checkpoint, rt: Runtime, tta: TTA, bs: int,
            workers: int) -> pd.DataFrame:
        oof = self.run.fold_oof(k)
        ids = oof[self.spec.id_col].tolist()
        check_images_exist(self.train.store, ids, what=f"fold {k} out-of-fold ids")
        meta = None
        if rt.use_meta:
            rows = self.train_rows()
            meta = ckpt.encoded_meta(rows)[pd.Index(rows["id"]).get_indexer(ids)]
        dataset = self.train.dataset(ids, ckpt.input_size, ckpt.cache_images, meta)
        with self.bar(f"{len(ids)} out-of-fold images", len(ids), tta) as bar:
            probs = ckpt.competition_probs(predict_dataset(model, dataset, rt, tta, bs, workers, bar))
        return prediction_frame(self.spec, ids, probs, fold=k, target=oof["target"].to_numpy())

    def test_probs(self, model: nn.Module, ckpt: Checkpoint, rt: Runtime, tta: TTA, bs: int,
                   workers: int) -> np.ndarray:
        meta = ckpt.encoded_meta(self.test_rows()) if rt.use_meta else None
        dataset = self.test.dataset(self.test_table["id"], ckpt.input_size, ckpt.cache_images, meta)
        with self.bar(f"{len(dataset)} test images", len(dataset), tta) as bar:
            return ckpt.competition_probs(predict_dataset(model, dataset, rt, tta, bs, workers, bar))


def predict_run(run_dir: str | Path, data_dir: str | Path | None = None, tta: str | int = "8", merge: str = "mean",
                folds: Sequence[int] | None = None, batch_size: int | None = None, device: str = "auto",
                workers: int | None = None, with_oof: bool = True) -> PredictResult:
    """Predict the test (and OOF) images with each fold's best.pt and TTA; write the per-fold predictions.

    ``with_oof=False`` predicts the test images only (a Kaggle kernel: the training images are not worth its time).
    """
    run = RunDir.open(run_dir)
    folder = run.data_folder(data_dir)
    chosen = resolve_folds(run, folds)
    get_view_set(tta)  # fail on a bad --tta before any checkpoint is read
    dev = resolve_device(device)
    with run.writing():
        images = _RunPredictor(run, folder, with_oof)
        spec = images.spec
        fold_tta = TTA(views=str(tta), merge=merge, task=spec.task)
        test_files, oof_frames = {}, []
        images.start(chosen, len(fold_tta.views))
        also = " and each fold's out-of-fold images" if with_oof else ""
        log.info(f"kit predict {run.path}: {dev}; folds {','.join(map(str, chosen))}; {len(images.test_table)} test "
              f"images{also}; TTA x{len(fold_tta.views)} ({merge})")
        for i, k in enumerate(chosen):
            start, images.label = time.perf_counter(), f"fold {k} ({i + 1}/{len(chosen)})"
            model, ckpt, rt = load_fold_model(run.best_path(k), dev)
            if ckpt.competition != spec.name:
                raise KitError(f"{run.best_path(k)} is {article(ckpt.competition)} model; the run is {spec.name}")
            bs = batch_size or max(1, 2 * ckpt.config["train"]["batch_size"]
                                   // default_views_per_forward(dev, len(fold_tta.views)))
            n_workers = default_workers(ckpt.config["train"]["num_workers"], dev) if workers is None else workers
            model_tta = dataclasses.replace(fold_tta, task=ckpt.task)  # a finer target: TTA over all its classes
            if with_oof:
                oof_frames.append(images.oof(k, model, ckpt, rt, model_tta, bs, n_workers))
            probs = images.test_probs(model, ckpt, rt, model_tta, bs, n_workers)
            test_files[k] = run.write_csv(run.test_path(k),
                                          prediction_frame(spec, images.test_table["id"].to_numpy(), probs))
            oof_note = f"{len(oof_frames[-1])} out-of-fold + " if with_oof else ""
            log.info(f"fold {k}: {oof_note}{len(images.test_table)} test images, TTA x{len(fold_tta.views)} "
                  f"({merge}) in {time.perf_counter() - start:.1f}s")
        oof_path, scores = _write_oof_scores(run, spec, chosen, oof_frames, fold_tta) if with_oof else (None, None)
        run.save(PredictInfo(chosen, portable_path(folder, run.path), oof_path.name if oof_path else None,
                             {"views": list(fold_tta.views), "merge": merge}))
    return PredictResult(run.path, chosen, test_files, oof_path, scores, fold_tta)


def _write_oof_scores(run: RunDir, spec: Competition, folds: list[int], frames: list[pd.DataFrame],
                      tta: TTA) -> tuple[Path, TtaScores]:
    oof_tta = pd.concat(frames, ignore_index=True)
    path = run.write_csv(run.oof_tta_path, oof_tta)
    scores = tta_scores(spec, run.collect_oof(folds), oof_tta, tta)
    run.save(scores)
    log.info(format_tta_scores(scores))
    return path, scores

