"""scripts/bench_quality.py: nothing imports a benchmark, so a moved function would break it silently; this imports
it, runs its --help, and checks that every recipe arm names config keys of this kit."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_quality.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_runs_and_names_the_suites():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "recipes" in out.stdout and "--pseudo" in out.stdout


def test_the_table_compares_with_the_preset_and_leaves_skipped_arms_blank():
    bench = load_script()
    rows = [{"arm": "(p)", "what": "preset", "mean_of_folds": 0.5, "pooled": 0.5, "wall_s": 100.0, "note": ""},
            {"arm": "(grow)", "what": "grow", "mean_of_folds": 0.55, "pooled": 0.6, "wall_s": 50.0, "note": ""},
            {"arm": "(mix)", "what": "mix", "mean_of_folds": math.nan, "pooled": math.nan, "wall_s": 0.0,
             "note": "skipped"}]
    lines = bench.table_text(rows).splitlines()
    assert "vs (p)" in lines[0]
    assert "| +0.100, 0.50x |" in lines[3] and "|  | skipped |" in lines[4]
