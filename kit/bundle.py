"""Kaggle dataset bundles: the kit wheel, wheels of what the Kaggle image lacks, and a run's fold checkpoints.

A bundle is a folder that ``kaggle datasets create`` understands::

    bundles/<slug>/
        dataset-metadata.json      title, id OWNER/SLUG, licenses
        bundle.json                what is inside: competition, run, folds, CV, wheels, Python versions
        kit-0.1.0-py3-none-any.whl
        simplejpeg-...-cp311-...whl, simplejpeg-...-cp312-...whl
        checkpoints/               config.yaml, folds.csv, scores.json, run.json, fold{k}/best.pt, fold{k}/result.json

A bundle of a stack folder (``kit bundle build STACK``, ISIC 2024) holds ``stack/`` instead of ``checkpoints/``:
stack.json, scores.json, each fold's saved GBDT files, and ``runs/<feature name>/``, the checkpoints of every image
run the stack takes its scores from, laid out as ``checkpoints/`` is.

An offline kernel (:mod:`kit.kernel`) installs kit from the wheels with ``pip install --no-index`` and predicts with
the checkpoints. :func:`push_bundle` uploads it with ``dir_mode="zip"``: the client's default, "skip", silently
leaves out every subfolder, and the checkpoints live in one.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from kit.competitions import get_competition
from kit.errors import ConfigError, KaggleError, KitError
from kit.io import read_json_file, replace_dir, write_text_atomic
from kit.records import Decision, RunInfo, Scores
from kit.rundir import LOCK_FILE, PredictionSource, RunDir, open_source

__all__ = ["KAGGLE_IMAGE_HAS", "KAGGLE_IMAGE_LACKS", "KAGGLE_PYTHONS", "BundlePush", "build_kit_wheel", "bundle_slug",
           "check_dataset_ref", "check_owner", "make_bundle", "make_wheels_bundle", "push_bundle", "run_competition"]

# kit's dependencies, sorted by whether Kaggle's Python image ships them (Kaggle/docker-python,
# installed_cpu_packages.txt: torch 2.10, timm 1.0.26, albumentations 2.0.8, pandas 2.3, scikit-learn 1.6,
# tifffile, h5py, optuna 4.8, kaggle 2.0 ...). A bundle carries wheels of the second list only; a dependency in
# neither list stops `kit bundle` so that adding one to pyproject.toml forces the question.
KAGGLE_IMAGE_HAS = ("torch", "torchvision", "timm", "albumentations", "scikit-learn", "pandas", "numpy", "tifffile",
                    "h5py", "pillow", "optuna", "kaggle", "six", "pyyaml", "tqdm", "matplotlib",
                    "opencv-python-headless", "scipy", "huggingface_hub", "safetensors", "sqlalchemy", "requests",
                    "lightgbm", "xgboost", "catboost")  # the last three: kit[stack], which a stack bundle's kernel runs
KAGGLE_IMAGE_LACKS = ("simplejpeg",)
# The image's Python has moved (3.10 in 2024, 3.11, then 3.12): one wheel per version costs a few hundred KB and
# lets pip pick the one that fits the image the kernel runs on.
KAGGLE_PYTHONS = ("3.11", "3.12")
# Kaggle's image is Ubuntu 22.04 (glibc 2.35): wheels for glibc <= 2.28 run there.
KAGGLE_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
CHECKPOINTS = "checkpoints"
STACK = "stack"
METADATA = "dataset-metadata.json"
MANIFEST = "bundle.json"
WHEELS_SLUG = "kit-wheels"  # the default wheels-only dataset, which training kernels attach
DEFAULT_LICENSE = "other"  # weights derived from competition data: the competition's rules apply, say so
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{4,48})[a-z0-9]$")
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def bundle_slug(competition: str) -> str:
    """The default dataset slug of a competition's bundle (``kit kernel build`` attaches the same name)."""
    return f"kit-{get_competition(competition).name}-weights"


def check_owner(owner: str, what: str = "--owner") -> str:
    """``owner`` if it can be a Kaggle user name."""
    if not _OWNER.match(owner):
        raise ConfigError(f"{what} '{owner}' is not a Kaggle user name (letters, digits, '-' and '_')")
    return owner


