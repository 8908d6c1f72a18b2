"""Past one process: DDP under torchrun (gloo on the CPU) and one fold per device (``--devices cpu,cpu``).

Every run here trains the same tiny config (classic_cnn without dropout or BatchNorm, no augmentation), for which
two processes sharing each global batch compute what one process computes, so the runs are compared prediction by
prediction with the single-process reference, not only by their CV.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kit.cli import main
from kit.config import load_config
from kit.distributed import EpochSampler, Group
from kit.errors import ConfigError
from kit.records import FoldResult, Scores
from kit.rundir import RunDir
from kit.train import train_folds

SETS = ["model.name=classic_cnn", "model.img_size=48", "aug.preset=none", "n_folds=2", "train.epochs=2",
        "train.batch_size=8", "train.device=cpu", "train.lr=0.003"]
ARGS = ["--competition", "histopathologic-cancer-detection", "--no-progress",
        *[a for s in SETS for a in ("--set", s)]]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def data(demo_data):
    return demo_data("histopathologic-cancer-detection", n=48)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The single-process run every other run is compared with."""
    run = tmp_path_factory.mktemp("ref") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as the OMP_NUM_THREADS=1 subprocesses
    try:
        train_folds(load_config("histopathologic-cancer-detection", overrides=SETS), data, run)
    finally:
        torch.set_num_threads(threads)
    return run


def _oof(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "oof.csv", dtype={"id": str}).sort_values("id").reset_index(drop=True)


def _assert_same_predictions(run: Path, reference: Path, atol: float) -> None:
    oof, ref = _oof(run), _oof(reference)
    folds = pd.read_csv(reference / "folds.csv", dtype={"id": str})
    assert not oof["id"].duplicated().any()  # no row predicted twice (no padding of the last shard)
    assert sorted(oof["id"]) == sorted(folds["id"])  # every validation id, exactly once
    np.testing.assert_allclose(oof["pred"], ref["pred"], atol=atol)
    scores, ref_scores = RunDir(run).load(Scores), RunDir(reference).load(Scores)
    assert scores.cv == pytest.approx(ref_scores.cv, abs=1e-3)


