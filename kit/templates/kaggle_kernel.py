"""kit on Kaggle, offline: predict the test images of __TITLE__ with the attached fold checkpoints.

Written by `kit kernel build` (kit/templates/kaggle_kernel.py); rebuild rather than edit. With the internet off,
this script
1. finds its inputs: the competition data and the two datasets below, in the classic /kaggle/input/<slug>/ layout or
   the newer /kaggle/input/competitions/<slug>/ and /kaggle/input/datasets/<owner>/<slug>/ ones;
2. installs kit from the wheels dataset (pip --no-index --no-deps: kit's wheel, the highest version there, plus
   the wheels of what the image lacks) and checks that every module kit imports at inference is there;
3. runs `kit kernel run`: each fold's best.pt predicts the test images with TTA, the folds are averaged, and a
   submission validated against the competition's test ids is written to /kaggle/working/submission.csv. With a
   stack bundle (stack/stack.json: ISIC 2024), the image runs inside it score the test images, then the stack's
   saved GBDTs predict from the test metadata's features and those scores, and their blend is the submission.
KIT_KAGGLE_INPUT and KIT_KAGGLE_WORKING move the input root and the working folder (to try it outside Kaggle).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from kaggle_install import WORKING, check_imports, install, locate, mounts, report_versions  # __INSTALL__

COMPETITION = "__COMPETITION__"
WHEELS_DATASET = "__WHEELS_DATASET__"
WEIGHTS_DATASET = "__WEIGHTS_DATASET__"
TTA = "__TTA__"

IMPORTS = ("kit.cli", "kit.kernel", "kit.predict", "kit.ensemble", "kit.submission", "torch", "timm",
           "albumentations", "sklearn", "pandas", "PIL", "yaml", "simplejpeg", "tifffile", "h5py")
# each stack model's library module (kit.stack.models.GBDTS, filled in by kit kernel build)
GBDT_MODULES = "__GBDT_MODULES__"


def find_weights(looked: list[str]) -> Path | None:
    """A stack bundle's stack/ (stack.json; its image runs inside it), else the folder of run.json with
    fold*/best.pt beside it (a bundle's checkpoints/)."""
    for root in mounts(WEIGHTS_DATASET):
        stacks = sorted(root.rglob("stack.json")) if root.is_dir() else []
        if stacks:
            return stacks[0].parent
        for run_json in sorted(root.rglob("run.json")) if root.is_dir() else []:
            if any(run_json.parent.glob("fold*/best.pt")):
                return run_json.parent
        looked.append(f"{root}/**/stack.json, or run.json with fold*/best.pt beside it")
    return None


def needed_modules(weights: Path) -> tuple[str, ...]:
    """What kit imports to predict with ``weights``: a stack adds kit.stack and the libraries of its GBDTs."""
    if not (weights / "stack.json").is_file():
        return IMPORTS
    models = json.loads((weights / "stack.json").read_text()).get("models", [])
    return IMPORTS + ("kit.stack.saved",) + tuple(GBDT_MODULES[m] for m in models if m in GBDT_MODULES)


def main() -> int:
    report_versions()  # first in the log: what this image runs
    looked: list[str] = []
    data, wheel = locate(COMPETITION, WHEELS_DATASET, looked)
    checkpoints = find_weights(looked)
    if data is None or wheel is None or checkpoints is None:
        missing = [what for what, got in (("the competition data", data), (f"kit's wheel ({WHEELS_DATASET})", wheel),
                                          (f"the checkpoints ({WEIGHTS_DATASET})", checkpoints)) if got is None]
        sys.exit(f"kit kernel: {', '.join(missing)} not found; attach {COMPETITION}, {WHEELS_DATASET} and "
                 f"{WEIGHTS_DATASET} to this kernel. Looked in: " + "; ".join(looked))
    print(f"kit kernel: data {data}, wheels {wheel.parent}, checkpoints {checkpoints}", flush=True)

    install(wheel, WHEELS_DATASET)
    check_imports(needed_modules(checkpoints), WHEELS_DATASET)
    # A fresh interpreter: this one started before kit existed on its path.
    run = [sys.executable, "-m", "kit.cli", "kernel", "run", "--competition", COMPETITION, "--data", str(data),
           "--weights", str(checkpoints), "--tta", TTA, "--working", str(WORKING)]
    print("+ " + " ".join(run), flush=True)
    cache = WORKING / "kit-cache"  # the test images' pack: a cache, not a result
    try:
        return subprocess.call(run, env={**os.environ, "KIT_CACHE_DIR": str(cache)})
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # what stays in the working folder becomes the kernel's output


if __name__ == "__main__":
    sys.exit(main())