def check_dataset_ref(ref: str, what: str = "dataset") -> str:
    """``ref`` if it is OWNER/SLUG with a valid Kaggle dataset slug (6-50 lowercase letters, digits, '-')."""
    owner, _, slug = ref.partition("/")
    if not _OWNER.match(owner) or not _SLUG.match(slug) or "--" in slug:
        raise ConfigError(f"{what} '{ref}' must be OWNER/SLUG: OWNER a Kaggle user name, SLUG 6-50 lowercase letters, "
                          "digits and single hyphens, starting and ending with a letter or digit")
    return ref


# ---------------------------------------------------------------------------------------------------- the run
def run_competition(run_dir: Path) -> str:
    """The competition a run (from its config.yaml; no checkpoint is read) or a stack folder is for."""
    return open_source(run_dir).competition().name


def _chosen_folds(run: RunDir, folds: Sequence[int] | None) -> list[int]:
    """The folds asked for, or every finished one; each must have finished (best.pt and result.json)."""
    if folds is None:
        folds = run.finished_folds()
        if not folds:
            raise KitError(f"{run.path} has no finished fold (no fold*/result.json): train it with kit train first")
    chosen = sorted({int(k) for k in folds})
    missing = [str(p) for k in chosen for p in (run.best_path(k), run.result_path(k)) if not p.is_file()]
    if missing:
        raise KitError(f"cannot bundle folds {chosen} of {run.path}: missing {', '.join(missing)} (a fold without "
                       "result.json has not finished training)")
    return chosen


def _copy_checkpoints(run: RunDir, folds: list[int], dest: Path) -> None:
    """The run folder a kernel predicts from: its config, folds, scores, and each chosen fold's best.pt."""
    needed = (run.config_path, run.folds_path, run.record_path(Scores))
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise KitError(f"{run.path} lacks {', '.join(missing)}: finish training the run (kit train) before bundling")
    copy = RunDir(dest)
    with copy.writing():
        fitted = [run.record_path(Decision)] if run.record_path(Decision).is_file() else []  # kit predict's decision weights
        for path in [*needed, *fitted]:
            shutil.copy2(path, dest / path.name)
        # the kernel predicts every fold it finds (fold*/result.json); run.json lists the same ones
        copy.save(replace(run.load(RunInfo), folds=list(folds)))
        for k in folds:
            copy.fold_dir(k).mkdir()
            for path in (run.best_path(k), run.result_path(k)):
                shutil.copy2(path, copy.fold_dir(k) / path.name)
    (dest / LOCK_FILE).unlink()  # not part of the dataset


