"""The run folder and the stack folder: the contract between the stages, owned here and nowhere else.

A run (:class:`RunDir`, what ``kit train`` writes) and a stack (:class:`StackDir`, what ``kit stack`` writes) are two
kinds of :class:`PredictionSource`; :func:`open_source` gives the right one. The JSON files are typed records
(:mod:`kit.records`): ``folder.load(PredictInfo)`` reads one, ``folder.save(record)`` writes it under the lock.

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
        report/*.png, report/index.html   the plots, and the run page that shows them    kit report
        decision.json        balanced accuracy: per-class decision weights              kit predict
        tensorboard/         TensorBoard event files (train.loggers)                    kit train
        train.log            everything kit train printed into this folder (appended)   kit train
        .kit-lock            held by the process writing the folder

    STACK/                   stack.json, folds.csv, oof.csv, scores.json, test_fold{k}.csv, predict.json,
                             fold{k}/ (saved GBDTs), report/ (kit.stack: no config.yaml, no run.json)

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

import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, TypeVar

import pandas as pd

from kit.competitions import Competition, get_competition
from kit.config import Config, config_to_yaml, load_saved_config
from kit.errors import KitError
from kit.io import (
    portable_path,
    remove_orphans,
    resolve_stored_path,
    sha256_file,
    take_lock,
    tee_output,
    write_csv_atomic,
    write_error,
    write_text_atomic,
)
from kit.records import (
    FoldResult,
    PredictInfo,
    Record,
    RunInfo,
    Scores,
    StackInfo,
    TtaScores,
    read_record,
    record_text,
)

__all__ = ["Folder", "PredictionSource", "RunDir", "RunLockedError", "StackDir", "open_source"]

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Record)

LOCK_FILE = ".kit-lock"
_HELD: dict[Path, list] = {}  # resolved run path -> [fd, depth]: this process's locks


class RunLockedError(KitError):
    """Another process is writing the run folder."""


class Folder:
    """What a run folder and a stack folder share: the folds, the prediction frames, the record files, the lock."""

    FOLDS, OOF, OOF_TTA, REPORT = "folds.csv", "oof.csv", "oof_tta.csv", "report"
    kind = "folder"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._spec: Competition | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def name(self) -> str:
        """The folder's name (also when given as '.')."""
        return self.path.resolve().name

    # ------------------------------------------------------------------------------------------------- paths
    @property
    def folds_path(self) -> Path:
        return self.path / self.FOLDS

    @property
    def oof_path(self) -> Path:
        return self.path / self.OOF

    @property
    def oof_tta_path(self) -> Path:
        return self.path / self.OOF_TTA

    @property
    def report_dir(self) -> Path:
        return self.path / self.REPORT

    def fold_dir(self, k: int) -> Path:
        return self.path / f"fold{k}"

    def test_path(self, k: int) -> Path:
        return self.path / f"test_fold{k}.csv"

    def fold_numbers(self) -> list[int]:
        """Every fold folder's number, finished or not."""
        return sorted(int(p.name[4:]) for p in self.path.glob("fold*") if p.is_dir() and p.name[4:].isdigit())

    # ----------------------------------------------------------------------------------------------- records
    def load(self, record: type[R], fold: int | None = None, optional: bool = False) -> R | None:
        """The record file ``record`` of this folder (of fold ``fold``); a missing one raises one line saying which
        command writes it, or gives None when ``optional``."""
        path = self.record_path(record, fold)
        if optional and not path.is_file():
            return None
        return read_record(record, path, self._missing(record, path))

    def record_path(self, record: type[Record], fold: int | None = None) -> Path:
        return (self.path if fold is None else self.fold_dir(fold)) / record.FILE

    def _missing(self, record: type[Record], path: Path) -> str:
        if record is PredictInfo:
            return f"{self.path} has no test predictions (no {path.name}): run `kit predict {self.path}` first"
        if record is FoldResult:
            return f"{path} is missing: the fold has not finished; continue it with `kit train --resume {self.path}`"
        return f"{path} is missing: {self.path} is not a complete kit {self.kind} folder"

    def save(self, record: Record, fold: int | None = None) -> Path:
        """Write a record file of this folder (of fold ``fold``), with its format version."""
        path = self.record_path(type(record), fold)
        self._check_writer(path)
        return write_text_atomic(path, json.dumps(record_text(record), indent=2, default=float))

    def cv(self) -> tuple[float | None, float | None]:
        """(CV without TTA, CV with TTA), None where the folder has not been scored or predicted yet."""
        scores, tta = self.load(Scores, optional=True), self.load(TtaScores, optional=True)
        return (scores.cv if scores else None), (tta.cv.get("tta") if tta else None)

    # ------------------------------------------------------------------------------------------- predictions
    def competition(self) -> Competition:
        raise NotImplementedError

    def predictions(self, path: Path) -> pd.DataFrame:
        """A prediction frame of this folder (kit.oof's schema: oof.csv, oof_tta.csv, test_fold{k}.csv), ids as
        strings: the one reader of those files."""
        return pd.read_csv(path, dtype={self.competition().id_col: str})

    def test_predictions(self, k: int) -> pd.DataFrame:
        path = self.test_path(k)
        if not path.is_file():
            raise KitError(f"{path} is missing: run `kit predict {self.path}` again")
        return self.predictions(path)

    def oof_tta(self) -> pd.DataFrame | None:
        return self.predictions(self.oof_tta_path) if self.oof_tta_path.is_file() else None

    # ----------------------------------------------------------------------------------------------- writers
    @contextmanager
    def writing(self, fold: int | None = None) -> Iterator[Folder]:
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
        try:  # a read-only place, or a file where the folder must be: one line naming it
            folder.mkdir(parents=True, exist_ok=True)
            fd, busy = take_lock(folder / LOCK_FILE)
        except OSError as e:
            raise (write_error(folder, e) or e) from None
        if busy:
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
            log.info(f"note: removed {removed} temporary file{'s' * (removed > 1)} left by an interrupted writer")
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

    def write_csv(self, path: Path, df: pd.DataFrame) -> Path:
        """Write one of this run's CSV files (``path`` from one of the path properties)."""
        self._check_writer(path)
        return write_csv_atomic(df, path)


