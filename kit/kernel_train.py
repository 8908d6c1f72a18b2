"""Training kernels: train a run's folds on Kaggle's GPUs, session after session, and bring the run folder home.

``kit kernel build --train`` writes a kernel folder whose script (``kit/templates/kaggle_train_kernel.py``) installs
kit offline from a wheels dataset, runs ``kit train`` with the config resolved here (written into the script) and a
time budget, and leaves the run folder in ``/kaggle/working``. A build with ``resume=True`` attaches the kernel's own
previous output, and its script continues that run with ``kit train --resume``. :func:`pull_kernel` waits for the
kernel, downloads its output and turns it into a local run folder; a failed kernel's log tail is the error.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from kit.bundle import WHEELS_SLUG, check_dataset_ref, check_owner
from kit.competitions import get_competition
from kit.errors import ConfigError, KaggleError, KitError
from kit.io import replace_dir, write_text_atomic
from kit.kernel import CODE_FILE, METADATA, fill_template, kernel_status
from kit.records import RunInfo, Scores
from kit.rundir import LOCK_FILE, RunDir

__all__ = ["ACCELERATORS", "DEFAULT_TIME_BUDGET", "PullResult", "build_train_kernel", "kernel_log",
           "pull_kernel", "resolved_config_yaml", "train_kernel_metadata", "train_kernel_slug", "wait_for_kernel"]

TEMPLATE = Path(__file__).parent / "templates" / "kaggle_train_kernel.py"
# kernel-metadata.json's machine_shape: "NvidiaTeslaT4" is Kaggle's two-T4 machine (its default GPU); the P100 has
# no kernels in the cu128 torch of Kaggle's current image (kaggle-cli #1156), so it is offered, not the default.
ACCELERATORS = {"t4x2": "NvidiaTeslaT4", "p100": "NvidiaTeslaP100"}
DEFAULT_TIME_BUDGET = 11 * 3600.0  # a GPU session ends at 12 h; the rest is for installing and saving the output
RUN_NAME = "run"
STATE = "kit-kernel.json"
RUNNING = ("queued", "running", "new_script", "cancel_requested")


def train_kernel_slug(competition: str) -> str:
    """The training kernel's slug and title (kept apart from the inference kernel's kit-<competition>)."""
    return f"kit-train-{get_competition(competition).name}"


def train_kernel_metadata(competition: str, owner: str, wheels_dataset: str, internet: bool = False,
                          accelerator: str = "t4x2", resume: bool = False,
                          datasets: Sequence[str] = ()) -> dict:
    """``kernel-metadata.json`` of a private GPU training kernel; a continuation attaches its own last output."""
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"unknown --accelerator '{accelerator}'; known: {', '.join(ACCELERATORS)}")
    slug = train_kernel_slug(competition)
    ref = f"{check_owner(owner)}/{slug}"
    return {
        "id": ref, "title": slug, "code_file": CODE_FILE, "language": "python", "kernel_type": "script",
        "is_private": True, "enable_gpu": True, "enable_tpu": False, "machine_shape": ACCELERATORS[accelerator],
        "enable_internet": bool(internet),  # said explicitly: the client's default is True
        "dataset_sources": list(dict.fromkeys([wheels_dataset, *datasets])),
        "competition_sources": [get_competition(competition).name],
        "kernel_sources": [ref] if resume else [],  # mounts the output of the kernel's latest version
        "model_sources": [],
    }


EXTRA_MARK = "@kaggle-input:"  # data.extra's folder in the kernel's config: found under /kaggle/input at run time


def resolved_config_yaml(competition: str, config: str | None, overrides: Sequence[str]) -> str:
    """The full config the kernel trains with, checked here. A ``model.weights`` override is kept as written and
    not checked: it names a file in an attached dataset, which exists only on Kaggle. Each data.extra folder (a
    local path) becomes a mark the kernel replaces with the folder under /kaggle/input that holds that
    competition's labels file (:func:`extra_inputs`)."""
    import yaml

    from kit.config import config_to_yaml, load_config

    weights = [o for o in overrides if o.split("=", 1)[0].strip() == "model.weights"]
    cfg = load_config(competition, config, [o for o in overrides if o not in weights])
    data = yaml.safe_load(config_to_yaml(cfg, with_provenance=False))
    if weights:
        data["model"]["weights"] = weights[-1].split("=", 1)[1].strip() or None
    for entry in data.get("data", {}).get("extra", []):
        entry["data"] = EXTRA_MARK + get_competition(entry["competition"]).name
    return yaml.safe_dump(data, sort_keys=False)


def extra_inputs(config_yaml: str) -> list[dict]:
    """What the kernel must find of data.extra: each competition and the labels file that marks its folder."""
    import yaml

    entries = (yaml.safe_load(config_yaml).get("data") or {}).get("extra") or []
    return [{"competition": get_competition(e["competition"]).name,
             "labels": get_competition(e["competition"]).labels_file} for e in entries]


