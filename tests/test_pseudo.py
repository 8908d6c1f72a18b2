"""Pseudo-labels (kit pseudo RUN, data.pseudo): fold k trains also on the test images fold k's model of a predicted
run is confident about, with its probabilities as targets; they never validate and never reach oof.csv or the CV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import PREDICTED_RUNS, TINY

from kit.cli import main
from kit.config import load_config
from kit.errors import ConfigError, DataError
from kit.rundir import RunDir
from kit.train import prepare_data, train_folds

COMPETITION, _, MULTI, _ = PREDICTED_RUNS["multi"]
CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


@pytest.fixture(scope="module")
def source(predicted_runs):
    """The session's tiny predicted multiclass run (32 px, 2 folds) and its data folder."""
    run = predicted_runs["multi"].run_dir
    return run, RunDir(run).data_dir()


@pytest.fixture(scope="module")
def pseudo_run(source, tmp_path_factory):
    """``kit pseudo`` with every test image kept (threshold 0)."""
    run, _ = source
    out = tmp_path_factory.mktemp("pseudo") / "round1"
    assert main(["pseudo", str(run), "--out", str(out), "--threshold", "0", "--no-progress"]) == 0
    return out


def test_every_fold_trains_on_the_test_images_and_history_counts_them(pseudo_run, source):
    run, data = source
    n_test = len(pd.read_csv(run / "test_fold0.csv"))
    folds = pd.read_csv(pseudo_run / "folds.csv")
    for k in (0, 1):
        history = pd.read_csv(pseudo_run / f"fold{k}" / "history.csv")
        assert list(history["pseudo_images"]) == [n_test]
        assert list(history["train_images"]) == [int((folds["fold"] != k).sum()) + n_test]


def test_test_images_never_validate_nor_reach_oof_or_cv(pseudo_run, source):
    run, _ = source
    test_ids = set(pd.read_csv(run / "test_fold0.csv", dtype=str)["image"])
    own = set(pd.read_csv(run / "folds.csv", dtype=str)["image"])
    assert test_ids and not test_ids & own
    assert set(pd.read_csv(pseudo_run / "folds.csv", dtype=str)["image"]) == own
    for name in ("oof.csv", "fold0/oof.csv", "fold1/oof.csv"):
        assert not set(pd.read_csv(pseudo_run / name, dtype=str)["image"]) & test_ids
    oof = pd.read_csv(pseudo_run / "oof.csv", dtype=str)
    assert set(oof["image"]) == own and len(oof) == len(own)  # the CV is over the labelled rows alone
    saved = yaml.safe_load((pseudo_run / "config.yaml").read_text())["data"]
    assert saved["pseudo_threshold"] == 0.0 and not saved["pseudo"].startswith("/")  # relative to the new run


def test_fold_k_is_labelled_by_fold_k_with_its_confident_rows_and_probabilities(source, tmp_path):
    run, data = source
    top = pd.read_csv(run / "test_fold0.csv")[CLASSES].to_numpy().max(axis=1)
    threshold = float(np.median(top))  # some test images kept, some not
    cfg = load_config(COMPETITION, overrides=[*TINY, *MULTI, f"data.pseudo={run}",
                                              f"data.pseudo_threshold={threshold}"])
    prepared = prepare_data(cfg, data, RunDir(tmp_path / "probe"), folds_file=run / "folds.csv")
    for k in (0, 1):
        frame = pd.read_csv(run / f"test_fold{k}.csv", dtype={"image": str})
        probs = frame[CLASSES].to_numpy()
        keep = probs.max(axis=1) >= threshold
        assert k or 0 < keep.sum() < len(keep)
        rows = prepared.training_only_rows(k, pseudo_only=True)
        assert list(prepared.dataset.ids[rows]) == list(frame["image"][keep])
        np.testing.assert_allclose(prepared.dataset.soft[rows], probs[keep] / probs[keep].sum(1, keepdims=True),
                                   rtol=1e-5)
        assert list(prepared.train_targets[rows]) == list(probs[keep].argmax(1))
    own = np.flatnonzero(prepared.fold >= 0)  # the labelled rows: their soft targets are one-hot
    np.testing.assert_array_equal(prepared.dataset.soft[own].argmax(1), prepared.train_targets[own])
    assert prepared.dataset.soft[own].max(1).min() == 1.0


def test_hard_labels_need_no_soft_targets(source, tmp_path):
    run, data = source
    cfg = load_config(COMPETITION, overrides=[*TINY, *MULTI, f"data.pseudo={run}", "data.pseudo_hard=true",
                                              "data.pseudo_threshold=0"])
    prepared = prepare_data(cfg, data, RunDir(tmp_path / "probe"), folds_file=run / "folds.csv")
    assert prepared.dataset.soft is None and len(prepared.training_only_rows(1, pseudo_only=True)) > 0


def test_another_image_size_is_refused_in_one_line(source, tmp_path, capsys):
    run, _ = source
    out = tmp_path / "bigger"
    assert main(["pseudo", str(run), "--out", str(out), "--set", "model.img_size=40", "--no-progress"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # the rest: notes
    assert len(err) == 1 and "predicted at 32 px, this run trains at 40 px" in err[0]
    assert not out.exists()


def test_another_competition_or_other_folds_are_refused(source, predicted_runs, tmp_path, demo_data):
    run, data = source
    hcd = predicted_runs["hcd_a"].run_dir
    cfg = load_config(COMPETITION, overrides=[*TINY, *MULTI, f"data.pseudo={hcd}"])
    with pytest.raises(ConfigError, match="is a histopathologic-cancer-detection run, this run is isic-2018-task3"):
        train_folds(cfg, data, tmp_path / "other")
    cfg = load_config(COMPETITION, overrides=[*TINY, *MULTI, f"data.pseudo={run}", "fold_seed=7"])
    with pytest.raises(DataError, match="never have seen its validation rows"):
        train_folds(cfg, data, tmp_path / "leaky")
    assert not (tmp_path / "other").exists() and not (tmp_path / "leaky").exists()
