"""Gradient-boosted tree models of the stack, by name: LightGBM (``lgbm``), XGBoost (``xgb``), CatBoost (``cat``).

Each entry of ``GBDTS`` is a factory ``(params, seed) -> model`` with ``fit(X, y, X_val=None, y_val=None)`` and
``predict(X) -> P(positive)`` (shape N). ``params`` override the entry's defaults; the libraries are imported only
when a model is built, and a missing one stops with one line telling how to install it. ``X_val`` is used only for
early stopping when the params ask for it (``early_stopping_rounds``); the stack never passes its held-out fold.

A fitted model is saved in its library's own format, never a pickle (``save(path)``): LightGBM's model text,
XGBoost's JSON, CatBoost's ``.cbm``; :func:`load_model` reads such bytes back into a predictor without executing any
code from them.
"""

from __future__ import annotations

import importlib
import io
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from kit.errors import ConfigError, DataError
from kit.registry import Registry

__all__ = ["DEFAULTS", "FORMATS", "GBDTS", "GBDT", "build_model", "importances", "load_model", "require"]


class GBDT(Protocol):
    def fit(self, X, y, X_val=None, y_val=None) -> GBDT: ...

    def predict(self, X) -> np.ndarray: ...

    def save(self, path: Path) -> None: ...

    @property
    def feature_importances_(self) -> np.ndarray: ...


Factory = Callable[[dict, int], GBDT]
GBDTS: Registry[Factory] = Registry("gbdt")

DEFAULTS: dict[str, dict[str, Any]] = {
    "lgbm": {"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 31, "max_depth": -1, "min_child_samples": 20,
             "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.6, "reg_lambda": 1.0, "reg_alpha": 0.0,
             "n_jobs": 2},
    "xgb": {"n_estimators": 200, "learning_rate": 0.05, "max_depth": 5, "min_child_weight": 1.0, "subsample": 0.8,
            "colsample_bytree": 0.6, "reg_lambda": 1.0, "reg_alpha": 0.0, "n_jobs": 2},
    "cat": {"iterations": 200, "learning_rate": 0.06, "depth": 6, "l2_leaf_reg": 3.0, "thread_count": 2},
}
FORMATS: dict[str, tuple[str, bytes, str]] = {
    "lgbm": (".txt", b"tree\n", "LightGBM model text"),
    "xgb": (".json", b"{", "XGBoost JSON model"),
    "cat": (".cbm", b"CBM1", "CatBoost .cbm model"),
}
"""Each model's saved file: (suffix, the bytes it starts with, what it is)."""
PACKAGES = {"lgbm": ("lightgbm", "lightgbm"), "xgb": ("xgboost", "xgboost"), "cat": ("catboost", "catboost")}


def require(name: str):
    """The library of model ``name``, imported now; missing: one line telling how to install it."""
    module, package = PACKAGES[GBDTS.canonical(name)]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"stack model '{name}' needs {package}: pip install {package} (or pip install "
                          "'kit[stack]' for lightgbm, xgboost and catboost)") from None


def _merged(name: str, params: dict) -> dict:
    return {**DEFAULTS[name], **params}


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


@GBDTS.register("lgbm", aliases=("lightgbm",))
def lgbm(params: dict, seed: int) -> GBDT:
    p = _merged("lgbm", params)
    stop = p.pop("early_stopping_rounds", None)
    model = require("lgbm").LGBMClassifier(objective="binary", random_state=seed, verbose=-1,
                                           importance_type="gain", **p)
    return _Sklearn(model, stop, "lgbm")


@GBDTS.register("xgb", aliases=("xgboost",))
def xgb(params: dict, seed: int) -> GBDT:
    p = _merged("xgb", params)
    stop = p.pop("early_stopping_rounds", None)
    model = require("xgb").XGBClassifier(objective="binary:logistic", tree_method="hist", random_state=seed,
                                         verbosity=0, eval_metric="logloss", early_stopping_rounds=stop, **p)
    return _Sklearn(model, stop, "xgb")


class _CatBoost:
    def __init__(self, params: dict, seed: int):
        p = _merged("cat", params)
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


@GBDTS.register("cat", aliases=("catboost",))
def cat(params: dict, seed: int) -> GBDT:
    return _CatBoost(params, seed)


def build_model(name: str, params: dict, seed: int, trees: int | None = None) -> GBDT:
    """Model ``name`` with ``params`` over its defaults (``trees`` sets the number of boosting rounds)."""
    name = GBDTS.canonical(name)
    if trees is not None:
        params = {**params, ("iterations" if name == "cat" else "n_estimators"): int(trees)}
    return GBDTS.get(name)(params, seed)


def importances(model: GBDT) -> np.ndarray:
    """The model's feature importances, normalised to sum to 1 (gain for LightGBM and XGBoost, CatBoost's own)."""
    values = np.nan_to_num(np.asarray(model.feature_importances_, dtype=float))
    total = values.sum()
    return values / total if total > 0 else values


Predictor = Callable[[np.ndarray], np.ndarray]


def load_model(name: str, data: bytes, source: str | Path) -> Predictor:
    """A predictor ``X -> P(positive)`` (in the dtype its library predicts, as the fitted model) from the bytes of a
    model ``name`` saved by ``save`` (read from ``source``); bytes the library cannot read raise DataError naming
    ``source``."""
    name = GBDTS.canonical(name)
    lib = require(name)
    errors = {"lgbm": lambda: lib.basic.LightGBMError, "xgb": lambda: lib.core.XGBoostError,
              "cat": lambda: lib.CatBoostError}[name]()
    try:
        if name == "lgbm":
            booster = lib.Booster(model_str=data.decode())
            return lambda X: np.asarray(booster.predict(X))
        if name == "xgb":
            xgb_booster = lib.Booster()
            xgb_booster.load_model(bytearray(data))
            return lambda X: np.asarray(xgb_booster.inplace_predict(X))
        model = lib.CatBoostClassifier()
        model.load_model(stream=io.BytesIO(data))
        return lambda X: np.asarray(model.predict_proba(X)[:, 1])
    except (errors, UnicodeDecodeError, ValueError) as e:
        said = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DataError(f"{source}: {FORMATS[name][2]} that {PACKAGES[name][1]} cannot read ({said})") from None
