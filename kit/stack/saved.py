"""The stack's fitted models on disk, and the prediction of new test rows with them: what the offline ISIC 2024
kernel runs after the image models, on a hidden test set.

``kit stack`` saves every fitted GBDT (per outer fold, model and seed) in its library's own format
(:class:`kit.stack.models.GBDTSpec`, never a pickle) as ``fold{k}/{model}_seed{s}{suffix}``, and records under
``"saved"`` in stack.json what rebuilds the test features identically without the training data: the feature recipe
fitted on the training rows (:class:`kit.stack.features.FeatureRecipe`), the image runs that feed the score features
(their feature names, ``runs`` in stack.json), the feature order, and each model file with its SHA-256. Loading
checks each file's first bytes (a pickle is refused, never unpickled) and its checksum before its library reads it.

The blend: the mean over seeds, then over models (one fold's ``test_fold{k}.csv``), then over folds (as kit submit).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kit.competitions import get_competition
from kit.errors import DataError, KitError
from kit.io import atomic_path, resolve_stored_path, sha256_file
from kit.records import StackInfo, read_record
from kit.rundir import StackDir
from kit.stack.features import FeatureRecipe, image_feature_names, image_score_features, rebuild_test_features
from kit.stack.models import GBDTS, Predictor, load_model

__all__ = ["RUNS", "SAVED_FORMAT", "STACK_INFO", "SavedStack", "image_test_scores", "is_stack", "load_models",
           "open_stack", "predict_folds", "predict_test", "save_models"]

STACK_INFO = StackInfo.FILE
SAVED_FORMAT = 1
BLEND = "mean over seeds, then over models (test_fold{k}.csv), then over folds"
RUNS = "runs"  # a bundled stack's copies of its image runs: runs/<feature name>/


@dataclass(frozen=True)
class SavedModel:
    fold: int
    model: str
    seed: int
    file: str
    sha256: str


@dataclass
class SavedStack:
    """A stack folder's saved models and what rebuilds their features (from stack.json)."""

    path: Path
    competition: str
    recipe: FeatureRecipe
    images: list[str]
    features: list[str]
    models: list[SavedModel]
    runs: dict[str, dict]

    def folds(self) -> list[int]:
        return sorted({m.fold for m in self.models})

    def predicted_tta(self, name: str) -> dict | None:
        """The TTA (``{"views": [...], "merge": ...}``) kit predict gave the image run ``name`` whose scores the
        GBDTs were fitted on; None for a stack of an older kit, which did not record it."""
        tta = self.runs.get(name, {}).get("tta")
        return tta if isinstance(tta, dict) and isinstance(tta.get("views"), list) else None

    def run_dir(self, name: str) -> Path:
        """The image run feeding the features ``name``: its copy in a bundled stack, else where kit stack found it."""
        bundled = self.path / RUNS / name
        return bundled if bundled.is_dir() else resolve_stored_path(self.runs[name]["path"], self.path)


def is_stack(folder: str | Path) -> bool:
    return (Path(folder) / STACK_INFO).is_file()


def model_file(fold: int, model: str, seed: int) -> str:
    return f"fold{fold}/{model}_seed{seed}{GBDTS.get(model).suffix}"


def save_models(stack: StackDir, fits: list[dict]) -> list[dict]:
    """Write each fold's fitted models (``fit["models"]``: (model, seed) -> GBDT); their entries for stack.json."""
    entries = []
    for fit in fits:
        for (model, seed), fitted in fit["models"].items():
            path = stack.path / model_file(fit["k"], model, seed)
            with atomic_path(path) as tmp:
                fitted.save(tmp)
            entries.append({"fold": fit["k"], "model": model, "seed": seed, "file": model_file(fit["k"], model, seed),
                            "sha256": sha256_file(path)})
    return entries


def saved_info(recipe: FeatureRecipe, runs: list[dict], entries: list[dict]) -> dict:
    """stack.json's ``"saved"``: what :func:`open_stack` reads back."""
    return {"format": SAVED_FORMAT, "recipe": recipe.to_json(), "images": [r["name"] for r in runs], "blend": BLEND,
            "models": entries}


# ---------------------------------------------------------------------------------------------------- reading
def _read_info(path: Path) -> StackInfo:
    info = read_record(StackInfo, path, f"{path.parent} is not a stack folder (no {STACK_INFO}): make one with "
                       "kit stack")
    if not isinstance(info.saved, dict):
        raise KitError(f"{path} records no saved models (a stack made by an older kit): run kit stack again")
    return info


