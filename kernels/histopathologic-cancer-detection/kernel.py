"""kit on Kaggle, offline: predict the test images of Histopathologic Cancer Detection (PCam 96x96 patches) with the attached fold checkpoints.

Written by `kit kernel build` (kit/templates/kaggle_kernel.py); rebuild rather than edit. With the internet off,
this script
1. finds its inputs: the competition data and the two datasets below, in the classic /kaggle/input/<slug>/ layout or
   the newer /kaggle/input/competitions/<slug>/ and /kaggle/input/datasets/<owner>/<slug>/ ones;
2. installs kit from the wheels dataset (pip --no-index: kit's wheel plus wheels of what the image lacks);
3. runs `kit kernel run`: each fold's best.pt predicts the test images with TTA, the folds are averaged, and a
   submission validated against the competition's test ids is written to /kaggle/working/submission.csv.
KIT_KAGGLE_INPUT and KIT_KAGGLE_WORKING move the input root and the working folder (to try it outside Kaggle).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

COMPETITION = "histopathologic-cancer-detection"
WHEELS_DATASET = "your-kaggle-username/kit-histopathologic-cancer-detection-weights"
WEIGHTS_DATASET = "your-kaggle-username/kit-histopathologic-cancer-detection-weights"
TTA = "8"

INPUT = Path(os.environ.get("KIT_KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("KIT_KAGGLE_WORKING", "/kaggle/working"))


def mounts(source: str) -> list[Path]:
    """Where Kaggle mounts an attached competition (a slug) or dataset (OWNER/SLUG), older layout first."""
    if "/" not in source:
        return [INPUT / source, INPUT / "competitions" / source]
    owner, slug = source.split("/", 1)
    return [INPUT / slug, INPUT / "datasets" / owner / slug]


def find(source: str, pattern: str, looked: list[str]) -> Path | None:
    """The first file matching ``pattern`` at any depth under the mounts of ``source``; record where it looked."""
    for root in mounts(source):
        hits = sorted(root.rglob(pattern)) if root.is_dir() else []
        if hits:
            return hits[-1]  # the last in name order when a dataset holds several
        looked.append(f"{root}/**/{pattern}")
    return None


def find_checkpoints(looked: list[str]) -> Path | None:
    """The folder of run.json with fold*/best.pt beside it (a bundle's checkpoints/)."""
    for root in mounts(WEIGHTS_DATASET):
        for run_json in sorted(root.rglob("run.json")) if root.is_dir() else []:
            if any(run_json.parent.glob("fold*/best.pt")):
                return run_json.parent
        looked.append(f"{root}/**/run.json with fold*/best.pt beside it")
    return None


def main() -> int:
    looked: list[str] = []
    data = next((p for p in mounts(COMPETITION) if p.is_dir()), None)
    if data is None:
        looked += [str(p) for p in mounts(COMPETITION)]
    wheel = find(WHEELS_DATASET, "kit-*.whl", looked)
    checkpoints = find_checkpoints(looked)
    if data is None or wheel is None or checkpoints is None:
        missing = [what for what, got in (("the competition data", data), (f"kit's wheel ({WHEELS_DATASET})", wheel),
                                          (f"the checkpoints ({WEIGHTS_DATASET})", checkpoints)) if got is None]
        sys.exit(f"kit kernel: {', '.join(missing)} not found; attach {COMPETITION}, {WHEELS_DATASET} and "
                 f"{WEIGHTS_DATASET} to this kernel. Looked in: " + "; ".join(looked))
    print(f"kit kernel: data {data}, wheels {wheel.parent}, checkpoints {checkpoints}", flush=True)

    # The wheel's path rather than the name `kit`: pip installs this exact build even where a `kit` is installed.
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheel.parent),
           "--disable-pip-version-check", "--no-input", str(wheel)]
    print("+ " + " ".join(pip), flush=True)
    if subprocess.call(pip) != 0:
        sys.exit(f"kit kernel: pip could not install {wheel.name} offline (its message is above): a dependency "
                 f"missing from this image needs its wheel in {WHEELS_DATASET}; see KAGGLE_IMAGE_LACKS in "
                 "kit/bundle.py")
    # A fresh interpreter: this one started before kit existed on its path.
    run = [sys.executable, "-m", "kit.cli", "kernel", "run", "--competition", COMPETITION, "--data", str(data),
           "--weights", str(checkpoints), "--tta", TTA, "--working", str(WORKING)]
    print("+ " + " ".join(run), flush=True)
    return subprocess.call(run)


if __name__ == "__main__":
    sys.exit(main())
