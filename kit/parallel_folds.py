"""One fold per device: ``kit train --devices 0,1,2,3`` trains folds in parallel, one process per device.

The parent holds the run's lock and writes the run's own files (config, folds, run.json, then oof.csv and
scores.json once every fold has finished); each child trains one fold, holding that fold's lock and writing only
into its folder (its output goes to ``fold{k}/train.log``). A device takes the next waiting fold when its fold ends.
A fold that fails is reported with the end of its log, the others run on, and no summary is written: the failed
fold is then re-run alone (``kit train --resume RUN --folds K``), which writes the summary of all of them.

A device is a GPU index (the child sees only that GPU, as ``cuda``) or ``cpu`` (as many as you like: tests).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from kit.config import Config
from kit.console import show_messages
from kit.errors import ConfigError, KitError
from kit.rundir import RunDir
from kit.train import EpochCallback, RunData, prepare_data, train_fold

__all__ = ["ParallelFolds", "parse_devices"]

log = logging.getLogger(__name__)


def parse_devices(text: str) -> list[str]:
    """``"0,1"`` -> ``["cuda:0", "cuda:1"]``, ``"cpu,cpu"`` -> ``["cpu", "cpu"]``; a GPU that is not here is one
    line naming the GPUs that are."""
    import torch

    devices = []
    for item in (part.strip() for part in text.split(",")):
        index = item.removeprefix("cuda:")
        if item == "cpu":
            devices.append("cpu")
        elif index.isdigit():
            have = torch.cuda.device_count()
            if int(index) >= have:
                raise ConfigError(f"--devices {text}: GPU {index} is not here ({have} GPU{'s' * (have != 1)} "
                                  f"visible{': 0-' + str(have - 1) if have else ''}); use cpu for CPU processes")
            devices.append(f"cuda:{index}")
        else:
            raise ConfigError(f"--devices {text}: '{item}' is neither a GPU index (0, 1, ...) nor cpu")
    if not devices:
        raise ConfigError("--devices needs at least one device, e.g. --devices 0,1 or --devices cpu,cpu")
    return devices


def _check_config(cfg: Config, devices: list[str]) -> None:
    wanted = cfg.train.device
    if wanted.startswith("cuda:"):
        raise ConfigError(f"train.device={wanted} picks one GPU, but --devices gives each fold its own: set "
                          "train.device=auto or cuda")
    if wanted == "cuda" and "cpu" in devices:
        raise ConfigError("train.device=cuda but --devices names cpu; set train.device=auto")
    if wanted == "cpu" and any(d != "cpu" for d in devices):
        raise ConfigError("train.device=cpu but --devices names GPUs; set train.device=auto")


def _child(run_path: str, k: int, device: str, exclude: list[str] | None, threads: int) -> None:
    """Train fold ``k`` on ``device`` in this (spawned) process; its output goes to the fold's train.log."""
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if device == "cpu" else device.split(":")[1]  # before CUDA starts
    run = RunDir(run_path)
    log_path = run.fold_log_path(k)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as out, redirect_stdout(out), redirect_stderr(out):
        os.dup2(out.fileno(), 1)  # output of C extensions and warnings too
        os.dup2(out.fileno(), 2)
        import torch

        if threads:
            torch.set_num_threads(threads)
        show_messages()  # a fresh interpreter: the fold's messages go to its train.log
        try:
            cfg = run.config()
            data = prepare_data(cfg, run.data_dir(), run, exclude=exclude)
            train_fold(cfg, data, k, run)
        except KitError as e:
            log.error(f"kit train: error: fold {k}: {e}")
            sys.exit(1)


@dataclass
class _Job:
    k: int
    device: str
    process: multiprocessing.Process


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


class ParallelFolds:
    """A fold runner for :func:`kit.train.train_folds`: folds in parallel, one process per device."""

    def __init__(self, devices: list[str], exclude: list[str] | None = None, poll_s: float = 0.2):
        self.devices, self.exclude, self.poll_s = list(devices), exclude, poll_s

    def _threads(self) -> int:
        """CPU threads per CPU child (0: torch's default): the cores shared out, unless OMP_NUM_THREADS says."""
        n_cpu = self.devices.count("cpu")
        if not n_cpu or os.environ.get("OMP_NUM_THREADS"):
            return 0
        return max(1, (os.cpu_count() or 1) // n_cpu)

    def _start(self, run: RunDir, k: int, device: str) -> _Job:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state, no inherited locks
        proc = ctx.Process(target=_child, args=(str(run.path), k, device, self.exclude, self._threads()),
                           name=f"kit-fold{k}")
        proc.start()
        log.info(f"fold {k}: training on {device} (pid {proc.pid}, log {run.fold_log_path(k)})")
        return _Job(k, device, proc)

    def __call__(self, cfg: Config, data: RunData, run: RunDir, folds: list[int],
                 on_epoch: EpochCallback | None = None, progress: bool = False) -> None:
        _check_config(cfg, self.devices)
        if on_epoch is not None:
            raise ConfigError("a per-epoch callback (--time-budget, kit tune's pruning) needs the folds in this "
                              "process; train without --devices")
        waiting = [k for k in folds if not run.result_path(k).is_file()]
        for k in sorted(set(folds) - set(waiting)):
            log.info(f"fold {k}: already finished, skipped")
        failed = self._run_all(run, list(waiting))
        if failed:
            lines = "; ".join(f"fold {k} ({why})" for k, why in failed.items())
            again = ",".join(str(k) for k in failed)
            raise KitError(f"{len(failed)} of {len(waiting)} folds failed: {lines}. The others finished; re-run "
                           f"the failed ones alone with kit train --resume {run.path} --folds {again}")

    def _run_all(self, run: RunDir, waiting: list[int]) -> dict[int, str]:
        """Train ``waiting`` folds on the free devices; fold -> why, for those that failed."""
        free, running, failed = list(self.devices), [], {}
        try:
            while waiting or running:
                while waiting and free:
                    running.append(self._start(run, waiting.pop(0), free.pop(0)))
                time.sleep(self.poll_s)
                for job in [j for j in running if not j.process.is_alive()]:
                    job.process.join()
                    running.remove(job)
                    free.append(job.device)
                    code = job.process.exitcode
                    if code == 0 and run.result_path(job.k).is_file():
                        log.info(f"fold {job.k}: finished on {job.device}")
                    else:
                        failed[job.k] = f"exit {code}: {_last_line(run.fold_log_path(job.k))}"
                        log.error(f"fold {job.k}: FAILED on {job.device}, {failed[job.k]}")
        except BaseException:  # Ctrl-C, SIGTERM, a bug: no fold process outlives the parent
            for job in running:
                job.process.terminate()
            for job in running:
                job.process.join(timeout=30)
            raise
        return failed
