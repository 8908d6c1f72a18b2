"""kit on Kaggle: train the folds of __TITLE__ on Kaggle's GPU, one session after another.

Written by `kit kernel build --train` (kit/templates/kaggle_train_kernel.py); rebuild rather than edit. This script
1. finds its inputs: the competition data, the wheels dataset and, for a continuation, the output of this kernel's
   previous version (classic /kaggle/input/<slug>/ layout or the newer competitions/, datasets/, notebooks/ ones);
2. installs kit from the wheels dataset (pip --no-index --no-deps) and checks that what kit imports is there;
3. runs `kit train` into /kaggle/working/<RUN> with the config written into this script, or `kit train --resume`
   on a copy of the previous version's run folder (finished folds are kept, an unfinished one goes on from its
   last.pt), with a time budget: training stops at an epoch boundary when the next epoch would not fit;
4. writes /kaggle/working/kit-kernel.json (the run's name, finished or not) and removes the packed image cache, so
   the output is the run folder. A stop by the budget or by SIGTERM is a success: push again to continue.
KIT_KAGGLE_INPUT and KIT_KAGGLE_WORKING move the input root and the working folder (to try it outside Kaggle).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kaggle_install import INPUT, WORKING, check_imports, install, locate, mounts, report_versions  # __INSTALL__

STARTED = time.monotonic()
COMPETITION = "__COMPETITION__"
WHEELS_DATASET = "__WHEELS_DATASET__"
KERNEL = "__KERNEL__"  # this kernel: a continuation reads its previous version's output
CONTINUE = "__CONTINUE__"
RUN = "__RUN__"
CONFIG_YAML = "__CONFIG_YAML__"  # the resolved config, written by kit kernel build
BUILD = "__BUILD__"  # this build of the script: kit kernel pull tells its output from an older version's
TIME_BUDGET = "__TIME_BUDGET__"  # seconds from this script's start; Kaggle stops a GPU session at 12 hours
EXTRA = "__EXTRA__"  # data.extra: [{competition, labels}], each found under the inputs by its labels file
EXTRA_MARK = "__EXTRA_MARK__"  # what stands for an extra's folder in CONFIG_YAML until it is found
STATE = "kit-kernel.json"
CACHE = WORKING / "kit-cache"  # kit train's packed image cache (KIT_CACHE_DIR)
EXIT_BUDGET, EXIT_SIGTERM = 75, 143  # kit train's clean stops: the time budget, SIGTERM
IMPORTS = ("kit.cli", "kit.train", "kit.report", "torch", "timm", "albumentations", "sklearn", "pandas", "PIL",
           "yaml", "simplejpeg", "tifffile", "h5py", "matplotlib", "tqdm")


def find_previous(looked: list[str]) -> Path | None:
    """The run folder in the previous version's output: the folder named in its kit-kernel.json."""
    for root in mounts(KERNEL, "notebooks"):
        for state in sorted(root.rglob(STATE)) if root.is_dir() else []:
            try:
                run = state.parent / str(json.loads(state.read_text()).get("run", RUN))
            except (ValueError, AttributeError):  # not kit's file: keep looking
                continue
            if (run / "config.yaml").is_file():
                return run
        looked.append(f"{root}/**/{STATE} beside a run folder")
    return None


def copy_run(previous: Path, run: Path) -> None:
    """The previous run folder, writable (the inputs are read-only, and copytree copies their modes)."""
    print(f"kit kernel: continuing {previous}", flush=True)
    shutil.copytree(previous, run, copy_function=shutil.copyfile)
    for folder, _, files in os.walk(run):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def find_extra(looked: list[str]) -> dict[str, Path]:
    """The folder of each data.extra competition: where its labels file is, in its own mount or any attached
    dataset (ISIC 2019 and 2018 are Kaggle datasets, attached with kit kernel build --attach), at most 4 deep."""
    found = {}
    for entry in EXTRA:
        roots = [p for p in mounts(entry["competition"]) if p.is_dir()] + [INPUT]
        hits = (hit for root in roots for depth in range(5)
                for hit in sorted(root.glob("/".join(["*"] * depth + [entry["labels"]]))))
        hit = next(hits, None)
        if hit is None:
            looked.append(f"{INPUT}/**/{entry['labels']} (data.extra {entry['competition']})")
        else:
            found[entry["competition"]] = hit.parent
    return found


