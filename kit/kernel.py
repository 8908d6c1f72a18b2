"""Offline Kaggle kernels: build a pushable kernel folder per competition, predict inside it, push it, read its status.

A kernel folder is ``kernel-metadata.json`` plus ``kernel.py``, rendered from ``kit/templates/kaggle_kernel.py``. On
Kaggle, with the internet off, that script finds the attached competition data and datasets, installs kit from the
wheels dataset (``pip install --no-index``) and calls ``kit kernel run``, which is :func:`run_kernel`: kit
predict's own chain (:func:`kit.pipeline.predict_and_submit`, test images only, with TTA: the folds averaged, the
decision weights kit predict saved) on the attached fold checkpoints, then ``submission.csv`` in the working folder,
validated against the competition's test ids: byte for byte the submission of ``kit predict``. With a stack bundle (ISIC 2024), the image runs' test scores and the test metadata then go
through the stack's saved GBDTs (:mod:`kit.stack.saved`). The datasets come from ``kit bundle`` (:mod:`kit.bundle`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.bundle import MANIFEST, bundle_slug, check_dataset_ref, check_owner, run_competition
from kit.competitions import Competition, get_competition
from kit.errors import ConfigError, KaggleError, KitError
from kit.io import atomic_path, read_json_file, write_text_atomic

__all__ = ["KernelPush", "build_kernel", "fill_template", "kernel_metadata", "kernel_slug", "kernel_status",
           "push_kernel", "render_script", "run_kernel"]

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).parent / "templates" / "kaggle_kernel.py"
INSTALL = Path(__file__).parent / "templates" / "kaggle_install.py"
_INSTALL_LINE = re.compile(r"^from kaggle_install import .*# __INSTALL__")
_FUTURE = "from __future__ import annotations\n"
CODE_FILE = "kernel.py"
METADATA = "kernel-metadata.json"
DEFAULT_WORKING = "/kaggle/working"
STAGED_RUN = "kit-run"  # the working folder's copy of the checkpoints folder, where predict_run writes
ORIGIN = "kit-submission.json"  # beside submission.csv: the run or stack it came from, for kit submit --kernel
_LEFT_OVER = re.compile(r"__[A-Z][A-Z_]*__")


def kernel_slug(competition: str) -> str:
    """The kernel's slug, also its title: Kaggle derives a kernel's URL from its title, so the two must agree."""
    return f"kit-{get_competition(competition).name}"


def _datasets(owner: str, competition: str, wheels: str | None, weights: str | None) -> tuple[str, str]:
    """(wheels, weights) datasets: the weights default to the competition's bundle, the wheels to the weights."""
    weights = check_dataset_ref(weights or f"{owner}/{bundle_slug(competition)}", "--weights-dataset")
    return check_dataset_ref(wheels or weights, "--wheels-dataset"), weights


def kernel_metadata(competition: str, owner: str, wheels_dataset: str, weights_dataset: str) -> dict:
    """``kernel-metadata.json``: a private GPU script kernel with the internet off and its inputs attached."""
    slug = kernel_slug(competition)
    return {
        "id": f"{check_owner(owner)}/{slug}",
        "title": slug,
        "code_file": CODE_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": False,  # said explicitly: the client's default is True, and code competitions refuse it
        "dataset_sources": list(dict.fromkeys([wheels_dataset, weights_dataset])),
        "competition_sources": [get_competition(competition).name],
        "kernel_sources": [],
        "model_sources": [],
    }


def render_script(competition: str, wheels_dataset: str, weights_dataset: str, tta: str = "8") -> str:
    """The kernel script: the template with the competition, the two datasets and the TTA view set filled in."""
    from kit.stack.models import GBDTS

    spec = get_competition(competition)
    values = {"COMPETITION": spec.name, "WHEELS_DATASET": wheels_dataset, "WEIGHTS_DATASET": weights_dataset,
              "TTA": str(tta), "GBDT_MODULES": {name: gbdt.module for name, gbdt in GBDTS.items()}}
    return fill_template(TEMPLATE, values, spec.title)