def build_train_kernel(competition: str, owner: str, wheels_dataset: str | None = None, config: str | None = None,
                       overrides: Sequence[str] = (), time_budget: float = DEFAULT_TIME_BUDGET,
                       internet: bool = False, accelerator: str = "t4x2", resume: bool = False,
                       datasets: Sequence[str] = (), out: str | os.PathLike | None = None) -> Path:
    """Write a training kernel folder for ``competition`` into ``out`` (default kernels/train-<name>)."""
    spec = get_competition(competition)
    if not time_budget > 0:
        raise ConfigError(f"--time-budget must be a positive number of seconds, got {time_budget}")
    wheels = check_dataset_ref(wheels_dataset or f"{check_owner(owner)}/{WHEELS_SLUG}", "--wheels-dataset")
    extra = [check_dataset_ref(d, "--attach") for d in datasets]
    meta = train_kernel_metadata(spec.name, owner, wheels, internet, accelerator, resume, extra)
    config_yaml = resolved_config_yaml(spec.name, config, overrides)
    extra_data = extra_inputs(config_yaml)
    # an extra that is a Kaggle competition is attached as one; the others (ISIC 2018, 2019) are datasets: --attach
    meta["competition_sources"] += [e["competition"] for e in extra_data if get_competition(e["competition"]).on_kaggle
                                    and e["competition"] not in meta["competition_sources"]]
    values = {"COMPETITION": spec.name, "WHEELS_DATASET": wheels, "KERNEL": meta["id"], "CONTINUE": resume,
              "RUN": RUN_NAME, "CONFIG_YAML": config_yaml, "EXTRA": extra_data, "EXTRA_MARK": EXTRA_MARK,
              "TIME_BUDGET": float(time_budget), "BUILD": uuid.uuid4().hex[:12]}
    script = fill_template(TEMPLATE, values, spec.title)
    out = Path(out) if out is not None else Path("kernels") / f"train-{spec.name}"
    write_text_atomic(out / METADATA, json.dumps(meta, indent=2) + "\n")
    write_text_atomic(out / CODE_FILE, script)
    return out


def script_build(folder: str | os.PathLike) -> str | None:
    """The build token written into a training kernel's script: its output's kit-kernel.json repeats it."""
    text = (Path(folder) / CODE_FILE).read_text() if (Path(folder) / CODE_FILE).is_file() else ""
    line = next((ln for ln in text.splitlines() if ln.startswith("BUILD = ")), None)
    return json.loads(line.split("=", 1)[1].split("#")[0]) if line else None


# ---------------------------------------------------------------------------------------------------- waiting
def wait_for_kernel(ref: str, timeout: float, poll_every: float,
                    say: Callable[[str], None] | None = None) -> tuple[str, str]:
    """Poll the kernel's status until it is over or ``timeout`` seconds have passed: (status, failure message)."""
    status, failure = kernel_status(ref)
    deadline = time.monotonic() + timeout  # from the first answer: importing the client takes a while
    while status in RUNNING and time.monotonic() < deadline:
        if say is not None:
            say(f"{ref}: {status}")
        time.sleep(min(poll_every, max(0.0, deadline - time.monotonic())))
        status, failure = kernel_status(ref)
    return status, failure


def _log_text(raw: str) -> str:
    """Kaggle's log is a JSON list of {stream_name, time, data}; plain text is taken as it is."""
    try:
        entries = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(entries, list):
        return raw
    return "".join(str(e.get("data", "")) for e in entries if isinstance(e, dict))


def kernel_log(ref: str) -> str:
    """The log of the kernel's latest session, as text."""
    from kit.kaggle import api_errors, authenticated_client

    api, source = authenticated_client()
    with api_errors(f"kernel {ref}", source):
        return _log_text(api.kernels_logs(ref) or "")


def _tail(text: str, lines: int = 30) -> str:
    kept = [ln.rstrip() for ln in text.strip().splitlines()][-lines:]
    return "\n".join(f"  | {ln}" for ln in kept) if kept else "  | (the log is empty)"


def failed(ref: str, failure: str) -> KaggleError:
    """The error for a failed kernel: Kaggle's message and the end of its log, in one block."""
    return KaggleError(f"kernel {ref} failed: {failure or 'no message'}. The end of its log:\n"
                       f"{_tail(kernel_log(ref))}\nthe whole log: https://www.kaggle.com/code/{ref}/log")


# ---------------------------------------------------------------------------------------------------- pulling
@dataclass(frozen=True)
class PullResult:
    ref: str
    run_dir: Path
    finished: bool
    folds_done: list[int]
    n_folds: int
    log: Path | None

    def summary(self) -> str:
        head = f"pulled kernel {self.ref} into {self.run_dir}"
        if self.finished:
            scores = RunDir(self.run_dir).load(Scores, optional=True)
            cv = f", CV {scores.metric} {scores.cv:.4f}" if scores else ""
            return f"{head}: finished{cv}; predict with: kit predict {self.run_dir} --data DATA"
        return (f"{head}: not finished ({len(self.folds_done)} of {self.n_folds} folds done); continue it with: "
                f"kit kernel train --continue ... (or kit kernel build --train --continue, then push)")


