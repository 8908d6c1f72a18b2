"""The search space: a YAML mapping of config keys to optuna distributions, and the configs a trial draws from it.

::

    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    train.batch_size: {type: int, low: 16, high: 64, step: 16}
    model.name: {type: categorical, choices: [resnet10t, resnet18]}

Keys are checked against the config (a typo names its closest keys) and every bound or choice is checked against
its key's type before any training, so a bad space fails in a second, not after the first trial.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from kit.config import PRESET_DIR, SECTIONS, Config, from_dict, valid_keys
from kit.errors import ConfigError

__all__ = ["NOT_SEARCHABLE", "SPACE_DIR", "check_space", "epoch_stride", "list_spaces", "load_space", "parse_space",
           "resolve_space", "suggest", "trial_config"]

SPACE_DIR = PRESET_DIR / "spaces"
"""Shipped search spaces, one per competition (``spaces/<competition>.yaml``): a folder of their own, so that a
space is never offered where a preset is expected (``kit train --config``) nor a preset as a space."""

NOT_SEARCHABLE = ("competition", "n_folds", "fold_seed")
"""CV scores are comparable between trials only on the same folds of the same data."""


def _number(key: str, name: str, value: Any, source: str, integer: bool) -> float | int:
    # YAML 1.1 reads 1e-4 (no dot) as a string: accept it, since that is how people write learning rates
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{source}: '{key}': {name} must be a number, got '{value}'") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{source}: '{key}': {name} must be a number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ConfigError(f"{source}: '{key}': {name} must be an integer for type int, got {value!r}")
        return int(value)
    return float(value)


_FIELDS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
           "categorical": {"type", "choices"}}


def _categorical(key: str, spec: dict[str, Any], source: str) -> CategoricalDistribution:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{source}: '{key}': choices must be a non-empty list, got {choices!r}")
    return CategoricalDistribution(choices)


def _numeric(key: str, kind: str, spec: dict[str, Any], source: str) -> BaseDistribution:
    for needed in ("low", "high"):
        if needed not in spec:
            raise ConfigError(f"{source}: '{key}': type {kind} needs '{needed}'")
    integer = kind == "int"
    low, high = (_number(key, n, spec[n], source, integer) for n in ("low", "high"))
    step = None if spec.get("step") is None else _number(key, "step", spec["step"], source, integer)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{source}: '{key}': log must be true or false, got {log!r}")
    if integer:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(low, high, log=log, step=step)


def _distribution(key: str, spec: Any, source: str) -> BaseDistribution:
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{source}: '{key}' must be a mapping with a type (float, int or categorical), got {spec!r}")
    kind = spec["type"]
    if kind not in _FIELDS:
        raise ConfigError(f"{source}: '{key}': unknown type '{kind}'; known: {', '.join(_FIELDS)}")
    extra = sorted(set(spec) - _FIELDS[kind])
    if extra:
        raise ConfigError(f"{source}: '{key}': unknown field(s) {', '.join(extra)} for type {kind}; "
                          f"allowed: {', '.join(sorted(_FIELDS[kind]))}")
    try:
        if kind == "categorical":
            return _categorical(key, spec, source)
        return _numeric(key, kind, spec, source)
    except ValueError as e:  # optuna's own checks: low > high, log with low <= 0, step with log, ...
        raise ConfigError(f"{source}: '{key}': {e}") from e


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """Accept ``train.lr: {...}`` and the nested ``train: {lr: {...}}`` alike."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict) and "type" not in value:
            flat.update({f"{key}.{sub}": spec for sub, spec in value.items()})
        else:
            flat[str(key)] = value
    return flat


def parse_space(data: dict[str, Any], source: str = "search space") -> dict[str, BaseDistribution]:
    """Config key -> optuna distribution; unknown or unsearchable keys raise ConfigError naming the key."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: expected a non-empty mapping of config keys to distributions")
    known = valid_keys()
    space = {}
    for key, spec in _flatten(data).items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{source}: unknown config key '{key}'.{hint} Valid keys: {', '.join(known)}")
        if key in NOT_SEARCHABLE:
            raise ConfigError(f"{source}: '{key}' cannot be searched: trials are compared on the same folds of the "
                              f"same data; set it with --config or --set")
        space[key] = _distribution(key, spec, source)
    return space


def list_spaces() -> list[str]:
    """The names of the shipped search spaces (their competitions)."""
    return sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))


def resolve_space(name_or_path: str | Path | None, competition: str) -> Path:
    """``--space``: a YAML file, the name of a shipped space, or (None) the competition's default space."""
    if name_or_path is None:
        path = SPACE_DIR / f"{competition}.yaml"
        if not path.is_file():
            raise ConfigError(f"no default search space for {competition}: pass --space FILE (shipped spaces: "
                              f"{', '.join(list_spaces())})")
        return path
    path = Path(name_or_path)
    if path.is_file():
        if path.resolve().parent == PRESET_DIR.resolve():
            raise ConfigError(f"{path} is a config preset (kit train --config), not a search space; shipped "
                              f"spaces: {', '.join(list_spaces())}")
        return path
    shipped = SPACE_DIR / f"{str(name_or_path).removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"search space file not found: {path} (shipped spaces: {', '.join(list_spaces())})")


def load_space(path: str | Path) -> dict[str, BaseDistribution]:
    """Read a search-space YAML file (see kit/configs/spaces/)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from e
    return parse_space(data, str(path))


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """``base`` with the flat ``section.key`` values of ``params`` set, type-checked by kit.config."""
    data = base.to_dict()
    for key, value in params.items():
        section, _, name = key.rpartition(".")
        (data[section] if section else data)[name] = value
    return from_dict(data)


def _extremes(dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def check_space(space: dict[str, BaseDistribution], base: Config, source: str = "search space") -> None:
    """Fail before any training if a bound or choice cannot be a value of its config key."""
    for key, dist in space.items():
        for value in _extremes(dist):
            try:
                trial_config(base, {key: value})
            except ConfigError as e:
                raise ConfigError(f"{source}: '{key}' value {value!r} is not valid: {e}") from e


def epoch_stride(space: dict[str, BaseDistribution], base: Config) -> int:
    """Steps reserved per fold: the most epochs any trial can train, so a step means the same for every trial."""
    dist = space.get("train.epochs")
    return int(max(_extremes(dist))) if dist is not None else base.train.epochs


def suggest(trial: optuna.Trial, space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Draw the trial's value of every key of ``space`` (flat ``section.key`` names, as trial_config takes them)."""
    params = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            params[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            params[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            params[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return params
