"""How a run reads its images at scale: one pack per split and size, shared (never copied) by every fold, epoch,
run and prediction; every positive and a fresh subset of negatives per epoch; a bad image read by a DataLoader worker
reported in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kit.cli import main
from kit.config import load_config
from kit.data.pack import PackRows, pack_path
from kit.data.sampling import subsample_negatives
from kit.errors import ConfigError
from kit.rundir import RunDir
from kit.train import FoldTrainer, prepare_data, train_folds

HCD = "histopathologic-cancer-detection"
TINY = ["model.name=test_resnet", "model.img_size=32", "train.batch_size=16", "train.epochs=1", "n_folds=2",
        "train.device=cpu", "train.warmup_epochs=0"]


def _sets(overrides: list[str]) -> list[str]:
    return [arg for kv in overrides for arg in ("--set", kv)]


@pytest.fixture(scope="module")
def data(demo_data):
    return demo_data(HCD, n=64)


def test_folds_and_epochs_index_the_pack_without_copying_it(data, tmp_path, pack_cache_dir):
    cfg = load_config(HCD, overrides=TINY + ["train.negatives_per_positive=1"])
    run = RunDir(tmp_path / "run")
    prepared = prepare_data(cfg, data, run)
    pack = pack_path(HCD, data, "train", 32)
    assert pack.parent == pack_cache_dir and (pack / "manifest.json").is_file()
    images = prepared.dataset.images
    assert isinstance(images, PackRows) and images.shape == (64, 32, 32, 3)
    trainer = FoldTrainer(cfg, prepared, 0, run)
    epoch = trainer.epoch_dataset(0)
    for ds in (trainer.train_ds, trainer.val_ds, epoch):
        assert ds.images is images and ds.meta is prepared.dataset.meta  # views of one array, no copies
        assert ds.ids.dtype.kind == "U"  # fixed-width strings: forked workers do not copy-on-read them
    assert sorted(np.concatenate([trainer.train_ds.rows, trainer.val_ds.rows])) == list(range(64))
    # a row of a fold is the pack's row of that id, decoded once
    item = trainer.val_ds.with_transform(lambda img: img)[0]
    row = trainer.val_ds.rows[0]
    pixels = pack_images(pack)[prepared.dataset.image_rows[row]]
    np.testing.assert_array_equal(item["image"], pixels)
    # read with pread, not mapped: a long epoch over a big pack does not count its pages in the process's RSS
    assert str(pack / "images.u8") not in Path("/proc/self/maps").read_text()


def pack_images(pack: Path) -> np.ndarray:
    n = len(pd.read_csv(pack / "ids.csv"))
    return np.fromfile(pack / "images.u8", dtype=np.uint8).reshape(n, 32, 32, 3)


def test_every_positive_and_a_fresh_subset_of_negatives_each_epoch():
    targets = np.array([1] * 10 + [0] * 200)
    rows = np.arange(5, 210)  # a fold's training rows: 5 positives, 200 negatives
    e0, e1 = (subsample_negatives(rows, targets, 3, seed) for seed in (11, 12))
    for chosen in (e0, e1):
        assert set(np.arange(5, 10)) <= set(chosen) and len(chosen) == 5 + 15 and set(chosen) <= set(rows)
        assert len(np.unique(chosen)) == len(chosen)
    assert set(e0) != set(e1)  # new negatives each epoch
    np.testing.assert_array_equal(e0, subsample_negatives(rows, targets, 3, 11))  # the same draw on resume
    np.testing.assert_array_equal(subsample_negatives(rows, targets, 0, 11), rows)
    assert len(subsample_negatives(rows, targets, 1000, 11)) == len(rows)  # asks for more than there are


def test_negative_subsampling_trains_on_the_subset_and_resumes_exactly(data, tmp_path, capsys):
    overrides = TINY + ["train.negatives_per_positive=1"]
    cfg = load_config(HCD, overrides=overrides + ["train.epochs=2"])
    full = train_folds(cfg, data, tmp_path / "full", folds=[0])
    history = pd.read_csv(tmp_path / "full" / "fold0" / "history.csv")
    assert len(history) == 2
    # the same run stopped after its first epoch, then resumed for the second: the same weights, the same OOF

    class Stop(Exception):
        pass

    def stop_after_the_first_epoch(fold, epoch, metric):
        raise Stop

    with pytest.raises(Stop):
        train_folds(cfg, data, tmp_path / "split", folds=[0], on_epoch=stop_after_the_first_epoch)
    capsys.readouterr()
    resumed = train_folds(cfg, data, tmp_path / "split", folds=[0])
    assert "fold 0: resuming after epoch 1" in capsys.readouterr().out
    a = pd.read_csv(tmp_path / "full" / "fold0" / "oof.csv")
    b = pd.read_csv(tmp_path / "split" / "fold0" / "oof.csv")
    np.testing.assert_allclose(a["pred"], b["pred"], rtol=1e-5, atol=1e-6)
    assert resumed.cv_score == pytest.approx(full.cv_score, abs=1e-6)


def test_negative_subsampling_needs_a_binary_target_and_no_second_rebalancing():
    with pytest.raises(ConfigError, match="needs a binary target"):
        load_config("isic-2018-task3", overrides=["train.negatives_per_positive=3"])
    with pytest.raises(ConfigError, match="set one of them"):
        load_config(HCD, overrides=["train.negatives_per_positive=3", "train.balanced_sampler=true"])


def test_a_corrupt_image_read_by_a_loader_worker_is_one_line(demo_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_data(HCD, n=40), data)
    victim = sorted((data / "train").glob("*.tif"))[3]
    victim.write_bytes(b"not a tiff at all")
    cmd = [sys.executable, "-m", "kit.cli", "train", "--competition", HCD, "--data", str(data), "--out",
           str(tmp_path / "run"), *_sets(TINY + ["train.cache_images=false", "train.num_workers=1"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("kit train: error: ") and victim.name in lines[-1], proc.stderr[-2000:]
    assert "DataLoader worker process" in lines[-1] and "Traceback" not in proc.stderr


def test_predict_reads_the_same_packs(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--competition", HCD, "--data", str(data), "--out", str(run), *_sets(TINY)]) == 0
    assert "pack" in capsys.readouterr().out
    assert main(["predict", str(run), "--tta", "2"]) == 0
    out = capsys.readouterr().out
    assert "reused pack" in out and "test images" in out
    assert (pack_path(HCD, data, "test", 32) / "manifest.json").is_file()