# ---------------------------------------------------------------------------------------------------- wheels
def kit_source_tree() -> Path:
    """The checkout kit runs from (pyproject.toml next to the kit package), to build its wheel."""
    import kit

    root = Path(kit.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or not re.search(r'^name\s*=\s*"kit"', pyproject.read_text(), re.M):
        raise KitError(f"kit runs from an installed copy ({Path(kit.__file__).parent}), not a source checkout: pass "
                       "--kit-source DIR (a checkout of kit) to build its wheel")
    return root


def _pip(args: list[str], what: str) -> str:
    """Run ``python -m pip ARGS``; a failure raises KitError with pip's own last error line."""
    p = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        lines = [ln.strip() for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
        said = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        raise KitError(f"{what} failed: pip said: {said}")
    return p.stdout


def build_kit_wheel(dest: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Build kit's wheel from ``source`` (default: the checkout kit runs from) into ``dest``; return its path."""
    source = Path(source) if source is not None else kit_source_tree()
    if not (source / "pyproject.toml").is_file() or not (source / "kit" / "__init__.py").is_file():
        raise KitError(f"{source} is not a kit checkout (needs pyproject.toml and kit/__init__.py)")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kit-wheel-") as tmp:
        # pip builds a local folder in place (build/, kit.egg-info/): build a copy, never touch the checkout
        src = Path(tmp) / "src"
        shutil.copytree(source / "kit", src / "kit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for path in source.iterdir():
            if path.is_file() and (path.name in ("pyproject.toml", "setup.cfg", "MANIFEST.in")
                                   or path.name.upper().startswith(("README", "LICENSE"))):
                shutil.copy2(path, src / path.name)
        # the build backend installed here builds offline; without it pip fetches setuptools in an isolated build
        isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
        _pip(["wheel", "--no-deps", *isolation, "-w", tmp, str(src)], f"building the kit wheel from {source}")
        [wheel] = Path(tmp).glob("kit-*.whl")
        return Path(shutil.copy2(wheel, dest / wheel.name))


def wheel_requirements(wheel: Path) -> list[str]:
    """The unconditional ``Requires-Dist`` lines of a wheel: what pip must satisfy where it is installed."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = z.read(name).decode()
    return [line.split(":", 1)[1].strip() for line in metadata.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


def _project(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    return re.sub(r"[-_.]+", "-", name.group(0)).lower() if name else requirement


def missing_on_kaggle(requirements: Iterable[str]) -> list[str]:
    """The requirements Kaggle's image lacks; one that neither list knows raises (add it to one of them)."""
    has = {_project(n) for n in KAGGLE_IMAGE_HAS}
    lacks = {_project(n) for n in KAGGLE_IMAGE_LACKS}
    unknown = sorted({_project(r) for r in requirements} - has - lacks)
    if unknown:
        raise KitError(f"kit requires {', '.join(unknown)}, which kit.bundle does not know to be in Kaggle's image or "
                       "not: add each to KAGGLE_IMAGE_HAS or KAGGLE_IMAGE_LACKS in kit/bundle.py")
    return [r for r in requirements if _project(r) in lacks]


def _pinned(requirement: str) -> str:
    """The version installed here, so the kernel runs what was tested; the requirement as written otherwise."""
    try:
        return f"{_project(requirement)}=={importlib.metadata.version(_project(requirement))}"
    except importlib.metadata.PackageNotFoundError:
        return requirement


def fetch_wheels(requirement: str, dest: Path, pythons: Sequence[str] = KAGGLE_PYTHONS,
                 cache: str | os.PathLike | None = None) -> list[Path]:
    """Wheels of ``requirement`` for CPython ``pythons`` on Kaggle's Linux, from PyPI or only from ``cache``."""
    dest.mkdir(parents=True, exist_ok=True)
    source = ["--no-index", "--find-links", str(cache)] if cache is not None else []
    where = f"the wheel cache {cache}" if cache is not None else "PyPI"
    platforms = [arg for p in KAGGLE_PLATFORMS for arg in ("--platform", p)]
    before = set(dest.iterdir())
    for version in pythons:
        try:
            _pip(["download", "--no-deps", "--only-binary=:all:", "--implementation", "cp", "--python-version",
                  version, *platforms, *source, "-d", str(dest), requirement],
                 f"getting a wheel of {requirement} for CPython {version} on manylinux x86_64 from {where}")
        except KitError as e:
            hint = ("put one there (`pip download --no-deps --only-binary=:all: --python-version "
                    f"{version} --platform manylinux2014_x86_64 -d {cache} '{requirement}'` where there is internet)"
                    if cache is not None else
                    "without internet, download it elsewhere into a folder and pass --wheel-cache FOLDER")
            raise KitError(f"{e}; {hint}") from None
    return sorted(set(dest.iterdir()) - before)  # one wheel may fit several versions (abi3, py3-none-any)


# ---------------------------------------------------------------------------------------------------- a bundle
def _metadata(ref: str, competition: str, run_name: str, cv: str, license_name: str) -> dict:
    return {
        "title": ref.split("/")[1],
        "id": ref,
        "licenses": [{"name": license_name}],
        "description": (f"Wheels and fold checkpoints of the kit run `{run_name}` for the Kaggle competition "
                        f"{competition} ({cv}), made by `kit bundle`. An offline kernel built with `kit kernel build` "
                        "installs kit from the wheels (pip --no-index) and predicts with the checkpoints. The weights "
                        "were trained on the competition's data: its rules apply to them."),
    }


def _cv_text(run: PredictionSource) -> str:
    scores = run.load(Scores, optional=True)
    return f"CV {scores.metric} {scores.cv:.4f}" if scores else "no CV score"


def _copy_stack(stack_dir: Path, folds: Sequence[int] | None, dest: Path) -> dict[str, dict]:
    """The stack folder a kernel predicts with: stack.json, scores.json, its model files (checked), and
    ``runs/<name>/`` for each image run it names; each run's chosen folds, by name."""
    from kit.stack.saved import RUNS, STACK_INFO, load_models, open_stack

    stack = open_stack(stack_dir)
    load_models(stack)  # a missing, changed or unreadable model file stops here, not on Kaggle
    runs = {name: RunDir.open(stack.run_dir(name)) for name in stack.images}
    chosen = {name: _chosen_folds(run, folds) for name, run in runs.items()}
    dest.mkdir(parents=True)
    for path in [stack_dir / STACK_INFO, stack_dir / Scores.FILE, *(stack_dir / m.file for m in stack.models)]:
        (dest / path.relative_to(stack_dir)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / path.relative_to(stack_dir))
    for name, run in runs.items():
        _copy_checkpoints(run, chosen[name], dest / RUNS / name)
    return {name: {"run": runs[name].name, "folds": chosen[name], "checkpoints": f"{STACK}/{RUNS}/{name}"}
            for name in runs}


def make_bundle(run_dir: str | os.PathLike, owner: str, slug: str | None = None, folds: Sequence[int] | None = None,
                out: str | os.PathLike | None = None, wheel_cache: str | os.PathLike | None = None,
                kit_source: str | os.PathLike | None = None, license_name: str = DEFAULT_LICENSE,
                pythons: Sequence[str] = KAGGLE_PYTHONS) -> Path:
    """Write the dataset folder of a run: metadata, kit's wheel, the wheels Kaggle lacks, the chosen folds. A stack
    folder (stack.json) brings its saved models and the image runs it names (``folds`` then apply to each run)."""

    run = open_source(run_dir)
    competition = run.competition().name
    stacked = run.kind == "stack"
    chosen = None if stacked else _chosen_folds(run, folds)
    slug = slug or bundle_slug(competition)
    ref = check_dataset_ref(f"{check_owner(owner)}/{slug}")

    def fill(staged: Path, kit_wheel: Path, wheels: list[Path]) -> None:
        if stacked:
            inside = {"stack": STACK, "runs": _copy_stack(run.path, folds, staged / STACK)}
        else:
            _copy_checkpoints(run, chosen, staged / CHECKPOINTS)
            inside = {"folds": chosen, "checkpoints": CHECKPOINTS}
        cv = _cv_text(run)
        write_text_atomic(staged / METADATA, json.dumps(_metadata(ref, competition, run.name, cv,
                                                                  license_name), indent=2))
        write_text_atomic(staged / MANIFEST, json.dumps({
            "id": ref, "competition": competition, "run": run.name, "cv": cv, **inside,
            "kit_wheel": kit_wheel.name, "wheels": sorted(w.name for w in wheels), "pythons": list(pythons)},
            indent=2))

    return _write_bundle(out if out is not None else Path("bundles") / slug, fill, wheel_cache, kit_source, pythons)


def make_wheels_bundle(owner: str, slug: str = WHEELS_SLUG, out: str | os.PathLike | None = None,
                       wheel_cache: str | os.PathLike | None = None, kit_source: str | os.PathLike | None = None,
                       license_name: str = "apache-2.0", pythons: Sequence[str] = KAGGLE_PYTHONS) -> Path:
    """A dataset folder of wheels only (kit's and those Kaggle lacks): what a training kernel installs kit from."""
    ref = check_dataset_ref(f"{check_owner(owner)}/{slug}")

    def fill(staged: Path, kit_wheel: Path, wheels: list[Path]) -> None:
        write_text_atomic(staged / METADATA, json.dumps({
            "title": slug, "id": ref, "licenses": [{"name": license_name}],
            "description": "kit's wheel and wheels of the dependencies Kaggle's image lacks, made by `kit bundle "
                           "wheels`: kernels built with `kit kernel build` install kit from it offline."}, indent=2))
        write_text_atomic(staged / MANIFEST, json.dumps({
            "id": ref, "kit_wheel": kit_wheel.name, "wheels": sorted(w.name for w in wheels),
            "pythons": list(pythons)}, indent=2))

    return _write_bundle(out if out is not None else Path("bundles") / slug, fill, wheel_cache, kit_source, pythons)


def _write_bundle(out: str | os.PathLike, fill, wheel_cache: str | os.PathLike | None,
                  kit_source: str | os.PathLike | None, pythons: Sequence[str]) -> Path:
    """Build the wheels in a staging folder beside ``out``, let ``fill`` add the rest, then swap it into place."""
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise KitError(f"{out} exists and is not a kit bundle (no {MANIFEST}): choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        kit_wheel = build_kit_wheel(staged, kit_source)
        wheels = [kit_wheel]
        for requirement in missing_on_kaggle(wheel_requirements(kit_wheel)):
            wheels += fetch_wheels(_pinned(requirement), staged, pythons, wheel_cache)
        fill(staged, kit_wheel, wheels)
        staged.chmod(0o755)  # mkdtemp makes it 0700
        replace_dir(staged, out)  # a reader sees the old bundle or the new one, never half of one
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------------- upload
@dataclass(frozen=True)
class BundlePush:
    ref: str
    action: str  # "created" or "versioned"
    url: str
    uploaded: tuple[str, ...]

    def summary(self) -> str:
        return f"{self.action} dataset {self.ref} ({len(self.uploaded)} files: {', '.join(self.uploaded)}): {self.url}"


def _read_metadata(folder: Path) -> dict:
    path = folder / METADATA
    meta = read_json_file(path, f"{folder} is not a bundle folder (no {METADATA}): make one with kit bundle build "
                                "RUN_DIR --owner USER")
    if "id" not in meta:
        raise KitError(f"{path} has no \"id\" (OWNER/SLUG)")
    check_dataset_ref(str(meta["id"]), f"the id in {path}")
    return meta


def _exists(api, ref: str) -> bool:
    """Whether this account's dataset ``ref`` exists; a 404 says no, other HTTP errors propagate."""
    import requests

    try:
        api.dataset_status(ref)
    except requests.HTTPError as e:
        if getattr(e.response, "status_code", None) == 404:
            return False
        raise
    return True


def push_bundle(folder: str | os.PathLike, message: str | None = None, public: bool = False) -> BundlePush:
    """Create the bundle's Kaggle dataset, or add a version when it exists; every file and subfolder is uploaded."""
    from kit.kaggle import api_errors, authenticated_client

    folder = Path(folder)
    ref = _read_metadata(folder)["id"]
    expected = sorted(p.name + (".zip" if p.is_dir() else "") for p in folder.iterdir() if p.name != METADATA)
    api, source = authenticated_client()
    printed = io.StringIO()
    hints = {403: f"Kaggle refused to write dataset {ref}{{said}}: its owner must be the account of the credentials "
                  f"from {source}"}
    exists = None
    try:
        with api_errors(f"dataset {ref}", source, hints), contextlib.redirect_stdout(printed):
            exists = _exists(api, ref)
            # dir_mode="zip": the default "skip" drops every subfolder without a word, checkpoints/ included
            if exists:
                reply = api.dataset_create_version(str(folder), message or "kit bundle", quiet=False, dir_mode="zip")
            else:
                reply = api.dataset_create_new(str(folder), public=public, quiet=False, dir_mode="zip")
    except KaggleError as e:
        # kaggle >= 2.2.5 stops at the first failed upload (a ValueError); nothing was created or versioned
        lost = re.search(r"Upload unsuccessful: (.+)$", str(e))
        if lost:
            raise KaggleError(f"Kaggle did not receive {lost.group(1)} from {folder}; dataset {ref} was not "
                              f"{'versioned' if exists else 'created'}: push again") from None
        raise
    log = printed.getvalue()
    action = "versioned" if exists else "created"
    failed = re.findall(r"^Upload unsuccessful: (.+)$", log, re.M)  # the client then goes on without those files
    if failed:
        raise KaggleError(f"Kaggle did not receive {', '.join(failed)} from {folder}; dataset {ref} was {action} "
                          "without them: push again")
    error = getattr(reply, "error", None)
    if error or str(getattr(reply, "status", "") or "").lower() != "ok":
        raise KaggleError(f"Kaggle did not accept dataset {ref} from {folder}: {error or 'no reason given'}")
    uploaded = tuple(sorted(re.findall(r"^Upload successful: (\S+)", log, re.M)))
    if sorted(uploaded) != expected:
        raise KaggleError(f"the kaggle client uploaded {list(uploaded)} of {folder}, expected {expected}: dataset "
                          f"{ref} was {action} without the rest")
    return BundlePush(ref, action, getattr(reply, "url", "") or f"https://www.kaggle.com/datasets/{ref}", uploaded)
