"""Test and out-of-fold prediction from a run folder's checkpoints, with test-time augmentation.

Every fact about a model comes from its checkpoint (architecture, input size, normalisation, metadata encoder,
competition, how images were decoded), never from the current config, so prediction cannot drift from training.
The OOF images of each fold are predicted with the same TTA as the test images: the CV with and without TTA,
side by side, is the measured gain of TTA (``scores_tta.json``).

Writes into the run folder: ``test_fold{k}.csv``, ``oof_tta.csv``, ``scores_tta.json``, ``predict.json``; and a
validated submission (the folds blended) to ``submissions/<competition>-<run>-<UTC stamp>.csv``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from kit.competitions import Competition, get_competition
from kit.data.dataset import ImageDataset, load_image_cache
from kit.data.labels import load_test_table, load_train_table, read_csv
from kit.data.meta import MetaEncoder
from kit.data.readers import ImageStore, check_images_exist, open_store
from kit.ensemble import get_blend, prediction_columns
from kit.errors import ConfigError, KitError
from kit.io import write_csv_atomic, write_text_atomic
from kit.train import (
    Runtime,
    collect_oof,
    load_checkpoint,
    make_loader,
    model_from_description,
    resolve_amp,
    resolve_device,
    score_oof,
)
from kit.transforms import build_eval_transform
from kit.tta import TTA, default_views_per_forward, get_view_set

__all__ = ["PredictResult", "load_fold_model", "predict_dataset", "predict_run"]

_REQUIRED_KEYS = ("model", "model_state", "competition", "input_size", "mean", "std", "config", "meta_encoder")


# ---------------------------------------------------------------------------------------------------- models
def load_fold_model(path: Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The model of a ``best.pt`` rebuilt from the checkpoint's own description, in eval mode on ``device``."""
    if not path.is_file():
        raise KitError(f"{path} is missing: that fold has not finished training")
    ckpt = load_checkpoint(path)
    missing = [k for k in _REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise KitError(f"{path}: not a kit best.pt checkpoint (keys {missing} missing)")
    model = model_from_description(ckpt["model"])
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval(), ckpt


def _runtime(ckpt: dict, device: torch.device) -> Runtime:
    train = ckpt["config"]["train"]
    # the precision a model was trained in may not exist here (bf16 trained on a GPU, predicted on a CPU)
    amp_dtype, _ = resolve_amp(train["amp"] if device.type == "cuda" else "off", device)
    channels_last = train["channels_last"] == "on" or (train["channels_last"] == "auto" and device.type == "cuda")
    mean = torch.tensor(ckpt["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(ckpt["std"], device=device).view(1, -1, 1, 1)
    task_binary = ckpt["model"]["num_outputs"] == 1
    return Runtime(device, amp_dtype, None, channels_last, mean, std, task_binary, ckpt["model"]["n_meta"] > 0)


# ---------------------------------------------------------------------------------------------------- images
class ImageSource:
    """Datasets over one image store, decoded the way the checkpoint's run decoded them for training.

    ``cache_images`` runs decoded every image once into a packed array resized with INTER_AREA, others resized in the
    transform; mirroring that keeps the identity view's predictions equal to training's validation. Packed test images
    are kept for the next fold.
    """

    def __init__(self, store: ImageStore, keep: bool):
        self.store = store
        self.keep = keep
        self._packed: tuple[int, list[str], np.ndarray] | None = None

    def dataset(self, ids: Sequence[str], size: int, cached: bool, meta: np.ndarray | None) -> ImageDataset:
        ids = list(ids)
        if not cached:
            return ImageDataset(ids, build_eval_transform(size, None), store=self.store, meta=meta)
        if self._packed is not None and self._packed[0] == size and self._packed[1] == ids:
            images = self._packed[2]
        else:
            images = load_image_cache(self.store, ids, size)
            if self.keep:
                self._packed = (size, ids, images)  # one set at a time: the folds of a run share the input size
        return ImageDataset(ids, build_eval_transform(size, size), images=images, meta=meta)


@torch.inference_mode()
def predict_dataset(model: nn.Module, dataset: ImageDataset, rt: Runtime, tta: TTA, batch_size: int,
                    workers: int = 0) -> np.ndarray:
    """TTA probabilities for every item of ``dataset``, in order: N (binary) or N x C (multiclass)."""
    model.eval()
    out = []
    for batch in make_loader(dataset, batch_size, workers, rt.device, train=False):
        x, meta = rt.inputs(batch)  # uint8 -> normalised float on the device; flips commute with normalisation
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None):
            out.append(tta(model, x, meta).float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def _frame(spec: Competition, ids, probs: np.ndarray, **extra) -> pd.DataFrame:
    df = pd.DataFrame({spec.id_col: ids, **extra})
    values = probs[:, None] if spec.is_binary else probs
    for j, col in enumerate(prediction_columns(spec)):
        df[col] = values[:, j]
    return df


# ---------------------------------------------------------------------------------------------------- a run
@dataclass
class PredictResult:
    run_dir: Path
    folds: list[int]
    test_files: dict[int, Path]
    oof_tta: Path | None
    scores: dict | None
    submission: Path


def _run_info(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not path.is_file():
        raise KitError(f"{run_dir} is not a kit run folder (no run.json)")
    return json.loads(path.read_text())


def _resolve_folds(run_dir: Path, folds: Sequence[int] | None) -> list[int]:
    """The folds asked for, or every finished fold of the run (run.json lists only the last `kit train` call's)."""
    if folds is None:
        found = sorted(int(p.parent.name[4:]) for p in run_dir.glob("fold*/result.json") if p.parent.name[4:].isdigit())
        unfinished = sorted(p.parent.name for p in run_dir.glob("fold*/best.pt") if not (p.parent / "result.json").is_file())
        if unfinished:
            print(f"note: {', '.join(unfinished)} not finished (no result.json): left out")
        if not found:
            raise KitError(f"{run_dir} has no finished fold (no fold*/result.json): train it with kit train first")
        folds = found
    chosen = [int(k) for k in folds]
    if not chosen:
        raise ConfigError("no folds to predict")
    missing = [str(run_dir / f"fold{k}" / "best.pt") for k in chosen if not (run_dir / f"fold{k}" / "best.pt").is_file()]
    if missing:
        raise KitError(f"no checkpoint for {len(missing)} of the folds {chosen}: {', '.join(missing)} "
                       f"(train them with kit train --resume {run_dir})")
    return chosen


def _encoded_meta(ckpt: dict, table: pd.DataFrame) -> np.ndarray | None:
    if ckpt["model"]["n_meta"] == 0:
        return None
    if ckpt["meta_encoder"] is None:
        raise KitError(f"fold {ckpt.get('fold')}: the model takes metadata but its checkpoint has no meta_encoder")
    meta = MetaEncoder.from_dict(ckpt["meta_encoder"]).transform(table)
    if meta.shape[1] != ckpt["model"]["n_meta"]:
        raise KitError(f"fold {ckpt.get('fold')}: the metadata encoder gives {meta.shape[1]} features but the model "
                       f"takes {ckpt['model']['n_meta']}")
    return meta


def _train_rows(spec: Competition, data_dir: Path, run_dir: Path) -> pd.DataFrame:
    """The training table as the run saw it (ids of its folds.csv, in table order), for the OOF metadata."""
    table = load_train_table(spec, data_dir)
    kept = set(read_csv(run_dir / "folds.csv", [spec.id_col], what="folds file")[spec.id_col])
    return table[table["id"].isin(kept)].reset_index(drop=True)


def _tta_scores(spec: Competition, before: pd.DataFrame, after: pd.DataFrame, tta: TTA) -> dict:
    f0, cv0 = score_oof(spec, before)
    f1, cv1 = score_oof(spec, after)
    return {"metric": spec.metric, "tta": {"views": list(tta.views), "merge": tta.merge},
            "folds": {str(k): {"no_tta": f0[k], "tta": f1[k], "gain": f1[k] - f0[k]} for k in f0},
            "cv": {"no_tta": cv0, "tta": cv1, "gain": cv1 - cv0},
            "mean_of_folds": {"no_tta": float(np.mean(list(f0.values()))), "tta": float(np.mean(list(f1.values())))}}


def format_tta_scores(scores: dict) -> str:
    """The side-by-side table of CV without and with TTA printed by ``kit predict``."""
    label = f"TTA x{len(scores['tta']['views'])} ({scores['tta']['merge']})"
    before = f"{scores['metric']} no TTA"
    w0, w1 = max(len(before), 8), max(len(label), 8)
    lines = [f"{'fold':>6}  {before:>{w0}}  {label:>{w1}}  {'gain':>8}"]
    rows = [(k, v) for k, v in scores["folds"].items()] + [("CV", scores["cv"])]
    for k, v in rows:
        lines.append(f"{k:>6}  {v['no_tta']:>{w0}.4f}  {v['tta']:>{w1}.4f}  {v['gain']:>+8.4f}")
    return "\n".join(lines)


def predict_run(run_dir: str | Path, data_dir: str | Path | None = None, tta: str | int = "8", merge: str = "mean",
                folds: Sequence[int] | None = None, batch_size: int | None = None, fold_blend: str = "mean",
                out_dir: str | Path = "submissions", device: str = "auto", workers: int | None = None,
                report: bool = True, with_oof: bool = True) -> PredictResult:
    """Predict the test and OOF images with each fold's best.pt and TTA; blend the folds into a submission.

    ``with_oof=False`` predicts the test images only (a Kaggle kernel: the training images are not worth its time).
    """
    run_dir = Path(run_dir).resolve()  # its name names the submission, also when given as '.'
    info = _run_info(run_dir)
    data_dir = Path(data_dir or info["data"])
    if not data_dir.is_dir():
        raise KitError(f"data folder {data_dir} not found (from {run_dir / 'run.json'}); pass --data DIR")
    folds = _resolve_folds(run_dir, folds)
    get_view_set(tta)  # fail on a bad --tta before any checkpoint is read
    blend = get_blend(fold_blend)
    if blend.fitted:
        raise ConfigError(f"--fold-merge {fold_blend} fits weights; folds are blended with mean, rank or gmean")
    dev = resolve_device(device)

    spec: Competition | None = None
    test_table = test_source = train_source = train_rows = None
    test_preds, test_files, oof_frames = [], {}, []
    for k in folds:
        start = time.perf_counter()
        model, ckpt = load_fold_model(run_dir / f"fold{k}" / "best.pt", dev)
        if spec is None:
            spec = get_competition(ckpt["competition"])
            test_table = load_test_table(spec, data_dir)
            test_store = open_store(spec, data_dir, "test")
            check_images_exist(test_store, list(test_table["id"]), what="test ids")
            test_source = ImageSource(test_store, keep=True)
            train_source = ImageSource(open_store(spec, data_dir, "train"), keep=False) if with_oof else None
        elif ckpt["competition"] != spec.name:
            raise KitError(f"{run_dir}/fold{k}/best.pt is a {ckpt['competition']} model; fold {folds[0]} is {spec.name}")
        rt = _runtime(ckpt, dev)
        if rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        fold_tta = TTA(views=str(tta), merge=merge, task=spec.task)
        size, cached = int(ckpt["input_size"]), bool(ckpt["config"]["train"]["cache_images"])
        bs = batch_size or max(1, 2 * ckpt["config"]["train"]["batch_size"]
                               // default_views_per_forward(dev, len(fold_tta.views)))
        n_workers = _workers(ckpt, dev) if workers is None else workers

        oof_note = ""
        if with_oof:
            oof = pd.read_csv(run_dir / f"fold{k}" / "oof.csv", dtype={spec.id_col: str})
            oof_ids = oof[spec.id_col].tolist()
            check_images_exist(train_source.store, oof_ids, what=f"fold {k} out-of-fold ids")
            oof_meta = None
            if rt.use_meta:
                train_rows = _train_rows(spec, data_dir, run_dir) if train_rows is None else train_rows
                encoded = _encoded_meta(ckpt, train_rows)
                oof_meta = encoded[pd.Index(train_rows["id"]).get_indexer(oof_ids)]
            oof_probs = predict_dataset(model, train_source.dataset(oof_ids, size, cached, oof_meta), rt, fold_tta, bs,
                                        n_workers)
            oof_frames.append(_frame(spec, oof_ids, oof_probs, fold=k, target=oof["target"].to_numpy()))
            oof_note = f"{len(oof_ids)} out-of-fold + "

        test_meta = _encoded_meta(ckpt, test_table) if rt.use_meta else None
        probs = predict_dataset(model, test_source.dataset(test_table["id"], size, cached, test_meta), rt, fold_tta,
                                bs, n_workers)
        test_files[k] = write_csv_atomic(_frame(spec, test_table["id"].to_numpy(), probs),
                                         run_dir / f"test_fold{k}.csv")
        test_preds.append(probs)
        print(f"fold {k}: {oof_note}{len(test_table)} test images, TTA x{len(fold_tta.views)} "
              f"({merge}) in {time.perf_counter() - start:.1f}s", flush=True)
        del model

    oof_path = scores = None
    if with_oof:
        oof_tta = pd.concat(oof_frames, ignore_index=True)
        oof_path = write_csv_atomic(oof_tta, run_dir / "oof_tta.csv")
        scores = _tta_scores(spec, collect_oof(spec, run_dir, folds), oof_tta, fold_tta)
        write_text_atomic(run_dir / "scores_tta.json", json.dumps(scores, indent=2))
        print(format_tta_scores(scores))

    from kit.submission import write_submission

    test = blend.combine(test_preds, np.full(len(test_preds), 1.0 / len(test_preds)), spec.task)
    if blend.note(spec.task):
        print(f"note: {blend.note(spec.task)}")
    submission = write_submission(spec, test_table["id"].tolist(), test, run_dir.name, out_dir,
                                  expected_ids=test_table["id"].tolist())
    write_text_atomic(run_dir / "predict.json", json.dumps({
        "folds": folds, "data": str(data_dir.resolve()), "tta": {"views": list(fold_tta.views), "merge": merge},
        "fold_merge": fold_blend, "oof": oof_path.name if oof_path else None, "submission": str(submission)}, indent=2))
    print(f"wrote {submission} ({fold_blend} of {len(folds)} fold{'s' * (len(folds) > 1)})")
    if report:
        from kit.report import write_report

        paths = write_report(run_dir)
        print(f"report: {len(paths)} plots in {run_dir / 'report'}")
    return PredictResult(run_dir, folds, test_files, oof_path, scores, submission)


def _workers(ckpt: dict, device: torch.device) -> int:
    n = ckpt["config"]["train"]["num_workers"]
    return n if n >= 0 else (0 if device.type == "cpu" else min(8, os.cpu_count() or 1))
