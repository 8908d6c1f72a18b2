"""What a model trains on: the competition's own target or a finer one, and how rows of any ISIC competition map into it.

The SIIM-ISIC 2020 winners trained on the diagnosis (the 2020 and 2019 diagnoses mapped to one list of nine classes)
and read the melanoma probability off the softmax: the other classes give the network far more to learn from than
584 positives do, while the competition still scores the melanoma column alone. A :class:`TargetSpace` names the
model's outputs and the class the competition scores; :func:`row_diagnoses` maps a competition's rows into
:data:`~kit.competitions.DIAGNOSES`, :func:`encode` maps diagnoses into a target space.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kit.competitions import DIAGNOSES, Competition, list_competitions
from kit.errors import ConfigError, DataError

__all__ = ["DIAGNOSIS_NAMES", "TARGETS", "TargetSpace", "check_extra", "encode", "row_diagnoses", "run_targets",
           "target_space"]

TARGETS = ("competition", "diagnosis")
"""The values of ``train.target``."""

DIAGNOSIS_NAMES: dict[str, str] = {
    "melanoma": "MEL",
    "nevus": "NV",
    "basal cell carcinoma": "BCC",
    "actinic keratosis": "AK",
    "seborrheic keratosis": "BKL",  # the benign keratosis-like lesions of ISIC 2019
    "lentigo nos": "BKL",
    "lichenoid keratosis": "BKL",
    "solar lentigo": "BKL",
    "pigmented benign keratosis": "BKL",
    "dermatofibroma": "DF",
    "vascular lesion": "VASC",
    "squamous cell carcinoma": "SCC",
    "unknown": "UNK",
    "cafe-au-lait macule": "UNK",  # none of the eight lesion classes (as the 2020 winners mapped them)
    "atypical melanocytic proliferation": "UNK",
}
"""ISIC free-text diagnoses (2020's ``diagnosis`` column, lower-cased) -> their class in DIAGNOSES."""


@dataclass(frozen=True)
class TargetSpace:
    """The model's outputs: ``classes`` (binary: the one target column), each class's diagnosis (binary: the
    positive one's; empty when the target has none), and ``scored``: the class whose probability is the prediction
    of a binary competition trained on a finer target (None: the outputs are the competition's own)."""

    task: str
    classes: tuple[str, ...]
    diagnoses: tuple[str, ...]
    scored: str | None = None

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "binary" else len(self.classes)

    @property
    def n_classes(self) -> int:
        """Classes the loss sees: 2 for one sigmoid output."""
        return 2 if self.task == "binary" else len(self.classes)

    @property
    def scored_index(self) -> int | None:
        return None if self.scored is None else self.classes.index(self.scored)


def target_space(spec: Competition, target: str) -> TargetSpace:
    """The outputs of a ``spec`` run whose ``train.target`` is ``target``."""
    if target == "competition":
        return TargetSpace(spec.task, spec.classes, spec.diagnoses)
    if target != "diagnosis":
        raise ConfigError(f"config key train.target={target} is not valid; expected one of {', '.join(TARGETS)}")
    if not (spec.is_binary and spec.diagnosis_col and spec.diagnoses):
        fit = [c.name for c in list_competitions() if c.is_binary and c.diagnosis_col]
        raise ConfigError(f"config key train.target=diagnosis is not valid for {spec.name}: it needs a binary "
                          f"competition with a diagnosis column ({', '.join(fit)})")
    return TargetSpace("multiclass", DIAGNOSES, DIAGNOSES, scored=spec.diagnoses[0])


def check_extra(space: TargetSpace, run: Competition, extra: Competition) -> None:
    """Raise unless rows of ``extra`` can be expressed in the target of a ``run`` run."""
    if not space.diagnoses:
        raise ConfigError(f"config key data.extra: {run.name}'s target has no diagnosis, so no other competition's "
                          "rows can train it")
    if not (extra.diagnoses or extra.diagnosis_col):
        fit = [c.name for c in list_competitions() if c.diagnoses or c.diagnosis_col]
        raise ConfigError(f"config key data.extra: {extra.name} images cannot be mapped into {run.name}'s target "
                          f"({', '.join(space.classes)}): its labels are no skin-lesion diagnosis; competitions that "
                          f"can: {', '.join(fit)}")


def row_diagnoses(spec: Competition, table: pd.DataFrame, source: Path) -> np.ndarray:
    """Each row's class in DIAGNOSES: from the free-text diagnosis column, else from a multiclass competition's class."""
    if spec.diagnosis_col:
        if "diagnosis" not in table:
            raise DataError(f"{source}: column '{spec.diagnosis_col}' missing; a diagnosis target (train.target or "
                            "data.extra) needs it")
        return _map_names(table, spec.diagnosis_col, source)
    if not spec.is_binary and spec.diagnoses:
        return np.asarray(spec.diagnoses)[table["target"].to_numpy()]
    raise ConfigError(f"{spec.name}: its labels are no skin-lesion diagnosis")


def _map_names(table: pd.DataFrame, col: str, source: Path) -> np.ndarray:
    names = table["diagnosis"].astype("string").str.strip().str.lower()
    mapped = names.map(DIAGNOSIS_NAMES)
    bad = mapped.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = table["diagnosis"].iloc[i]
        what = "is empty" if pd.isna(value) else f"'{value}' maps to none of {', '.join(DIAGNOSES)}"
        raise DataError(f"{source} (id {table['id'].iloc[i]}): column '{col}' {what} [{int(bad.sum())} such rows]; "
                        f"known diagnoses: {', '.join(DIAGNOSIS_NAMES)}")
    return mapped.to_numpy(dtype=str)


def encode(space: TargetSpace, diagnoses: np.ndarray, what: str) -> np.ndarray:
    """Class indices of ``diagnoses`` in ``space`` (binary: 1 for the positive diagnosis); ``what`` names the rows."""
    if space.task == "binary":
        return (diagnoses == space.diagnoses[0]).astype(np.int64)
    index = {d: i for i, d in enumerate(space.diagnoses)}
    missing = sorted(set(np.unique(diagnoses)) - set(index))
    if missing:
        n = int(np.isin(diagnoses, missing).sum())
        raise DataError(f"{what}: {n} rows of diagnosis {', '.join(missing)} have no class in the run's target "
                        f"({', '.join(space.classes)})")
    return np.array([index[d] for d in diagnoses], dtype=np.int64)


def run_targets(space: TargetSpace, spec: Competition, table: pd.DataFrame, source: Path) -> np.ndarray:
    """The training targets of the competition's own rows: its target, or the finer one, which must agree with it
    (a scored-class row is exactly a positive one)."""
    if space.scored is None:
        return table["target"].to_numpy()
    targets = encode(space, row_diagnoses(spec, table, source), str(source))
    disagree = (targets == space.scored_index) != (table["target"].to_numpy() == 1)
    if disagree.any():
        i = int(np.flatnonzero(disagree)[0])
        raise DataError(f"{source} (id {table['id'].iloc[i]}): diagnosis '{table['diagnosis'].iloc[i]}' disagrees "
                        f"with {spec.target_col}={table['target'].iloc[i]} ({space.scored} is the positive class) "
                        f"[{int(disagree.sum())} such rows]")
    return targets
