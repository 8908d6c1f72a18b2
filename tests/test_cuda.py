"""kit's CUDA paths on a real GPU: AMP (bf16, fp16 with a GradScaler), channels_last, pinned memory with workers,
stacked TTA, on-device augmentation, torch.compile, ``--devices 0``, and a GPU-trained run predicted on the CPU.

Marked ``cuda`` and skipped without a GPU (CI has none; tests/test_runtime_paths.py runs what it can of these paths
on the CPU). Run them on a GPU machine with ``pytest -m cuda``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from kit.checkpoint import load_checkpoint
from kit.cli import main
from kit.config import load_config
from kit.pipeline import predict_and_submit
from kit.train import train_folds
from kit.tta import TTA

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HCD = "histopathologic-cancer-detection"
GPU = ["model.name=test_resnet", "model.pretrained=false", "n_folds=2", "train.epochs=2", "train.warmup_epochs=0",
       "train.batch_size=16", "train.device=cuda", "train.channels_last=on", "train.num_workers=2"]


def _submission(run, out_dir, device: str) -> pd.DataFrame:
    _, path = predict_and_submit(run, tta="8", out_dir=out_dir, device=device, report=False)
    return pd.read_csv(path)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_gpu_run_trains_predicts_and_its_checkpoints_predict_the_same_on_the_cpu(demo_data, tmp_path, amp):
    data = demo_data(HCD, n=96)
    cfg = load_config(HCD, overrides=[*GPU, f"train.amp={amp}"])
    result = train_folds(cfg, data, tmp_path / "run")
    assert np.isfinite(result.cv_score)
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    labels = pd.read_csv(data / "train_labels.csv")
    assert sorted(oof["id"]) == sorted(labels["id"])  # every id once
    state = load_checkpoint(tmp_path / "run" / "fold0" / "last.pt").training
    assert (state.scaler is not None) == (amp == "fp16")  # the fp16 GradScaler's scale is saved for --resume
    shutil.copytree(tmp_path / "run", tmp_path / "run-cpu")
    on_gpu = _submission(tmp_path / "run", tmp_path / "sub-gpu", "cuda")
    on_cpu = _submission(tmp_path / "run-cpu", tmp_path / "sub-cpu", "cpu")  # fp32 on the CPU
    assert list(on_gpu["id"]) == list(on_cpu["id"])
    assert np.abs(on_gpu["label"] - on_cpu["label"]).max() < 0.03  # autocast's rounding, nothing more


def test_stacked_tta_on_the_gpu_predicts_what_one_view_per_forward_does():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=1).cuda().eval().to(memory_format=torch.channels_last)
    images = torch.rand(16, 3, 96, 96, device="cuda").contiguous(memory_format=torch.channels_last)
    stacked = TTA("8", views_per_forward=8)(model, images)
    per_view = TTA("8", views_per_forward=1)(model, images)
    torch.testing.assert_close(stacked, per_view, atol=1e-4, rtol=1e-3)


def test_on_device_augmentation_and_compile_train_on_the_gpu(demo_data, tmp_path):
    data = demo_data(HCD, n=64)
    cfg = load_config(HCD, overrides=[*GPU, "train.epochs=1", "train.amp=bf16", "aug.on_device=true",
                                      "train.compile=true"])
    result = train_folds(cfg, data, tmp_path / "run")
    assert np.isfinite(result.cv_score)
    ckpt = load_checkpoint(tmp_path / "run" / "fold0" / "best.pt")
    ckpt.build_model()  # compiled in place: the checkpoint loads into the plain model
    assert ckpt.config["aug"]["on_device"] and ckpt.config["train"]["compile"]


def test_devices_0_trains_each_fold_in_a_process_on_the_gpu(demo_data, tmp_path, capsys):
    data = demo_data(HCD, n=64)
    args = ["train", "-c", HCD, "--data", str(data), "--out", str(tmp_path / "run"), "--devices", "0",
            "--no-progress", *[a for o in GPU for a in ("--set", o.replace("train.device=cuda", "train.device=auto"))]]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fold 0: training on cuda:0" in out and "fold 1: finished on cuda:0" in out
    log = (tmp_path / "run" / "fold1" / "train.log").read_text()
    assert "fold 1 epoch 2/2" in log