def config_yaml(extra: dict[str, Path]) -> str:
    """CONFIG_YAML with each data.extra folder where this session found it."""
    text = CONFIG_YAML
    for competition, folder in extra.items():
        text = text.replace(EXTRA_MARK + competition, str(folder))
    return text


def train_command(data: Path, run: Path, extra: dict[str, Path]) -> list[str]:
    left = TIME_BUDGET - (time.monotonic() - STARTED)  # installing took part of the session
    command = [sys.executable, "-m", "kit.cli", "train", "--no-progress", "--data", str(data), "--time-budget",
               f"{max(left, 0.001):.3f}"]  # at least one epoch runs whatever the budget
    if (run / "config.yaml").is_file():
        return command + ["--resume", str(run)]
    config = Path(tempfile.mkdtemp(prefix="kit-config-")) / "config.yaml"  # not in the output
    config.write_text(config_yaml(extra))
    return command + ["--competition", COMPETITION, "--out", str(run), "--config", str(config)]


def run_child(command: list[str]) -> int:
    """Run ``command``, passing on the SIGTERM Kaggle sends at its time limit: kit train then stops cleanly."""
    print("+ " + " ".join(command), flush=True)
    child = subprocess.Popen(command)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
    return child.wait()


def finish(rc: int) -> int:
    """Record the session in kit-kernel.json, drop the image cache; a clean stop is a success."""
    finished = rc == 0
    state = {"kit_kernel": 1, "kernel": KERNEL, "build": BUILD, "competition": COMPETITION, "run": RUN,
             "finished": finished, "train_exit": rc, "seconds": round(time.monotonic() - STARTED)}
    (WORKING / STATE).write_text(json.dumps(state, indent=2) + "\n")
    shutil.rmtree(CACHE, ignore_errors=True)  # a cache, not a result: keep the output small
    if finished:
        print(f"kit kernel: {RUN} finished; fetch it with: kit kernel pull {KERNEL} --out runs/{RUN}", flush=True)
    elif rc in (EXIT_BUDGET, EXIT_SIGTERM):
        print(f"kit kernel: {RUN} is not finished (stopped by the {'time budget' if rc == EXIT_BUDGET else 'SIGTERM'})"
              f"; continue it: kit kernel build --train --continue ..., then push, or kit kernel train --continue",
              flush=True)
    return 0 if rc in (0, EXIT_BUDGET, EXIT_SIGTERM) else rc


def main() -> int:
    report_versions()  # first in the log: what this image runs
    looked: list[str] = []
    data, wheel = locate(COMPETITION, WHEELS_DATASET, looked)
    previous = find_previous(looked) if CONTINUE else None
    extra = find_extra(looked)
    missing = [what for what, got in (("the competition data", data), (f"kit's wheel ({WHEELS_DATASET})", wheel),
                                      (f"the previous output of {KERNEL}", previous or not CONTINUE)) if not got]
    missing += [f"the data.extra {e['competition']} data" for e in EXTRA if e["competition"] not in extra]
    if missing:
        sys.exit(f"kit kernel: {', '.join(missing)} not found; attach them to this kernel. Looked in: "
                 + "; ".join(looked))
    install(wheel, WHEELS_DATASET)
    check_imports(IMPORTS, WHEELS_DATASET)
    run = WORKING / RUN
    if previous is not None and not run.exists():
        copy_run(previous, run)
    os.environ["KIT_CACHE_DIR"] = str(CACHE)
    return finish(run_child(train_command(data, run, extra)))


if __name__ == "__main__":
    sys.exit(main())