def fill_template(template: Path, values: dict, title: str) -> str:
    """A kernel script from ``template``: its install line replaced by kaggle_install.py's code, every
    ``"__NAME__"`` by the Python literal of ``values[NAME]`` and ``__TITLE__`` by ``title``."""
    text = _splice_install(template)
    for name, value in values.items():
        text = text.replace(f'"__{name}__"', json.dumps(value) if isinstance(value, str) else repr(value))
    text = text.replace("__TITLE__", title)
    left = sorted(set(_LEFT_OVER.findall(text)))
    if left:
        raise KitError(f"{template} has placeholders kit does not fill: {', '.join(left)}")
    return text


def _splice_install(template: Path) -> str:
    """``template`` with kaggle_install.py's code in place of its install line, the two import blocks merged."""
    lines = template.read_text().splitlines(keepends=True)
    marks = [i for i, line in enumerate(lines) if _INSTALL_LINE.match(line)]
    if len(marks) != 1 or _FUTURE not in lines:
        raise KitError(f"{template} needs `{_FUTURE.strip()}` and one `from kaggle_install import ...  # "
                       f"__INSTALL__` line, found {len(marks)}")
    future, mark = lines.index(_FUTURE), marks[0]
    code = INSTALL.read_text().split(_FUTURE, 1)[1].splitlines(keepends=True)
    first = next(i for i, line in enumerate(code) if line.strip() and not line.startswith(("import ", "from ")))
    imports = {line for line in lines[future + 1:mark] + code[:first] if line.strip()}
    merged = sorted(imports, key=lambda line: (line.startswith("from "), line))  # isort's order
    body = "".join(code[first:]).strip("\n") + "\n"
    return "".join(lines[:future + 1] + ["\n"] + merged + ["\n", body, "\n\n"]) + \
        "".join(lines[mark + 1:]).lstrip("\n")


def build_kernel(competition: str, owner: str, wheels_dataset: str | None = None, weights_dataset: str | None = None,
                 tta: str = "8", out: str | os.PathLike | None = None) -> Path:
    """Write ``kernel-metadata.json`` and ``kernel.py`` for ``competition`` into ``out`` (default kernels/<name>)."""
    from kit.tta import get_view_set

    spec = get_competition(competition)
    get_view_set(tta)  # a bad --tta fails here, not on Kaggle an hour later
    wheels, weights = _datasets(check_owner(owner), spec.name, wheels_dataset, weights_dataset)
    out = Path(out) if out is not None else Path("kernels") / spec.name
    write_text_atomic(out / METADATA, json.dumps(kernel_metadata(spec.name, owner, wheels, weights), indent=2) + "\n")
    write_text_atomic(out / CODE_FILE, render_script(spec.name, wheels, weights, tta))
    return out


