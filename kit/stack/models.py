"""Gradient-boosted tree models of the stack, by name: LightGBM (``lgbm``), XGBoost (``xgb``), CatBoost (``cat``).

Everything kit knows about one GBDT library is one :class:`GBDTSpec` in the registry ``GBDTS``: its factory, default
parameters, Optuna search space (:mod:`kit.stack.tune`), saved-file format (:mod:`kit.stack.saved`), the module and
pip package it needs (the offline kernel checks that module) and the reader of its saved bytes. A new GBDT is one
``GBDTS.add(GBDTSpec(...))``; ``tests/test_registries.py`` runs every entry through one contract.

A built model has ``fit(X, y, X_val=None, y_val=None)`` and ``predict(X) -> P(positive)`` (shape N). ``params``
override the spec's defaults; the libraries are imported only when a model is built, and a missing one stops with one
line telling how to install it. ``X_val`` is used only for early stopping when the params ask for it
(``early_stopping_rounds``); the stack never passes its held-out fold.

A fitted model is saved in its library's own format, never a pickle (``save(path)``): LightGBM's model text,
XGBoost's JSON, CatBoost's ``.cbm``; :func:`load_model` reads such bytes back into a predictor without executing any
code from them.
"""

from __future__ import annotations

import importlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from kit.errors import ConfigError, DataError
from kit.registry import Registry

__all__ = ["GBDT", "GBDTS", "GBDTSpec", "build_model", "importances", "load_model", "require"]


class GBDT(Protocol):
    def fit(self, X, y, X_val=None, y_val=None) -> GBDT: ...

    def predict(self, X) -> np.ndarray: ...

    def save(self, path: Path) -> None: ...

    @property
    def feature_importances_(self) -> np.ndarray: ...


Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class GBDTSpec:
    """One GBDT library, all in one place.

    Attributes:
        name: the registered name (``--models``, stack.json, the saved files' names).
        factory: ``(params, seed) -> GBDT`` with ``params`` already merged over ``defaults``.
        defaults: the parameters a model gets unless told otherwise (recorded in stack.json).
        space: an Optuna trial -> the parameters ``kit stack --tune`` searches.
        trees: the parameter that counts boosting rounds (``--trees``).
        suffix, magic, format: the saved file's suffix, the bytes it starts with, and what it is (for messages).
        module, package: what Python imports, and what pip installs.
        reader: ``(library module, saved bytes) -> predictor``, executing nothing from the bytes.
        errors: the library module -> the exception types it raises for bytes it cannot read.
    """

    name: str
    factory: Callable[[dict, int], GBDT]
    defaults: dict[str, Any]
    space: Callable[[Any], dict[str, Any]]
    trees: str
    suffix: str
    magic: bytes
    format: str
    module: str
    package: str
    reader: Callable[[Any, bytes], Predictor]
    errors: Callable[[Any], tuple[type[BaseException], ...]]
    aliases: tuple[str, ...] = field(default=())

    def library(self):
        """The library, imported now; missing: one line telling how to install it."""
        try:
            return importlib.import_module(self.module)
        except ImportError:
            raise ConfigError(f"stack model '{self.name}' needs {self.package}: pip install {self.package} (or pip "
                              "install 'kit[stack]' for lightgbm, xgboost and catboost)") from None


GBDTS: Registry[GBDTSpec] = Registry("gbdt")


def register(spec: GBDTSpec) -> GBDTSpec:
    return GBDTS.add(spec.name, spec, spec.aliases)


def require(name: str):
    """The library of model ``name``, imported now; missing: one line telling how to install it."""
    return GBDTS.get(name).library()


class _Sklearn:
    """A LightGBM or XGBoost classifier behind the stack's fit / predict contract."""

    def __init__(self, estimator, early_stopping: int | None, kind: str):
        self.estimator, self.early_stopping, self.kind = estimator, early_stopping, kind

    def fit(self, X, y, X_val=None, y_val=None):
        kw: dict[str, Any] = {}
        if X_val is not None and self.early_stopping:
            kw["eval_set"] = [(X_val, y_val)]
            if self.kind == "lgbm":
                lgb = require("lgbm")
                kw["callbacks"] = [lgb.early_stopping(self.early_stopping, verbose=False)]
        elif self.kind == "xgb":
            self.estimator.set_params(early_stopping_rounds=None)
        self.estimator.fit(X, y, **kw)
        return self

    def predict(self, X) -> np.ndarray:
        return self.estimator.predict_proba(X)[:, 1]

    def save(self, path: Path) -> None:
        if self.kind == "lgbm":
            self.estimator.booster_.save_model(str(path))
        else:  # the JSON of XGBoost's save_model, whatever the file's suffix (save_model picks the format by it)
            Path(path).write_bytes(bytes(self.estimator.get_booster().save_raw("json")))

    @property
    def feature_importances_(self) -> np.ndarray:
        return np.asarray(self.estimator.feature_importances_, dtype=float)


class _CatBoost:
    def __init__(self, params: dict, seed: int):
        p = dict(params)
        self.early_stopping = p.pop("early_stopping_rounds", None)
        if "n_estimators" in p:
            p["iterations"] = p.pop("n_estimators")
        self.model = require("cat").CatBoostClassifier(random_seed=seed, verbose=0, allow_writing_files=False,
                                                       **p)

    def fit(self, X, y, X_val=None, y_val=None):
        kw = {"eval_set": (X_val, y_val), "early_stopping_rounds": self.early_stopping} \
            if X_val is not None and self.early_stopping else {}
        self.model.fit(X, y, **kw)
        return self

    def predict(self, X) -> np.ndarray:
        return self.model.predict_proba(X)[:, 1]

    def save(self, path: Path) -> None:
        self.model.save_model(str(path), format="cbm")

    @property
    def feature_importances_(self) -> np.ndarray:
        return np.asarray(self.model.get_feature_importance(), dtype=float)


