"""scripts/gpu_check.sh on a machine without CUDA: the CUDA tests are skipped, saying so, the benchmarks run at their
smoke sizes, every table lands in one file, and a step that fails or runs out of time is reported, not hidden."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path: on a GPU machine run the script itself")
def test_gpu_check_runs_on_the_cpu_and_reports_every_step(tmp_path):
    out = tmp_path / "reports" / "gpu_check.md"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "CHECK_PIPELINE_S": "2"}  # the pipeline benchmark cannot finish in 2 s: a step that runs out of time
    p = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--smoke", "--out", str(out)], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, p.stderr  # the step that timed out fails the check, after the others ran
    assert "skipped pytest -m cuda: no CUDA GPU here" in p.stderr and f"wrote {out}" in p.stderr
    report = out.read_text()
    assert "- device: no CUDA device (CPU)" in report and f"torch {torch.__version__}" in report
    assert "skipped: pytest -m cuda needs a CUDA GPU, and this machine has none" in report
    bench = report[report.index("## bench-gpu"):report.index("## bench-pipeline")]
    assert "--smoke --reps 1 --no-compile`: ok" in bench
    assert "| test_resnet | 32 | 4 | baseline |" in bench and "stacked/per-view" in bench
    assert "stopped at its limit of 2s" in report[report.index("## bench-pipeline"):]


def test_gpu_check_help_and_a_bad_argument():
    p = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "pytest -m cuda" in p.stdout
    p = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--fast"], capture_output=True, text=True)
    assert p.returncode == 2 and "unknown argument --fast" in p.stderr