def open_stack(stack_dir: str | Path) -> SavedStack:
    """The saved stack in ``stack_dir``; its model files are checked when they are loaded."""
    path = Path(stack_dir) / STACK_INFO
    info = _read_info(path)
    saved = info.saved
    if saved.get("format") != SAVED_FORMAT:
        raise DataError(f"{path}: saved models of format {saved.get('format')!r}; this kit reads format "
                        f"{SAVED_FORMAT}: run kit stack again")
    try:
        models = [SavedModel(int(m["fold"]), str(m["model"]), int(m["seed"]), str(m["file"]), str(m["sha256"]))
                  for m in saved["models"]]
        runs = {str(r["name"]): r for r in info.runs}
        stack = SavedStack(Path(stack_dir), info.competition, FeatureRecipe.from_json(saved["recipe"], path),
                           [str(n) for n in saved["images"]], [str(f) for f in info.features], models, runs)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: the saved models' record is incomplete or malformed ({e!r})") from None
    unknown = sorted({m.model for m in models} - set(GBDTS)) + sorted(set(stack.images) - set(runs))
    if unknown or not models:
        raise DataError(f"{path}: {'unknown models or runs ' + ', '.join(unknown) if unknown else 'no model'} in "
                        "its saved models' record")
    return stack


def _model_bytes(stack: SavedStack, entry: SavedModel) -> bytes:
    """The file's bytes, once its first bytes say it is the library's format and its checksum is stack.json's."""
    path = stack.path / entry.file
    if not path.is_file():
        raise KitError(f"model file {path} is missing: the stack folder (or its bundle) is incomplete")
    data = path.read_bytes()
    spec = GBDTS.get(entry.model)
    magic, what = spec.magic, spec.format
    if not data.startswith(magic):
        kind = "a pickle, which kit never loads" if data[:1] == b"\x80" else f"not a {what}"
        raise DataError(f"model file {path} is {kind}: refused (kit stack writes {what}s only)")
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise DataError(f"model file {path} differs from the one kit stack saved (SHA-256 mismatch with "
                        f"{stack.path / STACK_INFO}): refused")
    return data


def load_models(stack: SavedStack) -> dict[SavedModel, Predictor]:
    return {m: load_model(m.model, _model_bytes(stack, m), stack.path / m.file) for m in stack.models}


# ---------------------------------------------------------------------------------------------------- predicting
def image_test_scores(run_dir: str | Path) -> pd.Series:
    """A predicted image run's test scores, its folds averaged, indexed by id: the stack's image score input."""
    from kit.blend import blend_folds

    test_ids, test = blend_folds(run_dir, "mean")
    return pd.Series(test, index=[str(i) for i in test_ids])


def _test_matrix(stack: SavedStack, data_dir: Path, image_scores: dict[str, pd.Series]) -> tuple[np.ndarray, np.ndarray]:
    """(test ids, the feature matrix of the test rows under ``data_dir``), in the stack's feature order."""
    spec = get_competition(stack.competition)
    table = rebuild_test_features(spec, data_dir, stack.recipe)
    missing = [name for name in stack.images if name not in image_scores]
    if missing:
        raise KitError(f"no test scores of the image run {', '.join(missing)} that the stack in {stack.path} needs")
    for name in stack.images:
        table = image_score_features(table, name, image_scores[name], "test", np.zeros(len(table)))
    features = stack.recipe.features + [c for name in stack.images for c in image_feature_names(name)]
    if features != stack.features:
        raise DataError(f"{stack.path / STACK_INFO}: its features {stack.features} differ from those its recipe "
                        f"makes, {features}")
    return table["id"].to_numpy(), table[features].to_numpy(dtype=np.float64)


def predict_folds(stack_dir: str | Path, data_dir: str | Path,
                  image_scores: dict[str, pd.Series]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(test ids, each fold's prediction of the test rows under ``data_dir``) with the saved models of the stack in
    ``stack_dir``, given each image run's test scores (by feature name, indexed by id)."""
    stack = open_stack(stack_dir)
    models = load_models(stack)  # every file checked before any prediction
    ids, X = _test_matrix(stack, Path(data_dir), image_scores)
    per_fold = {}
    for k in stack.folds():
        names = dict.fromkeys(m.model for m in stack.models if m.fold == k)  # kit stack's order: the same sums
        per_fold[k] = np.mean([np.mean([predict(X) for m, predict in models.items() if m.fold == k and m.model == n],
                                       axis=0) for n in names], axis=0)
    return ids, per_fold


def predict_test(stack_dir: str | Path, data_dir: str | Path,
                 image_scores: dict[str, pd.Series]) -> tuple[np.ndarray, np.ndarray]:
    """(test ids, the stack's prediction of them): :func:`predict_folds`, the folds averaged."""
    ids, per_fold = predict_folds(stack_dir, data_dir, image_scores)
    return ids, np.mean(list(per_fold.values()), axis=0)