def _sampling_space(trial) -> dict[str, Any]:
    """The row and column sampling and the L1 / L2 penalties, searched alike for LightGBM and XGBoost."""
    return {"subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.3, 1.0),
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
            "reg_alpha": trial.suggest_float("reg_alpha", 1e-3, 10.0, log=True)}


# ------------------------------------------------------------------------------------------------------ LightGBM
def _lgbm(params: dict, seed: int) -> GBDT:
    p = dict(params)
    stop = p.pop("early_stopping_rounds", None)
    model = require("lgbm").LGBMClassifier(objective="binary", random_state=seed, verbose=-1,
                                           importance_type="gain", **p)
    return _Sklearn(model, stop, "lgbm")


def _lgbm_space(trial) -> dict[str, Any]:
    return {"learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 8, 128, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 5, 100, log=True),
            **_sampling_space(trial)}


def _lgbm_reader(lib, data: bytes) -> Predictor:
    booster = lib.Booster(model_str=data.decode())
    return lambda X: np.asarray(booster.predict(X))


register(GBDTSpec(
    "lgbm", _lgbm, aliases=("lightgbm",), trees="n_estimators", space=_lgbm_space,
    defaults={"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 31, "max_depth": -1, "min_child_samples": 20,
              "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.6, "reg_lambda": 1.0, "reg_alpha": 0.0,
              "n_jobs": 2},
    suffix=".txt", magic=b"tree\n", format="LightGBM model text", module="lightgbm", package="lightgbm",
    reader=_lgbm_reader, errors=lambda lib: (lib.basic.LightGBMError,)))


# ------------------------------------------------------------------------------------------------------- XGBoost
def _xgb(params: dict, seed: int) -> GBDT:
    p = dict(params)
    stop = p.pop("early_stopping_rounds", None)
    model = require("xgb").XGBClassifier(objective="binary:logistic", tree_method="hist", random_state=seed,
                                         verbosity=0, eval_metric="logloss", early_stopping_rounds=stop, **p)
    return _Sklearn(model, stop, "xgb")


def _xgb_space(trial) -> dict[str, Any]:
    return {"learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            "max_depth": trial.suggest_int("max_depth", 2, 8),
            "min_child_weight": trial.suggest_float("min_child_weight", 0.1, 20.0, log=True),
            **_sampling_space(trial)}


def _xgb_reader(lib, data: bytes) -> Predictor:
    booster = lib.Booster()
    booster.load_model(bytearray(data))
    return lambda X: np.asarray(booster.inplace_predict(X))


register(GBDTSpec(
    "xgb", _xgb, aliases=("xgboost",), trees="n_estimators", space=_xgb_space,
    defaults={"n_estimators": 200, "learning_rate": 0.05, "max_depth": 5, "min_child_weight": 1.0, "subsample": 0.8,
              "colsample_bytree": 0.6, "reg_lambda": 1.0, "reg_alpha": 0.0, "n_jobs": 2},
    suffix=".json", magic=b"{", format="XGBoost JSON model", module="xgboost", package="xgboost",
    reader=_xgb_reader, errors=lambda lib: (lib.core.XGBoostError,)))


# ------------------------------------------------------------------------------------------------------ CatBoost
def _cat_space(trial) -> dict[str, Any]:
    return {"learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            "depth": trial.suggest_int("depth", 3, 8),
            "l2_leaf_reg": trial.suggest_float("l2_leaf_reg", 0.5, 20.0, log=True)}


def _cat_reader(lib, data: bytes) -> Predictor:
    model = lib.CatBoostClassifier()
    model.load_model(stream=io.BytesIO(data))
    return lambda X: np.asarray(model.predict_proba(X)[:, 1])


register(GBDTSpec(
    "cat", _CatBoost, aliases=("catboost",), trees="iterations", space=_cat_space,
    defaults={"iterations": 200, "learning_rate": 0.06, "depth": 6, "l2_leaf_reg": 3.0, "thread_count": 2},
    suffix=".cbm", magic=b"CBM1", format="CatBoost .cbm model", module="catboost", package="catboost",
    reader=_cat_reader, errors=lambda lib: (lib.CatBoostError,)))


# ------------------------------------------------------------------------------------------------------- use
def build_model(name: str, params: dict, seed: int, trees: int | None = None) -> GBDT:
    """Model ``name`` with ``params`` over its defaults (``trees`` sets the number of boosting rounds)."""
    spec = GBDTS.get(name)
    if trees is not None:
        params = {**params, spec.trees: int(trees)}
    return spec.factory({**spec.defaults, **params}, seed)


def importances(model: GBDT) -> np.ndarray:
    """The model's feature importances, normalised to sum to 1 (gain for LightGBM and XGBoost, CatBoost's own)."""
    values = np.nan_to_num(np.asarray(model.feature_importances_, dtype=float))
    total = values.sum()
    return values / total if total > 0 else values


def load_model(name: str, data: bytes, source: str | Path) -> Predictor:
    """A predictor ``X -> P(positive)`` (in the dtype its library predicts, as the fitted model) from the bytes of a
    model ``name`` saved by ``save`` (read from ``source``); bytes the library cannot read raise DataError naming
    ``source``."""
    spec = GBDTS.get(name)
    lib = spec.library()
    try:
        return spec.reader(lib, data)
    except (*spec.errors(lib), UnicodeDecodeError, ValueError) as e:
        said = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DataError(f"{source}: {spec.format} that {spec.package} cannot read ({said})") from None