def _torchrun(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "kit",
           "train", *args]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class _Output:
    """A process's output, read in the background so that the test can wait for a line without blocking."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.thread.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)


# ------------------------------------------------------------------------------------------------- units
def test_the_ranks_parts_make_up_the_single_process_batches():
    one = list(EpochSampler(30, 8, seed=5))
    parts = [list(EpochSampler(30, 8, seed=5, rank=r, world=2)) for r in range(2)]
    assert len(one) == 24 and len(parts[0]) == len(parts[1]) == 12  # 3 whole batches, the rest dropped
    for i in range(3):  # global batch i is rank 0's part i followed by rank 1's
        assert one[8 * i:8 * i + 8] == parts[0][4 * i:4 * i + 4] + parts[1][4 * i:4 * i + 4]
    assert len(set(one)) == 24
    assert list(EpochSampler(30, 8, seed=6)) != one  # seeded per epoch
    weighted = list(EpochSampler(30, 8, seed=5, weights=np.r_[np.zeros(29), 1.0]))
    assert set(weighted) == {29}
    assert len(list(EpochSampler(5, 8, seed=1, rank=1, world=2))) == 4  # smaller than a batch: filled


def test_shards_have_no_padding_and_cover_every_row():
    rows = np.arange(11)
    shards = [Group(r, 3).shard(rows) for r in range(3)]
    assert sorted(np.concatenate(shards)) == list(rows) and [len(s) for s in shards] == [4, 4, 3]


def test_sync_batchnorm_without_gpus_is_one_line():
    with pytest.raises(ConfigError, match="sync_bn=true needs GPUs"):
        Group(0, 2).sync_batchnorm(torch.nn.BatchNorm2d(3), torch.device("cpu"))
    model = torch.nn.BatchNorm2d(3)
    assert Group().sync_batchnorm(model, torch.device("cpu")) is model  # one process: nothing to synchronise


def test_a_fold_lock_covers_only_its_fold(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.writing(fold=1):
        run.save(FoldResult(1, 0.5, 1, 1), fold=1)
        with pytest.raises(RuntimeError, match="without its lock"):
            run.save(Scores("auc", 0.5, 0.5, {}))
        with pytest.raises(RuntimeError, match="without its lock"):
            run.save(FoldResult(0, 0.5, 1, 1), fold=0)
    assert (run.fold_dir(1) / ".kit-lock").is_file()


@pytest.mark.parametrize("devices, message", [("7", "GPU 7 is not here"), ("gpu", "neither a GPU index")])
def test_bad_devices_are_one_line(data, tmp_path, capsys, devices, message):
    if devices == "7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    code = main(["train", *ARGS, "--data", str(data), "--out", str(tmp_path / "r"), "--devices", devices])
    assert code == 1 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _collectives(rank: int, port: int, results) -> None:
    """Rank ``rank`` of 2 on gloo: what every collective of kit.distributed gives."""
    import torch.distributed as td

    from kit.distributed import DistributedError, current_group

    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    g = current_group()
    out = {"rank": g.rank, "world": g.world}
    rows = np.arange(7.0) * 10
    out["gathered"] = g.gather_rows(g.shard(rows) + 0, 7).tolist()
    out["mean"] = g.mean(float(rank))
    out["broadcast"] = g.broadcast(f"from {rank}")

    def refuse():
        raise ConfigError("no")
    try:
        g.on_main(refuse)
    except (ConfigError, DistributedError) as e:
        out["on_main"] = f"{type(e).__name__}: {e}"

    def budget(k, epoch, metric):  # a callback that would decide differently on each rank
        if rank == 0:
            raise TimeoutError("budget")
    try:
        g.decided_by_main(budget)(0, 1, 0.5)
        out["decided"] = "went on"
    except TimeoutError:
        out["decided"] = "stopped"
    td.destroy_process_group()
    results.put(out)


def test_the_collectives_on_two_gloo_ranks():
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_collectives, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    out = sorted((results.get(timeout=120) for _ in procs), key=lambda o: o["rank"])
    for p in procs:
        p.join(timeout=60)
    assert [o["gathered"] for o in out] == [list(np.arange(7.0) * 10)] * 2  # every row once, in order
    assert [o["mean"] for o in out] == [0.5, 0.5] and [o["broadcast"] for o in out] == ["from 0"] * 2
    assert out[0]["on_main"] == "ConfigError: no" and out[1]["on_main"] == "DistributedError: rank 0 stopped: no"
    assert [o["decided"] for o in out] == ["stopped", "stopped"]  # rank 0 decided for both


# ---------------------------------------------------------------------------------------- DDP, 2 ranks
def test_ddp_run_predicts_every_validation_id_once_as_one_process_does(data, reference, tmp_path):
    run = tmp_path / "ddp"
    proc = _torchrun(*ARGS, "--data", str(data), "--out", str(run))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert out.count("fold 0 epoch 1/2") == 1  # rank 1 prints nothing on stdout
    _assert_same_predictions(run, reference, atol=1e-4)
    assert len(pd.read_csv(run / "fold0" / "history.csv")) == 2
    assert not list(run.rglob("*.tmp"))

    again = _torchrun(*ARGS, "--data", str(data), "--out", str(run))  # rank 0 refuses; rank 1 must not wait for it
    out, _ = again.communicate(timeout=300)
    assert again.returncode != 0
    assert "kit train: error: " + str(run) + " already holds a run" in out, out
    assert "kit train: error: rank 0 stopped: " in out, out  # rank 1's one line


def test_killing_one_rank_ends_the_run_and_resume_finishes_it(data, reference, tmp_path):
    run = tmp_path / "killed"
    proc = _torchrun(*ARGS, "--data", str(data), "--out", str(run))
    output = _Output(proc)
    deadline = time.monotonic() + 240
    while not RunDir(run).last_path(0).is_file():  # the first epoch is checkpointed: the second is under way
        assert proc.poll() is None and time.monotonic() < deadline, output.text
        time.sleep(0.1)
    rank1 = next(int(line.split()[4]) for line in output.lines if "kit: rank 1/2 pid" in line)
    os.kill(rank1, 9)
    proc.wait(timeout=120)  # no hang: the other rank is stopped as well
    output.thread.join(timeout=10)
    assert proc.returncode != 0
    assert "stopped by SIGTERM" in output.text or "lost contact" in output.text, output.text
    assert not (run / "oof.csv").exists()

    resumed = _torchrun("--resume", str(run))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    # on a fast machine fold 0 may have finished before the kill landed: then fold 1 is the one cut short
    assert "fold 0: resuming after epoch" in out or "fold 0: already finished, skipped" in out, out
    _assert_same_predictions(run, reference, atol=1e-4)


# ------------------------------------------------------------------------------------ one fold per device
def test_parallel_folds_match_sequential_and_a_failed_fold_reruns_alone(data, reference, tmp_path, capsys):
    run = RunDir(tmp_path / "parallel")
    with run.writing(fold=1):  # fold 1's process finds its fold locked (a stray trainer, say) and fails
        code = main(["train", *ARGS, "--data", str(data), "--out", str(run.path), "--devices", "cpu,cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 of 2 folds failed: fold 1" in err and f"--resume {run.path} --folds 1" in err, err
    assert "being written by" in err  # the end of the fold's own log
    assert run.result_path(0).is_file() and not run.result_path(1).is_file()
    assert not run.oof_path.exists() and not run.record_path(Scores).exists()  # no summary of a partial run

    assert main(["train", "--resume", str(run.path), "--folds", "1", "--devices", "cpu", "--no-progress"]) == 0
    assert "fold 1: finished on cpu" in capsys.readouterr().out
    _assert_same_predictions(run.path, reference, atol=1e-6)


def test_resume_folds_must_be_the_runs(reference, capsys):
    assert main(["train", "--resume", str(reference), "--folds", "5"]) == 1
    assert "fold 5 is not one of this run's folds (0,1)" in capsys.readouterr().err