# ---------------------------------------------------------------------------------------------------- on Kaggle
def _stage(checkpoints: Path, run_dir: Path) -> Path:
    """A writable run folder of symlinks to the read-only checkpoints: predict_run writes its files beside them."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a previous run in this session
    for path in sorted(checkpoints.rglob("*")):
        target = run_dir / path.relative_to(checkpoints)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())
    return run_dir


def _predict_images(run_dir: Path, data_dir: Path, tta: str, device: str) -> tuple[list[str], np.ndarray]:
    """(test ids, the test scores of the staged run ``run_dir``) for a stack's image input: every fold with TTA (the
    test images only), the folds averaged."""
    from kit.blend import blend_folds
    from kit.predict import predict_run

    predict_run(run_dir, data_dir, tta=tta, device=device, with_oof=False)
    test_ids, test = blend_folds(run_dir, "mean")
    return [str(i) for i in test_ids], test


def check_stack_tta(stack, name: str, tta: str) -> None:
    """The kernel's TTA must be the one kit predict used for the stack's image run ``name``: its test scores are
    features of the GBDTs, fitted on the scores of that TTA."""
    from kit.tta import get_view_set

    recorded = stack.predicted_tta(name)
    if recorded is None:
        return
    views, merge = [str(v) for v in recorded["views"]], str(recorded.get("merge", "mean"))
    if views != list(get_view_set(tta)) or merge != "mean":
        used = f"--tta {len(views)}" + ("" if merge == "mean" else f" --merge {merge}")
        raise KitError(f"the stack's image run {name} was predicted with kit predict {used}, but this kernel runs "
                       f"--tta {tta} (merge mean): its test scores would not be the features the stack's GBDTs were "
                       f"fitted on; build the kernel with kit kernel build --tta {len(views)}"
                       + ("" if merge == "mean" else f", after kit predict --tta {len(views)} --merge mean and kit "
                          "stack again"))


def _predict_stack(spec: Competition, data_dir: Path, stack_dir: Path, working: Path, tta: str,
                   device: str) -> tuple[list[str], np.ndarray, str]:
    """(test ids, the stack's prediction, what it is): each image run the stack names predicts the test images,
    then the saved GBDTs predict from the test metadata's features and those scores."""
    import pandas as pd

    from kit.stack.saved import open_stack, predict_test

    stack = open_stack(stack_dir)
    if stack.competition != spec.name:
        raise KitError(f"the stack in {stack_dir} was made for {stack.competition}, not {spec.name}: attach the "
                       f"{spec.name} bundle")
    for name in stack.images:  # before any prediction: a wrong TTA would make features the GBDTs never saw
        check_stack_tta(stack, name, tta)
    scores = {}
    for name in stack.images:
        run_dir = _stage(stack.run_dir(name), working / f"{STAGED_RUN}-{name}")
        ids, test = _predict_images(run_dir, data_dir, tta, device)
        scores[name] = pd.Series(test, index=ids)
    ids, pred = predict_test(stack_dir, data_dir, scores)
    runs = ", ".join(stack.images) or "no image run"
    return [str(i) for i in ids], pred, f"the stack's GBDTs over {len(stack.folds())} folds on {runs}"


def origin_record(weights_dir: Path, tta: str) -> dict:
    """What a kernel's submission was made from: the run or stack named by the bundle (its bundle.json), the TTA."""
    manifest = weights_dir.parent / MANIFEST
    try:
        bundle = json.loads(manifest.read_text()) if manifest.is_file() else {}
    except ValueError:
        bundle = {}
    bundle = bundle if isinstance(bundle, dict) else {}
    return {"run": str(bundle.get("run") or weights_dir.name), "bundle": str(bundle.get("id", "")), "tta": tta}


def read_origin(path: Path) -> str:
    """The run or stack named in a kernel's ``kit-submission.json`` ("" when the file is absent or not kit's)."""
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (ValueError, UnicodeDecodeError):
        return ""
    return str(record.get("run", "")) if isinstance(record, dict) else ""


def run_kernel(competition: str, data_dir: str | os.PathLike, weights_dir: str | os.PathLike,
               working: str | os.PathLike = DEFAULT_WORKING, tta: str = "8", device: str = "auto") -> Path:
    """Predict the test images with every fold in ``weights_dir`` and TTA; write ``working``/submission.csv. A
    stack folder as ``weights_dir`` (a stack bundle's ``stack/``) predicts with its GBDTs on the test metadata and
    the test scores of the image runs it names."""
    from kit.pipeline import predict_and_submit
    from kit.stack.saved import is_stack
    from kit.submission import validate_file, write_submission

    spec = get_competition(competition)
    data_dir, weights_dir, working = Path(data_dir), Path(weights_dir), Path(working)
    if not data_dir.is_dir():
        raise KitError(f"competition data folder {data_dir} not found")
    if is_stack(weights_dir):
        expected, test, what = _predict_stack(spec, data_dir, weights_dir, working, tta, device)
        submission = write_submission(spec, expected, test, STAGED_RUN, working / f"{STAGED_RUN}-stack",
                                      expected_ids=expected)
    else:
        trained_for = run_competition(weights_dir)
        if trained_for != spec.name:
            raise KitError(f"the checkpoints in {weights_dir} were trained for {trained_for}, not {spec.name}: "
                           f"attach the {spec.name} bundle")
        run_dir = _stage(weights_dir, working / STAGED_RUN)
        # kit predict's own chain, test images only; balanced accuracy: the decision weights kit predict fitted
        _, submission = predict_and_submit(run_dir, data_dir, tta, device=device, out_dir=run_dir / "submissions",
                                           report=False, with_oof=False, name=STAGED_RUN)
        what = "the mean of the folds"
    final = working / "submission.csv"
    with atomic_path(final) as tmp:
        shutil.copyfile(submission, tmp)
        tmp.chmod(0o644)  # a temporary file is private to its owner; Kaggle's collector reads the output folder
    rows = validate_file(spec, final, data_dir)  # what is on disk, against the test ids of this data folder
    write_text_atomic(working / ORIGIN, json.dumps(origin_record(weights_dir, tta), indent=2))
    log.info(f"wrote {final}: {rows} rows, {what}, TTA {tta}")
    return final


# ---------------------------------------------------------------------------------------------------- Kaggle API
@dataclass(frozen=True)
class KernelPush:
    ref: str
    url: str
    version: int | None

    def summary(self) -> str:
        return (f"pushed {self.ref} version {self.version}: it runs now; `kit kernel status {self.ref}` tells when "
                f"it is done ({self.url})")


def _read_metadata(folder: Path) -> dict:
    path = folder / METADATA
    meta = read_json_file(path, f"{folder} is not a kernel folder (no {METADATA}): make one with kit kernel build")
    if "/" not in str(meta.get("id", "")):
        raise KitError(f"{path} has no \"id\" of the form OWNER/SLUG")
    code = folder / str(meta.get("code_file", ""))
    if not meta.get("code_file") or not code.is_file():
        raise KitError(f"{path} names code_file '{meta.get('code_file', '')}', which is not in {folder}")
    return meta


def _echo(printed: io.StringIO) -> None:
    """Pass on what the client printed (for example its warning about a title that does not match the id)."""
    if printed.getvalue().strip():
        log.warning(printed.getvalue().rstrip())


def push_kernel(folder: str | os.PathLike) -> KernelPush:
    """Push a kernel folder (a new version runs at once); raise when Kaggle left any of its inputs out."""
    from kit.kaggle import api_errors, authenticated_client

    folder = Path(folder)
    ref = _read_metadata(folder)["id"]
    api, source = authenticated_client()
    hints = {403: f"Kaggle refused to save kernel {ref}{{said}}: its owner must be the account of the credentials "
                  f"from {source}"}
    printed = io.StringIO()
    with api_errors(f"kernel {ref}", source, hints), contextlib.redirect_stdout(printed):
        reply = api.kernels_push(str(folder))
    _echo(printed)
    if getattr(reply, "error", None):
        raise KaggleError(f"Kaggle did not save kernel {ref}: {reply.error}")
    version = getattr(reply, "version_number", None)
    left_out = {kind: list(getattr(reply, f"invalid_{kind}_sources", None) or [])
                for kind in ("dataset", "competition", "kernel", "model")}
    said = "; ".join(f"{kind} sources {', '.join(names)}" for kind, names in left_out.items() if names)
    if said:
        raise KaggleError(f"Kaggle saved kernel {ref} (version {version}) without its inputs {said}: push the datasets "
                          "first (kit bundle push), accept the competition's rules, check the names in "
                          f"{folder / METADATA}, then push again")
    return KernelPush(ref, getattr(reply, "url", "") or f"https://www.kaggle.com/code/{ref}", version)


def check_kernel_ref(ref: str) -> str:
    """``ref`` if it is OWNER/SLUG with OWNER a Kaggle user name."""
    owner, _, slug = ref.partition("/")
    if not slug or "/" in slug:
        raise ConfigError(f"kernel '{ref}' must be OWNER/SLUG, for example {owner or 'you'}/kit-isic-2024-challenge")
    check_owner(owner, f"the owner in kernel '{ref}'")
    return ref


def kernel_status(ref: str, version: int | None = None) -> tuple[str, str]:
    """The status of the kernel's version ``version`` (default: its latest: queued, running, complete, error, ...)
    and its failure message."""
    from kit.kaggle import api_errors, authenticated_client

    check_kernel_ref(ref)
    api, source = authenticated_client()
    hints = {404: f"Kaggle has no kernel {ref} visible to this account{{said}}: push it with kit kernel push"
             if version is None else f"Kaggle has no version {version} of kernel {ref} visible to this account"
             "{said}: `kit kernel push` prints the number of each version it makes"}
    with api_errors(f"kernel {ref}", source, hints):
        reply = api.kernels_status(ref if version is None else f"{ref}/{version}")
    status = getattr(reply.status, "name", str(reply.status)).lower()
    return status, getattr(reply, "failure_message", None) or ""