class RunDir(Folder):
    """Every path and reader of a run folder (kit train's), and the lock its writers hold."""

    CONFIG, INFO, AUGMENTATION, LOG = "config.yaml", RunInfo.FILE, "augmentation.yaml", "train.log"
    kind = "run"

    # ------------------------------------------------------------------------------------------ what a run is
    def is_run(self) -> bool:
        return (self.path / self.CONFIG).is_file() and self.record_path(RunInfo).is_file()

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        """An existing run folder; anything else raises the one 'not a run folder' error."""
        run = cls(path)
        if not run.path.is_dir():
            raise KitError(f"run folder {run.path} not found")
        if StackDir(path).is_stack():
            raise KitError(f"{run.path} is a stack folder (kit stack), not a run: this command needs a folder that "
                           "kit train --out wrote")
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
    def augmentation_path(self) -> Path:
        return self.path / self.AUGMENTATION

    @property
    def log_path(self) -> Path:
        return self.path / self.LOG

    def best_path(self, k: int) -> Path:
        return self.fold_dir(k) / "best.pt"

    def last_path(self, k: int) -> Path:
        return self.fold_dir(k) / "last.pt"

    def history_path(self, k: int) -> Path:
        return self.fold_dir(k) / "history.csv"

    def fold_oof_path(self, k: int) -> Path:
        return self.fold_dir(k) / "oof.csv"

    def result_path(self, k: int) -> Path:
        return self.record_path(FoldResult, k)

    def fold_log_path(self, k: int) -> Path:
        """The output of a fold trained in a process of its own (kit train --devices)."""
        return self.fold_dir(k) / "train.log"

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
        return _run_paths(cfg, lambda p: str(resolve_stored_path(p, self.path)))

    def competition(self) -> Competition:
        if self._spec is None:
            self._spec = get_competition(self.config().competition)
        return self._spec

    def summary(self) -> dict[str, Any]:
        """The row ``kit runs`` shows for this run."""
        cfg = self.config()
        cv, cv_tta = self.cv()
        return {"run": self.name, "kind": self.kind, "competition": cfg.competition, "model": cfg.model.name,
                "size": cfg.model.img_size, "epochs": cfg.train.epochs, "folds": len(self.finished_folds()),
                "cv": cv, "cv_tta": cv_tta, "inputs": None, "path": str(self.path)}

    def data_dir(self) -> Path | None:
        """run.json's data folder (stored relative to the run folder), or None when it names none."""
        info = self.load(RunInfo)
        return resolve_stored_path(info.data, self.path) if info.data else None

    def data_folder(self, override: str | Path | None = None) -> Path:
        """The data folder to read: ``override`` (``--data``) or run.json's; one line when it is not a folder."""
        folder = Path(override) if override else self.data_dir()
        if folder is None or not folder.is_dir():
            raise KitError(f"data folder {folder} not found (from {self.record_path(RunInfo)}); pass --data DIR")
        return folder

    def finished_folds(self) -> list[int]:
        """Folds whose training ended (result.json is written last)."""
        return [k for k in self.fold_numbers() if self.result_path(k).is_file()]

    def history(self, k: int) -> pd.DataFrame:
        path = self.history_path(k)
        if not path.is_file():
            raise KitError(f"{path} is missing: fold {k} of {self.path} has not trained an epoch")
        return pd.read_csv(path)

    def fold_oof(self, k: int) -> pd.DataFrame:
        path = self.fold_oof_path(k)
        if not path.is_file():
            raise KitError(f"{path} is missing: fold {k} of {self.path} has not finished")
        return self.predictions(path)

    def collect_oof(self, folds: list[int]) -> pd.DataFrame:
        """The out-of-fold predictions of ``folds``, from each fold's own oof.csv."""
        return pd.concat([self.fold_oof(k) for k in folds], ignore_index=True)

    def oof(self) -> pd.DataFrame:
        """The run's pooled oof.csv, or the folds' own while the run has not finished."""
        if self.oof_path.is_file():
            return self.predictions(self.oof_path)
        folds = [k for k in self.fold_numbers() if self.fold_oof_path(k).is_file()]
        if not folds:
            raise KitError(f"{self.path} has no out-of-fold predictions (no oof.csv, no fold*/oof.csv)")
        return self.collect_oof(folds)

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
        cfg = _run_paths(cfg, lambda p: portable_path(p, self.path))
        return write_text_atomic(self.config_path, config_to_yaml(cfg, extra=extra))

    def save_info(self, data_dir: Path, folds: list[int]) -> Path:
        """run.json: the data folder (relative to this folder) and the folds of the last kit train call."""
        return self.save(RunInfo(portable_path(data_dir, self.path), [int(k) for k in folds]))

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


