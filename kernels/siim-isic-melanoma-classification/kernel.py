"""kit on Kaggle, offline: predict the test images of SIIM-ISIC Melanoma Classification 2020 with the attached fold checkpoints.

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

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

INPUT = Path(os.environ.get("KIT_KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("KIT_KAGGLE_WORKING", "/kaggle/working"))


def mounts(source: str, kind: str = "datasets") -> list[Path]:
    """Where Kaggle mounts an attached competition (a slug), dataset or kernel output (OWNER/SLUG), older first."""
    if "/" not in source:
        return [INPUT / source, INPUT / "competitions" / source]
    owner, slug = source.split("/", 1)
    return [INPUT / slug, INPUT / kind / owner / slug]


def find(source: str, pattern: str, looked: list[str]) -> Path | None:
    """The first file matching ``pattern`` at any depth under the mounts of ``source``; record where it looked."""
    for root in mounts(source):
        hits = sorted(root.rglob(pattern)) if root.is_dir() else []
        if hits:
            return newest(hits) if pattern.endswith(".whl") else hits[-1]
        looked.append(f"{root}/**/{pattern}")
    return None


def locate(competition: str, wheels_dataset: str, looked: list[str]) -> tuple[Path | None, Path | None]:
    """(the competition's data folder, kit's wheel), None for what is not attached."""
    data = next((p for p in mounts(competition) if p.is_dir()), None)
    if data is None:
        looked += [str(p) for p in mounts(competition)]
    return data, find(wheels_dataset, "kit-*.whl", looked)


def newest(wheels: list[Path]) -> Path:
    """The wheel of the highest version (kit-0.10.0 after kit-0.9.0, which name order gets wrong)."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pip always carries it
        from pip._vendor.packaging.version import InvalidVersion, Version

    def key(wheel: Path) -> tuple:
        try:
            return (1, Version(wheel.name.split("-")[1]), wheel.name)
        except (InvalidVersion, IndexError):
            return (0, Version("0"), wheel.name)

    return max(wheels, key=key)


def install(wheel: Path, dataset: str) -> None:
    """Install kit's wheel and the other wheels beside it, offline and without dependency resolution.

    ``--no-deps``: the image's own torch, timm, pandas ... are used as they are, so a newer image whose versions no
    longer match a pin in kit's metadata still runs; :func:`check_versions` then checks the distributions whose
    version matters (torch and timm within kit's bounds, albumentations the MIT 2.0.x line), and
    :func:`check_imports` proves that what kit uses is there.
    """
    others = sorted({p.name.split("-")[0] for p in wheel.parent.glob("*.whl")} - {"kit"})
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(wheel.parent),
           "--disable-pip-version-check", "--no-input", str(wheel), *others]
    print("+ " + " ".join(pip), flush=True)
    if subprocess.call(pip) != 0:
        sys.exit(f"kit kernel: pip could not install {wheel.name} offline (its message is above): a wheel in "
                 f"{dataset} does not fit this image's Python; rebuild the bundle for it "
                 "(kit bundle build --python X.Y)")
    check_versions(dataset)  # --no-deps checked nothing: the image's torch, timm, albumentations must fit kit


CHECK = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"


def check_imports(modules: tuple[str, ...], dataset: str) -> None:
    """Check in a fresh interpreter (this one started before kit existed) that ``modules`` are there; stop naming
    every missing one. Finding them is enough, and takes no time: importing torch twice would."""
    p = subprocess.run([sys.executable, "-c", CHECK, *modules], capture_output=True, text=True)
    missing = p.stdout.strip() if p.returncode == 0 else (p.stderr.strip().splitlines() or ["no output"])[-1]
    if missing:
        sys.exit(f"kit kernel: this image lacks modules kit imports: {missing}; put the wheels of the missing "
                 f"packages in {dataset} (KAGGLE_IMAGE_LACKS in kit/bundle.py) and push it again")
    print(f"kit kernel: kit installed; the {len(modules)} modules it imports are there", flush=True)


SHOWN = ("torch", "torchvision", "timm", "albumentations", "numpy", "pandas", "scikit-learn", "pillow", "h5py",
         "optuna", "lightgbm", "xgboost", "catboost")
BOUNDED = ("torch", "timm")  # checked against kit's own requirements; albumentations against its MIT line


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def report_versions() -> None:
    """The first line of the kernel's log: what this image runs, so that a result can be traced to versions."""
    shown = ", ".join(f"{name} {installed(name) or 'absent'}" for name in SHOWN)
    print(f"kit kernel: Python {platform.python_version()}, {shown}", flush=True)


def version_problems(kit_requires: list[str], owners: list[str], version: object = installed) -> list[str]:
    """What of the image does not fit kit: AlbumentationsX (AGPL) or an albumentations other than the MIT 2.0.x
    line under the import name ``albumentations`` (whose distributions are ``owners``), or a torch / timm outside
    ``kit_requires`` (kit's Requires-Dist lines). Each problem names the package and the version found."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always carries it
        from pip._vendor.packaging.requirements import Requirement
    problems = [f"{owner} {version(owner)} installs as 'albumentations' (AlbumentationsX, AGPL-licensed; kit "
                "needs the MIT albumentations 2.0.x)" for owner in owners if owner.lower() != "albumentations"]
    found = version("albumentations")
    if not problems and (found is None or not found.startswith("2.0.")):
        problems.append(f"albumentations {found or 'absent'} (kit needs the MIT 2.0.x line)")
    for line in kit_requires:
        req = Requirement(line)
        if req.name in BOUNDED and "extra" not in str(req.marker or ""):
            found = version(req.name)
            if found is None or not req.specifier.contains(found.split("+")[0], prereleases=True):
                problems.append(f"{req.name} {found or 'absent'} (kit needs {req.name}{req.specifier})")
    return problems


def check_versions(dataset: str) -> None:
    """Stop in one line naming each package and the version found that kit was not made for (after install)."""
    owners = importlib.metadata.packages_distributions().get("albumentations", [])
    problems = version_problems(importlib.metadata.requires("kit") or [], sorted(set(owners)), installed)
    if problems:
        sys.exit(f"kit kernel: this image has {'; '.join(problems)}: put wheels of fitting versions in {dataset} "
                 "and push it again, or pin the kernel to an older image (Kaggle's notebook settings)")
    print("kit kernel: torch, timm and albumentations are within kit's bounds", flush=True)


COMPETITION = "siim-isic-melanoma-classification"
WHEELS_DATASET = "your-kaggle-username/kit-siim-isic-melanoma-classification-weights"
WEIGHTS_DATASET = "your-kaggle-username/kit-siim-isic-melanoma-classification-weights"
TTA = "8"

IMPORTS = ("kit.cli", "kit.kernel", "kit.predict", "kit.ensemble", "kit.submission", "torch", "timm",
           "albumentations", "sklearn", "pandas", "PIL", "yaml", "simplejpeg", "tifffile", "h5py")
# each stack model's library module (kit.stack.models.GBDTS, filled in by kit kernel build)
GBDT_MODULES = {'lgbm': 'lightgbm', 'xgb': 'xgboost', 'cat': 'catboost'}


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
