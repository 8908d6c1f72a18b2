"""What every kit kernel script does first: find its inputs and install kit offline from the wheels dataset.

Each kernel script (kit/templates/kaggle_*.py) imports what it uses from here on a line marked ``# __INSTALL__``;
kit.kernel replaces that line with this file's code (all but this docstring and the ``__future__`` import), so
the pushed script is one file. It runs before kit is installed, so it must not import kit.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
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
