"""The typed records of the JSON files between the stages: one frozen dataclass per file, with a format version.

Each record is parsed here and nowhere else (:func:`read_record`) and serialised here and nowhere else
(:meth:`Record.to_json`, written by :meth:`kit.rundir.RunDir.save`). A reader gets one clear line naming the file and
the key for a missing file, a malformed value or a file of a newer format than this kit reads; a file written before
records had a version (kit 0.2 and earlier) reads as version 1.

======================  ==================  =====================================
file                    record              written by
======================  ==================  =====================================
``run.json``            :class:`RunInfo`    kit train (kit stack: the stack's own)
``fold{k}/result.json`` :class:`FoldResult` kit train, last: the fold has finished
``scores.json``         :class:`Scores`     kit train, kit stack
``scores_tta.json``     :class:`TtaScores`  kit predict
``predict.json``        :class:`PredictInfo` kit predict, kit stack
``decision.json``       :class:`Decision`   kit predict (balanced accuracy)
``stack.json``          :class:`StackInfo`  kit stack (its ``saved`` models read by kit.stack.saved)
======================  ==================  =====================================

``folds.csv`` is owned by :mod:`kit.data.folds` (``load_folds`` / ``write_folds``); the prediction frames' schema by
:mod:`kit.oof`, their reading by :meth:`kit.rundir.Folder.predictions`.

>>> info = run.load(PredictInfo)          # a RunDir hands out records
>>> run.save(replace(info, folds=[0, 1]))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

from kit.errors import DataError
from kit.io import read_json_file

__all__ = ["RECORDS", "Decision", "FoldResult", "PredictInfo", "Record", "RunInfo", "Scores", "StackInfo", "TtaScores",
           "read_record", "record_text"]

VERSION_KEY = "version"
R = TypeVar("R", bound="Record")


class _Fields:
    """Typed access to a record file's keys: a missing or malformed one raises one line naming the file and key."""

    def __init__(self, data: dict, path: Path):
        self.data, self.path = data, path

    def get(self, key: str, kind: Callable[[Any], Any], default: Any = dataclasses.MISSING) -> Any:
        if key not in self.data or self.data[key] is None:
            if default is dataclasses.MISSING:
                raise DataError(f"{self.path}: key '{key}' is missing")
            return default
        try:
            return kind(self.data[key])
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise DataError(f"{self.path}: key '{key}' is malformed ({self.data[key]!r}: {e})") from None


