"""model.init_from (warm start, growing sizes): fold k starts from fold k's best weights of an earlier run, at its own
image size from its own pack; a run whose folds disagree is refused before anything is written."""

from __future__ import annotations

import pytest
import torch
from conftest import PREDICTED_RUNS, TINY

from kit.checkpoint import load_checkpoint
from kit.cli import main
from kit.config import load_config
from kit.data.pack import pack_path
from kit.errors import DataError
from kit.rundir import RunDir
from kit.train import FoldTrainer, prepare_data, train_folds

COMPETITION, _, MULTI, _ = PREDICTED_RUNS["multi"]


@pytest.fixture(scope="module")
def source(predicted_runs):
    """The tiny multiclass run of the session (32 px, metadata branch) and its data folder."""
    run = predicted_runs["multi"].run_dir
    return run, RunDir(run).data_dir()


def warm_config(source_run, *more: str):
    return load_config(COMPETITION, overrides=[*TINY, *MULTI, f"model.init_from={source_run}", *more])


def test_each_fold_starts_from_the_same_fold_of_the_earlier_run_at_a_larger_size(source, tmp_path):
    source_run, data = source
    cfg = warm_config(source_run, "model.img_size=40")
    prepared = prepare_data(cfg, data, RunDir(tmp_path / "probe"))
    for k in (0, 1):
        trainer = FoldTrainer(cfg, prepared, k, RunDir(tmp_path / "probe"))
        theirs = load_checkpoint(source_run / f"fold{k}" / "best.pt").model_state
        ours = trainer.model.state_dict()
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    assert prepared.input_size == 40


def test_a_warm_started_run_trains_from_its_own_pack(source, tmp_path, pack_cache_dir, capsys):
    source_run, data = source
    result = train_folds(warm_config(source_run, "model.img_size=40"), data, tmp_path / "stage2")
    assert set(result.fold_scores) == {0, 1}
    out = capsys.readouterr().out
    assert f"warm start from {source_run}" in out and "40 px" in out
    for size in (32, 40):  # the first stage's pack and the second's, side by side
        assert (pack_path(COMPETITION, data, "train", size, pack_cache_dir) / "manifest.json").is_file()
    saved = RunDir(tmp_path / "stage2").config()
    assert saved.model.init_from == str(source_run)  # stored relative to the run, read back as a path


def test_init_from_a_run_with_other_folds_is_refused_in_one_line(source, tmp_path, capsys):
    source_run, data = source
    with pytest.raises(DataError, match="in another fold"):
        train_folds(warm_config(source_run, "fold_seed=7"), data, tmp_path / "leaky")
    assert not (tmp_path / "leaky").exists()
    argv = ["train", "-c", COMPETITION, "--data", str(data), "--out", str(tmp_path / "leaky"), "--no-progress"]
    for pair in [*TINY, *MULTI, f"model.init_from={source_run}", "n_folds=3"]:
        argv += ["--set", pair]
    assert main(argv) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # the rest: notes
    assert len(err) == 1 and "3 folds" in err[0] and "never have seen its validation rows" in err[0]
    assert not (tmp_path / "leaky").exists()


def test_init_from_another_network_is_refused(source, tmp_path):
    source_run, data = source
    cfg = warm_config(source_run, "model.name=resnet18")
    prepared = prepare_data(cfg, data, RunDir(tmp_path / "probe"))
    with pytest.raises(Exception, match="holds model test_resnet, this run has resnet18"):
        FoldTrainer(cfg, prepared, 0, RunDir(tmp_path / "probe"))