def _run_paths(cfg: Config, convert: Callable[[str], str]) -> Config:
    """``cfg`` with the other runs it names (``model.init_from``, ``data.pseudo``) passed through ``convert``."""
    if cfg.model.init_from:
        cfg = replace(cfg, model=replace(cfg.model, init_from=convert(cfg.model.init_from)))
    if cfg.data.pseudo:
        cfg = replace(cfg, data=replace(cfg.data, pseudo=convert(cfg.data.pseudo)))
    return cfg


class StackDir(Folder):
    """A stack folder (kit stack): stack.json, folds.csv, its OOF and test predictions, predict.json, the saved
    GBDTs; no config.yaml, no checkpoints. It is a prediction source like a run."""

    kind = "stack"

    def is_stack(self) -> bool:
        return self.record_path(StackInfo).is_file()

    def info(self) -> StackInfo:
        return self.load(StackInfo)

    def competition(self) -> Competition:
        if self._spec is None:
            self._spec = get_competition(self.info().competition)
        return self._spec

    def data_dir(self) -> Path | None:
        """The data folder the stack was built on (predict.json, relative to the stack folder)."""
        info = self.load(PredictInfo, optional=True)
        return resolve_stored_path(info.data, self.path) if info and info.data else None

    def summary(self) -> dict[str, Any]:
        """The row ``kit runs`` shows for this stack: its GBDTs, its folds, its CV, the runs it stacks."""
        info = self.info()
        cv, _ = self.cv()
        return {"run": self.name, "kind": self.kind, "competition": info.competition,
                "model": "+".join(info.models) or None, "size": None, "epochs": None,
                "folds": len(self.fold_numbers()), "cv": cv, "cv_tta": None,
                "inputs": ",".join(str(r.get("name", "?")).removeprefix("img_") for r in info.runs) or "metadata",
                "path": str(self.path)}


class PredictionSource(Protocol):
    """A folder of out-of-fold and test predictions on one folds.csv: a run (:class:`RunDir`) or a stack
    (:class:`StackDir`). What kit ensemble, submit, bundle, kernel and runs need of either."""

    path: Path
    kind: str

    @property
    def name(self) -> str: ...

    @property
    def folds_path(self) -> Path: ...

    def competition(self) -> Competition: ...

    def load(self, record: type[R], fold: int | None = None, optional: bool = False) -> R | None: ...

    def record_path(self, record: type[Record], fold: int | None = None) -> Path: ...

    def predictions(self, path: Path) -> pd.DataFrame: ...

    def test_predictions(self, k: int) -> pd.DataFrame: ...

    def data_dir(self) -> Path | None: ...

    def cv(self) -> tuple[float | None, float | None]: ...

    def summary(self) -> dict[str, Any]: ...


def open_source(path: str | os.PathLike) -> RunDir | StackDir:
    """The run or stack folder at ``path``: a stack where stack.json is, else a run (with RunDir.open's checks)."""
    stack = StackDir(path)
    return stack if stack.is_stack() else RunDir.open(path)


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