def _ints(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise TypeError("expected a list of fold numbers")
    return [int(v) for v in value]


def _floats(value: Any) -> list[float]:
    if not isinstance(value, list):
        raise TypeError("expected a list of numbers")
    return [float(v) for v in value]


def _fold_scores(value: Any) -> dict[int, float]:
    if not isinstance(value, dict):
        raise TypeError("expected an object of fold -> score")
    return {int(k): float(v) for k, v in value.items()}


def _dict(value: Any) -> dict:
    if not isinstance(value, dict):
        raise TypeError("expected an object")
    return dict(value)


class Record:
    """A record file: ``FILE`` its name, ``VERSION`` the format this kit writes and reads up to."""

    FILE: ClassVar[str]
    VERSION: ClassVar[int] = 1

    @classmethod
    def from_json(cls: type[R], f: _Fields) -> R:
        raise NotImplementedError

    def to_json(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def read_record(cls: type[R], path: str | Path, missing: str | None = None) -> R:
    """The record ``cls`` in ``path``; ``missing`` is the line for an absent file (default: '<path> is missing')."""
    path = Path(path)
    data = read_json_file(path, missing or f"{path} is missing")
    version = data.get(VERSION_KEY, 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise DataError(f"{path}: key '{VERSION_KEY}' is malformed ({version!r}: expected a format number)")
    if version > cls.VERSION:
        raise DataError(f"{path} is of format {version}; this kit reads {cls.__name__} up to format {cls.VERSION}: "
                        "upgrade kit (pip install -U kit) or write the file again with this kit")
    return cls.from_json(_Fields(data, path))


def record_text(record: Record) -> dict:
    """What :meth:`kit.rundir.RunDir.save` writes: the record's keys and its format version."""
    return {VERSION_KEY: type(record).VERSION, **record.to_json()}


# ---------------------------------------------------------------------------------------------------- kit train
@dataclass(frozen=True)
class RunInfo(Record):
    """run.json: the data folder (as stored: relative to the run folder) and the folds of the last kit train call
    (or of kit stack)."""

    FILE: ClassVar[str] = "run.json"
    data: str | None
    folds: list[int]

    @classmethod
    def from_json(cls, f: _Fields) -> RunInfo:
        return cls(f.get("data", str, None) or None, f.get("folds", _ints, []))


@dataclass(frozen=True)
class FoldResult(Record):
    """fold{k}/result.json, written last: the fold has finished."""

    FILE: ClassVar[str] = "result.json"
    fold: int
    best_metric: float
    """The validation metric of what best.pt holds: the best epoch's, or the average's when ``weights`` names one."""
    best_epoch: int
    """The best single epoch (1-based)."""
    epochs_run: int
    weights: str = ""
    """What best.pt holds: "best epoch N", or an average ("SWA of epochs 4-6", "top-3 average of epochs 2,4,5");
    empty in the result of a kit that did not say."""

    @classmethod
    def from_json(cls, f: _Fields) -> FoldResult:
        return cls(f.get("fold", int), f.get("best_metric", float), f.get("best_epoch", int),
                   f.get("epochs_run", int), f.get("weights", str, ""))


@dataclass(frozen=True)
class Scores(Record):
    """scores.json: the CV of the pooled OOF (a stack adds each model's CV and each input run's)."""

    FILE: ClassVar[str] = "scores.json"
    metric: str
    cv: float
    mean_of_folds: float
    folds: dict[int, float]
    models: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, f: _Fields) -> Scores:
        return cls(f.get("metric", str), f.get("cv", float), f.get("mean_of_folds", float),
                   f.get("folds", _fold_scores), f.get("models", _dict, {}), f.get("inputs", _dict, {}))

    def to_json(self) -> dict:
        out = {"metric": self.metric, "cv": self.cv, "mean_of_folds": self.mean_of_folds,
               "folds": {str(k): v for k, v in self.folds.items()}}
        return {**out, **({"models": self.models, "inputs": self.inputs} if self.models or self.inputs else {})}


# ---------------------------------------------------------------------------------------------------- kit predict
@dataclass(frozen=True)
class TtaScores(Record):
    """scores_tta.json: per fold and pooled, the CV without and with TTA (keys no_tta, tta, gain)."""

    FILE: ClassVar[str] = "scores_tta.json"
    metric: str
    tta: dict
    folds: dict[str, dict]
    cv: dict[str, float]
    mean_of_folds: dict[str, float]

    @classmethod
    def from_json(cls, f: _Fields) -> TtaScores:
        return cls(f.get("metric", str), f.get("tta", _dict), f.get("folds", _dict), f.get("cv", _dict),
                   f.get("mean_of_folds", _dict, {}))

    @property
    def views(self) -> list[str]:
        return list(self.tta.get("views", []))


@dataclass(frozen=True)
class PredictInfo(Record):
    """predict.json: which folds have test predictions (test_fold{k}.csv), from which data folder (as stored), with
    which TTA, and the OOF file whose predictions match them (oof_tta.csv; a stack's oof.csv; None: test only). ``kind`` says who
    wrote it: ``run`` (kit predict) or ``stack`` (kit stack)."""

    FILE: ClassVar[str] = "predict.json"
    folds: list[int]
    data: str | None
    oof: str | None
    tta: dict | None = None
    kind: str = "run"

    @classmethod
    def from_json(cls, f: _Fields) -> PredictInfo:
        kind = "stack" if f.data.get("stack") is True else f.get("kind", str, "run")  # kit 0.2's stacks said stack
        return cls(f.get("folds", _ints), f.get("data", str, None) or None, f.get("oof", str, None),
                   f.get("tta", _dict, None), kind)


@dataclass(frozen=True)
class Decision(Record):
    """decision.json: per-class decision weights fitted on the OOF, the nested CV without and with them, and whether
    kit predict applied them (a kernel applies them where it did)."""

    FILE: ClassVar[str] = "decision.json"
    weights: list[float]
    classes: list[str]
    applied: bool
    mode: str
    oof: str
    cv_before: float
    cv_after: float
    mean_before: float
    mean_after: float
    folds_before: dict[int, float] = field(default_factory=dict)
    folds_after: dict[int, float] = field(default_factory=dict)
    in_sample: float = 0.0
    helps: bool = False

    @classmethod
    def from_json(cls, f: _Fields) -> Decision:
        return cls(f.get("weights", _floats), f.get("classes", list), f.get("applied", bool), f.get("mode", str, "auto"),
                   f.get("oof", str, "oof_tta.csv"), f.get("cv_before", float), f.get("cv_after", float),
                   f.get("mean_before", float), f.get("mean_after", float), f.get("folds_before", _fold_scores, {}),
                   f.get("folds_after", _fold_scores, {}), f.get("in_sample", float, 0.0), f.get("helps", bool, False))


# ---------------------------------------------------------------------------------------------------- kit stack
@dataclass(frozen=True)
class StackInfo(Record):
    """stack.json: what makes a folder a stack: its competition, the image runs it stacks (``runs``: name, path
    relative to the stack, OOF file, CV), its features, the saved models (``saved``, read by kit.stack.saved) and
    its settings (models, seeds, parameters per fold, ...)."""

    FILE: ClassVar[str] = "stack.json"
    competition: str
    metric: str
    features: list[str]
    runs: list[dict]
    saved: dict | None = None
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, f: _Fields) -> StackInfo:
        known = {"competition", "metric", "features", "runs", "saved", VERSION_KEY}
        return cls(f.get("competition", str), f.get("metric", str), f.get("features", list), f.get("runs", list, []),
                   f.get("saved", _dict, None), {k: v for k, v in f.data.items() if k not in known})

    def to_json(self) -> dict:
        return {"competition": self.competition, "metric": self.metric, **self.settings, "features": self.features,
                "runs": self.runs, "saved": self.saved}

    @property
    def models(self) -> list[str]:
        return list(self.settings.get("models", []))


RECORDS: tuple[type[Record], ...] = (RunInfo, FoldResult, Scores, TtaScores, PredictInfo, Decision, StackInfo)
"""Every record file of a run folder (the test of one reader and one writer per file goes over them)."""
