"""The run folder: the contract between the stages, owned here and nowhere else.

::

    runs/NAME/
        config.yaml          the resolved config (+ git SHA, package versions)        kit train
        run.json             data folder, folds trained by the last kit train call      kit train
        folds.csv            id -> fold                                                 kit train
        augmentation.yaml    the training augmentation, serialised by albumentations    kit train
        fold{k}/best.pt      best epoch's model (kit.checkpoint)                        kit train
        fold{k}/last.pt      everything to resume the fold                              kit train
        fold{k}/history.csv  one row per epoch                                          kit train
        fold{k}/oof.csv      the best epoch's out-of-fold predictions                   kit train
        fold{k}/result.json  written last: the fold has finished                        kit train
        fold{k}/train.log    output of a fold trained in its own process (--devices)    kit train
        fold{k}/.kit-lock    held by the process training the fold
        oof.csv, scores.json pooled OOF of the trained folds and their CV               kit train
        test_fold{k}.csv     each fold's test predictions (with TTA)                    kit predict
        oof_tta.csv, scores_tta.json, predict.json                                      kit predict
        report/*.png                                                                    kit report
        train.log            everything kit train printed into this folder (appended)   kit train
        .kit-lock            held by the process writing the folder

Readers need no lock. Writers work inside ``with run.writing():``, an exclusive ``flock`` on ``.kit-lock``; a second
writer stops at once with one line naming the holder's pid and command. A fold's files are also covered by the
fold's own lock (``run.writing(fold=k)``, on ``fold{k}/.kit-lock``): ``kit train`` takes it around each fold, and a
fold trained in a process of its own (``kit train --devices``) holds only that one while its parent holds the run's.
A lock is re-entrant within a process (``kit train`` writes the report inside its own lock) and dies with its
process, so a killed writer never leaves a stale lock behind.

Paths are stored portably: ``run.json``'s data folder and ``config.yaml``'s ``model.weights`` relative to the run
folder (:func:`kit.io.portable_path`; the weights file's name and SHA-256 also go into the config's provenance), so
nothing of the user's home directory travels with a run that is uploaded.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from kit.competitions import Competition, get_competition
from kit.config import Config, config_to_yaml, load_saved_config
from kit.errors import KitError
from kit.io import (
    portable_path,
    remove_orphans,
    resolve_stored_path,
    sha256_file,
    tee_output,
    write_csv_atomic,
    write_error,
    write_text_atomic,
)

__all__ = ["RunDir", "RunLockedError"]

LOCK_FILE = ".kit-lock"
_HELD: dict[Path, list] = {}  # resolved run path -> [fd, depth]: this process's locks


class RunLockedError(KitError):
    """Another process is writing the run folder."""


class RunDir:
    """Every path and reader of a run folder, and the lock its writers hold."""

    CONFIG, INFO, FOLDS, AUGMENTATION = "config.yaml", "run.json", "folds.csv", "augmentation.yaml"
    OOF, SCORES = "oof.csv", "scores.json"
    OOF_TTA, SCORES_TTA, PREDICT_INFO = "oof_tta.csv", "scores_tta.json", "predict.json"
    DECISION = "decision.json"
    REPORT, LOG = "report", "train.log"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._spec: Competition | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        """The run's name: its folder's name (also when given as '.')."""
        return self.path.resolve().name

    # ------------------------------------------------------------------------------------------ what a run is
    def is_run(self) -> bool:
        return (self.path / self.CONFIG).is_file() and (self.path / self.INFO).is_file()

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        """An existing run folder; anything else raises the one 'not a run folder' error."""
        run = cls(path)
        if not run.path.is_dir():
            raise KitError(f"run folder {run.path} not found")
        missing = [name for name in (cls.CONFIG, cls.INFO) if not (run.path / name).is_file()]
        if missing:
            raise KitError(f"{run.path} is not a kit run folder (no {' or '.join(missing)}): give a folder that "
                           "kit train --out wrote")
        return run

    # ------------------------------------------------------------------------------------------------- paths
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def info_path(self) -> Path:
        return self.path / self.INFO

    @property
    def folds_path(self) -> Path:
        return self.path / self.FOLDS

    @property
    def augmentation_path(self) -> Path:
        return self.path / self.AUGMENTATION

    @property
    def oof_path(self) -> Path:
        return self.path / self.OOF

    @property
    def scores_path(self) -> Path:
        return self.path / self.SCORES

    @property
    def oof_tta_path(self) -> Path:
        return self.path / self.OOF_TTA

    @property
    def scores_tta_path(self) -> Path:
        return self.path / self.SCORES_TTA

    @property
    def predict_info_path(self) -> Path:
        return self.path / self.PREDICT_INFO

    @property
    def log_path(self) -> Path:
        return self.path / self.LOG

    @property
    def decision_path(self) -> Path:
        """decision.json: the balanced-accuracy decision weights kit predict fitted (kit.decision)."""
        return self.path / self.DECISION

    @property
    def report_dir(self) -> Path:
        return self.path / self.REPORT

    def fold_dir(self, k: int) -> Path:
        return self.path / f"fold{k}"

    def best_path(self, k: int) -> Path:
        return self.fold_dir(k) / "best.pt"

    def last_path(self, k: int) -> Path:
        return self.fold_dir(k) / "last.pt"

    def history_path(self, k: int) -> Path:
        return self.fold_dir(k) / "history.csv"

    def fold_oof_path(self, k: int) -> Path:
        return self.fold_dir(k) / "oof.csv"

    def result_path(self, k: int) -> Path:
        return self.fold_dir(k) / "result.json"

    def fold_log_path(self, k: int) -> Path:
        """The output of a fold trained in a process of its own (kit train --devices)."""
        return self.fold_dir(k) / "train.log"

    def test_path(self, k: int) -> Path:
        return self.path / f"test_fold{k}.csv"

    def checkpoints(self) -> list[Path]:
        """Every checkpoint file of every fold."""
        return sorted(self.path.glob("fold*/*.pt"))

    # ----------------------------------------------------------------------------------------------- readers
    def config(self) -> Config:
        """config.yaml, with a relative ``model.weights`` taken from the run folder where that file exists."""
        cfg = load_saved_config(self.config_path)
        if cfg.model.weights and not Path(cfg.model.weights).is_absolute():
            found = resolve_stored_path(cfg.model.weights, self.path)
            if found.is_file():
                cfg = replace(cfg, model=replace(cfg.model, weights=str(found)))
        if cfg.data.extra:  # relative to the run folder, as run.json's data folder
            extra = [{**e, "data": str(resolve_stored_path(e["data"], self.path))} for e in cfg.data.extra]
            cfg = replace(cfg, data=replace(cfg.data, extra=extra))
        return cfg

    def competition(self) -> Competition:
        if self._spec is None:
            self._spec = get_competition(self.config().competition)
        return self._spec

    def info(self) -> dict[str, Any]:
        """run.json: ``data`` (the data folder, a Path) and ``folds`` (of the last kit train call)."""
        info = _read_json(self.info_path)
        return {**info, "data": resolve_stored_path(info["data"], self.path) if info.get("data") else None,
                "folds": [int(k) for k in info.get("folds", [])]}

    def fold_numbers(self) -> list[int]:
        """Every fold folder's number, finished or not."""
        return sorted(int(p.name[4:]) for p in self.path.glob("fold*") if p.is_dir() and p.name[4:].isdigit())

    def finished_folds(self) -> list[int]:
        """Folds whose training ended (result.json is written last)."""
        return [k for k in self.fold_numbers() if self.result_path(k).is_file()]

    def unfinished_folds(self) -> list[int]:
        """Folds with a checkpoint but no result.json: interrupted, resumable."""
        return [k for k in self.fold_numbers() if not self.result_path(k).is_file() and self.last_path(k).is_file()]

    def fold_result(self, k: int) -> dict[str, Any]:
        return _read_json(self.result_path(k))

    def history(self, k: int) -> pd.DataFrame:
        path = self.history_path(k)
        if not path.is_file():
            raise KitError(f"{path} is missing: fold {k} of {self.path} has not trained an epoch")
        return pd.read_csv(path)

    def _read_predictions(self, path: Path) -> pd.DataFrame:
        return pd.read_csv(path, dtype={self.competition().id_col: str})

    def fold_oof(self, k: int) -> pd.DataFrame:
        path = self.fold_oof_path(k)
        if not path.is_file():
            raise KitError(f"{path} is missing: fold {k} of {self.path} has not finished")
        return self._read_predictions(path)

    def collect_oof(self, folds: list[int]) -> pd.DataFrame:
        """The out-of-fold predictions of ``folds``, from each fold's own oof.csv."""
        return pd.concat([self.fold_oof(k) for k in folds], ignore_index=True)

    def oof(self) -> pd.DataFrame:
        """The run's pooled oof.csv, or the folds' own while the run has not finished."""
        if self.oof_path.is_file():
            return self._read_predictions(self.oof_path)
        folds = [k for k in self.fold_numbers() if self.fold_oof_path(k).is_file()]
        if not folds:
            raise KitError(f"{self.path} has no out-of-fold predictions (no oof.csv, no fold*/oof.csv)")
        return self.collect_oof(folds)

    def oof_tta(self) -> pd.DataFrame | None:
        return self._read_predictions(self.oof_tta_path) if self.oof_tta_path.is_file() else None

    def test_predictions(self, k: int) -> pd.DataFrame:
        path = self.test_path(k)
        if not path.is_file():
            raise KitError(f"{path} is missing: run `kit predict {self.path}` again")
        return self._read_predictions(path)

    def predict_info(self) -> dict[str, Any]:
        if not self.predict_info_path.is_file():
            raise KitError(f"{self.path} has no test predictions (no {self.PREDICT_INFO}): run "
                           f"`kit predict {self.path}` first")
        return _read_json(self.predict_info_path)

    def scores(self) -> dict[str, Any] | None:
        return _read_json(self.scores_path) if self.scores_path.is_file() else None

    def scores_tta(self) -> dict[str, Any] | None:
        return _read_json(self.scores_tta_path) if self.scores_tta_path.is_file() else None

    def cv(self) -> tuple[float | None, float | None]:
        """(CV without TTA, CV with TTA), None where the run has not been scored or predicted yet."""
        scores, tta = self.scores(), self.scores_tta()
        plain = scores.get("cv") if scores else None
        with_tta = tta["cv"].get("tta") if tta and isinstance(tta.get("cv"), dict) else None
        return plain, with_tta

    # ----------------------------------------------------------------------------------------------- writers
    @contextmanager
    def writing(self, fold: int | None = None) -> Iterator[RunDir]:
        """Hold the folder's write lock for the block (or, with ``fold``, the lock of that fold's folder alone: a
        fold trained in a process of its own writes only there); re-entrant within this process."""
        folder = self.path if fold is None else self.fold_dir(fold)
        key = folder.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield self
            finally:
                _HELD[key][1] -= 1
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only place, or a file where the folder must be: one line naming it
            raise (write_error(folder, e) or e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunLockedError(f"{folder} is being written by {holder}: wait for it to end, or use another "
                                 "folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                 "command": " ".join(sys.argv)}).encode())
        _HELD[key] = [fd, 1]
        removed = remove_orphans(folder)  # the lock is ours: any temporary file is a killed writer's
        if removed:
            print(f"note: removed {removed} temporary file{'s' * (removed > 1)} left by an interrupted writer")
        try:
            yield self
        finally:
            del _HELD[key]
            os.close(fd)  # releases the flock

    def _check_writer(self, path: Path | None = None) -> None:
        """The run's lock is held here, or ``path`` lies in a fold folder whose lock is held here."""
        if self.path.resolve() in _HELD:
            return
        if path is not None and any(parent in _HELD for parent in Path(path).resolve().parents):
            return
        raise RuntimeError(f"bug: {self.path} written without its lock (use `with run.writing():`)")

    def write_config(self, cfg: Config, extra: dict[str, Any] | None = None) -> Path:
        """config.yaml: the config with ``model.weights`` and ``data.extra``'s folders relative to the folder, and the
        provenance (git SHA, versions, ``extra``: the initial weights' source, a pretrained tag or a file's name, with
        its SHA-256)."""
        self._check_writer()
        extra = dict(extra or {})
        if cfg.model.weights:
            weights = Path(cfg.model.weights)
            extra.setdefault("weights", {"source": f"file:{weights.name}", "sha256": sha256_file(weights)})
            cfg = replace(cfg, model=replace(cfg.model, weights=portable_path(weights, self.path)))
        if cfg.data.extra:
            sources = [{**e, "data": portable_path(e["data"], self.path)} for e in cfg.data.extra]
            cfg = replace(cfg, data=replace(cfg.data, extra=sources))
        return write_text_atomic(self.config_path, config_to_yaml(cfg, extra=extra))

    def write_info(self, data_dir: Path, folds: list[int]) -> Path:
        """run.json: the data folder (relative to this folder) and the folds of the last kit train call."""
        return self.write_json(self.info_path, {"data": portable_path(data_dir, self.path), "folds": list(folds)})

    def write_json(self, path: Path, data: Any) -> Path:
        """Write one of this run's JSON files (``path`` from one of the path properties)."""
        self._check_writer(path)
        return write_text_atomic(path, json.dumps(data, indent=2, default=float))

    def write_csv(self, path: Path, df: pd.DataFrame) -> Path:
        """Write one of this run's CSV files (``path`` from one of the path properties)."""
        self._check_writer(path)
        return write_csv_atomic(df, path)


    @contextmanager
    def logging(self) -> Iterator[None]:
        """Append everything printed in the block to train.log, from the moment this process holds the folder's
        lock and its config.yaml exists (a failed start leaves no log behind; a second writer refused at the lock
        writes nothing into the first one's log) to the end of the block."""
        state: dict[str, Any] = {"file": None}

        def sink():
            if state["file"] is None and self.path.resolve() in _HELD and self.config_path.is_file():
                state["file"] = open(self.log_path, "a", encoding="utf-8")
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                state["file"].write(f"# {stamp} kit {' '.join(sys.argv[1:])} (pid {os.getpid()})\n")
            return state["file"]

        try:
            with tee_output(sink):
                yield
        except BaseException as e:  # the one-line error cli.py prints after the tee is gone belongs in the log too
            if state["file"] is not None:
                state["file"].write(f"# stopped: {type(e).__name__}: {e}\n")
            raise
        finally:
            if state["file"] is not None:
                state["file"].close()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise KitError(f"{path} is missing") from None
    except json.JSONDecodeError as e:
        raise KitError(f"{path} is not valid JSON (line {e.lineno})") from None


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote in the lock file (it may still be writing it: wait a moment)."""
    for _ in range(40):
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            info = json.loads(os.read(fd, 65536).decode() or "{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            info = {}
        if info.get("pid") and _alive(int(info["pid"]), info.get("host")):
            return f"pid {info['pid']} on {info.get('host')} ({info.get('command') or 'unknown command'})"
        time.sleep(0.05)
    return "another process"


def _alive(pid: int, host: str | None) -> bool:
    if host != socket.gethostname():
        return True  # a shared file system: cannot check, trust it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