def _download(api, ref: str, source: str, into: Path, pattern: str | None = None) -> None:
    """The kernel's output files (those whose path matches ``pattern``) and its log, into ``into``."""
    from kit.kaggle import api_errors

    hints = {404: f"Kaggle has no kernel {ref} visible to this account{{said}}"}
    with api_errors(f"kernel {ref}", source, hints):
        api.kernels_output(ref, str(into), file_pattern=pattern, force=True, quiet=True)


def _run_in(staged: Path, ref: str) -> tuple[RunDir, dict]:
    """The run folder the output's kit-kernel.json names; one clear line when there is none."""
    state_path = staged / STATE
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    shown = ", ".join(files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "") if files else "no files"
    try:
        state = json.loads(state_path.read_text()) if state_path.is_file() else None
    except json.JSONDecodeError:
        state = None
    run_dir = staged / str(state.get("run", "")) if isinstance(state, dict) and state.get("run") else None
    if run_dir is None or not RunDir(run_dir).is_run():
        raise KitError(f"the output of kernel {ref} holds no kit run folder ({STATE} naming one with its "
                       f"config.yaml; found {shown}): is it a training kernel of kit kernel build --train?")
    return RunDir(run_dir), state


def _place(run: RunDir, out: Path) -> None:
    """Move the downloaded run folder to ``out``, replacing a run folder there (never anything else)."""
    if out.exists() and not RunDir(out).is_run() and any(out.iterdir()):
        raise KitError(f"{out} exists and is not a run folder: choose another --out")
    replace_dir(run.path, out)


def _output_build(api, ref: str, source: str, into: Path) -> str | None:
    """The build token of the output's kit-kernel.json, downloading that file alone."""
    _download(api, ref, source, into, f"^{STATE.replace('.', '[.]')}$")
    try:
        state = json.loads((into / STATE).read_text()) if (into / STATE).is_file() else {}
    except json.JSONDecodeError:
        state = {}
    return state.get("build") if isinstance(state, dict) else None


def _wait_for_output(api, source: str, ref: str, wait: float, poll_every: float, build: str | None,
                     staged: Path, say: Callable[[str], None] | None) -> None:
    """Wait until the kernel is complete and, with ``build``, its output is the one of that build of the script
    (right after a push Kaggle may still report the previous version, complete)."""
    deadline = time.monotonic() + wait
    while True:
        status, failure = wait_for_kernel(ref, max(0.0, deadline - time.monotonic()), poll_every, say)
        if status == "error":
            raise failed(ref, failure)
        if status != "complete":
            raise KaggleError(f"kernel {ref} is {status}" + (" after waiting" if wait else "") +
                              f": pull it once it is complete (kit kernel pull {ref} --out RUN --wait SECONDS)")
        found = build and _output_build(api, ref, source, staged / ".state")
        if not build or found == build:
            return
        if time.monotonic() >= deadline:
            raise KaggleError(f"the output of kernel {ref} is of another version than the one just pushed (build "
                              f"{found}, not {build}): pull it again once the new version is complete")
        if say is not None:
            say(f"{ref}: complete, with the output of an older version; waiting for the new one")
        time.sleep(min(poll_every, max(0.0, deadline - time.monotonic())))


def pull_kernel(ref: str, out: str | os.PathLike, data: str | os.PathLike | None = None, wait: float = 0.0,
                poll_every: float = 30.0, build: str | None = None,
                say: Callable[[str], None] | None = None) -> PullResult:
    """Wait for kernel ``ref``, download its output and make its run folder the local run folder ``out``.

    ``data`` points the run at a local copy of the competition data (run.json keeps Kaggle's path otherwise);
    ``build`` waits for (and then insists on) the output of that build of the script, the one just pushed.
    """
    from kit.kaggle import authenticated_client

    out = Path(out)
    api, source = authenticated_client()
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.pull.", dir=out.parent))
    try:
        _wait_for_output(api, source, ref, wait, poll_every, build, staged, say)
        shutil.rmtree(staged / ".state", ignore_errors=True)
        _download(api, ref, source, staged)
        run, state = _run_in(staged, ref)
        log = next(staged.glob("*.log"), None)
        n_folds, done = len(run.load(RunInfo).folds), run.finished_folds()  # no config parse: it imports timm
        _place(run, out)
        if data is not None:  # after the move: run.json keeps the data folder relative to where the run lives
            placed = RunDir(out)
            with placed.writing():
                placed.save_info(Path(data).resolve(), placed.load(RunInfo).folds)
            (placed.path / LOCK_FILE).unlink(missing_ok=True)
        kept = None
        if log is not None:
            kept = out.with_name(f"{out.name}.kernel.log")
            os.replace(log, kept)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return PullResult(ref, out, bool(state.get("finished")), done, n_folds, kept)
