"""Shared fixtures: the real competition files in ../shared/data and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; absent: skip locally, fail in CI (where it must be present)."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED_DATA} is missing in CI")
        pytest.skip(f"real competition data not found at {SHARED_DATA}")
    return SHARED_DATA


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
