"""train.loggers: kit train and each kit tune trial send their epochs, config, scores and plots to TensorBoard and
MLflow, read back with the libraries' own readers: tensorboard's EventAccumulator, mlflow.search_runs against a
file store and against a real `mlflow server` on the loopback; a missing package is one line naming the extra."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY

from kit.cli import main

pytest.importorskip("mlflow", reason="the trackers extra: pip install 'kit[trackers]'")
pytest.importorskip("tensorboard", reason="the trackers extra: pip install 'kit[trackers]'")

HCD = "histopathologic-cancer-detection"
EXPERIMENT = f"kit-{HCD}"


def train_args(data: Path, out: Path, *overrides: str) -> list[str]:
    args = ["train", "--competition", HCD, "--data", str(data), "--out", str(out), "--no-progress"]
    for pair in [*TINY, "train.epochs=2", *overrides]:
        args += ["--set", pair]
    return args


def search(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="pandas")
    finally:
        mlflow.set_tracking_uri(None)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


# ------------------------------------------------------------------------------------------------ one line
def test_a_missing_tracker_package_is_one_line_naming_the_extra(demo_data, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    out = tmp_path / "run"
    assert main(train_args(demo_data(HCD, n=60), out, "train.loggers=[tensorboard,mlflow]")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mlflow" in err and "pip install 'kit[trackers]'" in err
    assert not out.exists()  # refused before anything was written


def test_an_unknown_logger_is_refused_when_the_config_is_built(capsys):
    assert main(["config", "show", "--set", "train.loggers=[tensorbord]"]) == 1
    assert "did you mean tensorboard" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- kit train, file store
@pytest.fixture(scope="module")
def tracked_run(demo_data, tmp_path_factory):
    """kit train with both trackers, MLflow on a local file store (MLflow 3 asks for MLFLOW_ALLOW_FILE_STORE)."""
    root = tmp_path_factory.mktemp("tracked")
    uri = (root / "mlruns").as_uri()
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        assert main(train_args(demo_data(HCD, n=60), root / "run", "train.loggers=[tensorboard,mlflow]",
                               f"train.mlflow_uri={uri}")) == 0
        yield root / "run", uri
    finally:
        mp.undo()


def test_tensorboard_holds_each_epoch_of_each_fold_and_the_run_summary(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = tracked_run
    for k in (0, 1):
        history = pd.read_csv(run / f"fold{k}" / "history.csv")
        events = EventAccumulator(str(run / "tensorboard" / f"fold{k}"))
        events.Reload()
        assert {"train_loss", "val_loss", "auc", "lr", "images_per_s"} <= set(events.Tags()["scalars"])
        for key in ("val_loss", "auc", "lr"):
            logged = events.Scalars(key)
            assert [e.step for e in logged] == history["epoch"].tolist() == [1, 2]
            assert [e.value for e in logged] == pytest.approx(history[key].tolist(), rel=1e-6)
    summary = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    summary.Reload()
    assert {"report/roc", "report/training_curves"} <= set(summary.Tags()["images"])
    assert all(im.width > 100 and im.height > 100 for im in summary.Images("report/roc"))
    config = summary.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "competition: histopathologic-cancer-detection" in config and "loggers:" in config
    assert summary.Scalars("cv")[0].value == pytest.approx(_cv(run), rel=1e-6)


def _cv(run: Path) -> float:
    import json

    return json.loads((run / "scores.json").read_text())["cv"]


def test_mlflow_file_store_holds_the_run_its_folds_and_its_artifacts(tracked_run):
    from mlflow.tracking import MlflowClient

    run, uri = tracked_run
    runs = search(uri)
    parent = runs[runs["tags.kit.run_dir"] == str(run.resolve())]
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    assert parent["metrics.cv"].iloc[0] == pytest.approx(_cv(run), rel=1e-6)
    assert parent["params.train.epochs"].iloc[0] == "2" and parent["params.model.name"].iloc[0] == "test_resnet"
    parent_id = parent["run_id"].iloc[0]
    folds = runs[runs["tags.mlflow.parentRunId"] == parent_id].sort_values("tags.kit.fold")
    assert folds["tags.kit.fold"].tolist() == ["0", "1"] and set(folds["status"]) == {"FINISHED"}
    for k, fold_id in zip((0, 1), folds["run_id"], strict=True):
        history = pd.read_csv(run / f"fold{k}" / "history.csv")
        logged = metric_history(uri, fold_id, "val_loss")
        assert [s for s, _ in logged] == [1, 2]
        assert [v for _, v in logged] == pytest.approx(history["val_loss"].tolist(), rel=1e-6)
    client = MlflowClient(uri)
    assert "config.yaml" in [a.path for a in client.list_artifacts(parent_id)]
    assert {"report/roc.png", "report/training_curves.png"} <= {a.path for a in client.list_artifacts(parent_id,
                                                                                                        "report")}


# ------------------------------------------------------------------------------------ kit tune, mlflow server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on the loopback (SQLite backend, artifacts proxied), stopped at the end."""
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination",
                             str(tmp_path / "artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # its imports and database set-up take a minute on a busy CPU
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # the server and its uvicorn worker
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_tune_trials_nest_under_the_study_on_a_real_mlflow_server(demo_data, tmp_path, mlflow_server):
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {type: float, low: 1e-4, high: 1e-2, log: true}\n")
    args = ["tune", "--competition", HCD, "--data", str(demo_data(HCD, n=60)), "--space", str(space), "--trials",
            "2", "--study", "s", "--out", str(tmp_path / "tune"), "--sampler", "random", "--seed", "0", "--pruner",
            "none", "--folds", "0"]
    for pair in [*TINY, "train.epochs=1", "train.loggers=[mlflow]", f"train.mlflow_uri={mlflow_server}"]:
        args += ["--set", pair]
    assert main(args) == 0
    runs = search(mlflow_server)
    study = runs[runs["tags.kit.study_dir"] == str((tmp_path / "tune" / "s").resolve())]
    assert len(study) == 1 and study["tags.mlflow.runName"].iloc[0] == "s"
    trials = runs[runs["tags.mlflow.parentRunId"] == study["run_id"].iloc[0]].sort_values("tags.mlflow.runName")
    assert trials["tags.mlflow.runName"].tolist() == ["trial-0", "trial-1"]
    assert set(trials["status"]) == {"FINISHED"} and trials["metrics.cv"].notna().all()
    assert trials["params.train.lr"].nunique() == 2  # each trial's own suggested config
    assert study["status"].iloc[0] == "FINISHED" and study["metrics.best_cv"].iloc[0] == trials["metrics.cv"].max()
    for trial_id in trials["run_id"]:
        folds = runs[runs["tags.mlflow.parentRunId"] == trial_id]
        assert folds["tags.kit.fold"].tolist() == ["0"]
        assert [s for s, _ in metric_history(mlflow_server, folds["run_id"].iloc[0], "auc")] == [1]


def test_a_resumed_run_and_fold_log_on_into_their_mlflow_runs(tmp_path, monkeypatch):
    """kit train --resume: the kit run's MLflow run is found again by its folder, a resumed fold's by its fold tag,
    and a fresh kit train into the folder starts a new one (the loop's side is a stand-in: no training needed)."""
    from types import SimpleNamespace

    from kit.config import load_config
    from kit.rundir import RunDir
    from kit.trackers import MlflowTracker, RunTracking

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    cfg = load_config(HCD, overrides=["train.loggers=[mlflow]", f"train.mlflow_uri={uri}"])
    trainer = SimpleNamespace(run=RunDir(tmp_path / "run"), k=0, is_main=True)

    def session(fresh: bool, start: int, epochs: range) -> tuple[str, str]:
        with RunTracking(cfg, trainer.run.path, fresh=fresh) as tracking:
            fold = MlflowTracker(cfg)
            fold.on_fit_start(trainer, start)
            for epoch in epochs:
                fold.on_epoch_end(trainer, SimpleNamespace(epoch=epoch, row={"epoch": epoch, "val_loss": 1 / epoch}))
            fold.on_fit_end(trainer)
        return tracking.run_id, fold.run_id

    first = session(True, 0, range(1, 3))
    assert session(False, 2, range(3, 5)) == first  # resumed after epoch 2
    assert [s for s, _ in metric_history(uri, first[1], "val_loss")] == [1, 2, 3, 4]
    assert session(True, 0, range(1, 2))[0] != first[0]  # a fresh run into the same folder
