"""Shared fixtures: the real competition files in ../shared/data and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_WEIGHTS = SHARED_DATA.parent / "weights" / "tf_efficientnet_lite0.imagenet.safetensors"


def _shared(path: Path, what: str) -> Path:
    """``path`` under ../shared; absent: skip locally, fail in CI (where it must be present)."""
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing in CI")
        pytest.skip(f"{what} not found at {path}")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _shared(SHARED_DATA, "real competition data")


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """The real ImageNet weights of tf_efficientnet_lite0 (../shared/weights/README.md)."""
    return _shared(SHARED_WEIGHTS, "shared weights")


@pytest.fixture(scope="session", autouse=True)
def pack_cache_dir(tmp_path_factory) -> Path:
    """Every pack a test builds goes to one session folder (inherited by the CLI subprocesses), never into
    ../shared/data/.kit-cache or the user's ~/.cache/kit; a test of the default location unsets it."""
    folder = tmp_path_factory.mktemp("kit-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KIT_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session", autouse=True)
def kit_messages_on_stdout():
    """The library's messages shown as the CLI shows them (kit.console), so capsys sees what a user would."""
    from kit.console import show_messages

    show_messages()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="session")
def demo_data(demo_root):
    """A function (competition, n) -> folder with synthetic data, cached per session."""
    from kit.data.synthetic import make_demo_data

    cache: dict = {}

    def get(competition: str, n: int = 80, seed: int = 0, size: int | None = None) -> Path:
        key = (competition, n, seed, size)
        if key not in cache:
            out = demo_root / f"{competition}-{n}-{seed}-{size}"
            cache[key] = make_demo_data(competition, out, n=n, seed=seed, size=size)
        return cache[key]

    return get


# Tiny trained-and-predicted runs shared by tests/test_predict.py, test_ensemble.py and test_report.py: training is
# the slow part, so it happens once per session. Two binary runs on one folds.csv (for ensembling) and one multiclass
# run with a metadata branch.
TINY = ["model.name=test_resnet", "model.pretrained=false", "model.img_size=32", "n_folds=2", "train.batch_size=16",
        "train.warmup_epochs=0", "train.device=cpu"]
PREDICTED_RUNS = {
    # name: (competition, demo data (n, size), config overrides, predict kwargs)
    "hcd_a": ("histopathologic-cancer-detection", (60, None), ["train.epochs=2"], {"tta": "8"}),
    "hcd_b": ("histopathologic-cancer-detection", (60, None), ["train.epochs=2", "train.seed=7", "train.lr=0.003"],
              {"tta": "2", "merge": "gmean"}),
    "multi": ("isic-2018-task3", (60, 48), ["train.epochs=1", "aug.preset=none", "model.use_metadata=true"],
              {"tta": "4"}),
}


@pytest.fixture(scope="session")
def predicted_runs(demo_data, tmp_path_factory) -> dict:
    """name -> kit.predict.PredictResult of a tiny run trained with kit.train.train_folds and predicted with TTA by
    ``kit predict``'s chain; its ``submission`` attribute is the submission that wrote."""
    from kit.config import load_config
    from kit.pipeline import predict_and_submit
    from kit.train import train_folds

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, (competition, (n, size), overrides, predict_kw) in PREDICTED_RUNS.items():
        data = demo_data(competition, n=n, size=size)
        cfg = load_config(competition, overrides=TINY + overrides)
        train_folds(cfg, data, root / name)
        out[name], submission = predict_and_submit(root / name, out_dir=root / "submissions", **predict_kw)
        out[name].submission = submission
    return out
