"""Typed, frozen run configuration: defaults here, a YAML preset on top, ``--set section.key=value`` on top of that.

The resolved config is saved as ``config.yaml`` in the run folder (with the git SHA and package versions) and inside
every checkpoint, so a run can be reproduced or resumed from its folder alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kit.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet18"
    """Any timm model name, or one of kit's registered models (classic_cnn, classic_cnn_bn)."""
    weights: str | None = None
    """Local weights file (.pth/.safetensors/.bin) for the backbone; None trains from scratch (no hub downloads)."""
    img_size: int | None = None
    """Input side in pixels; None takes the backbone's timm data config."""
    drop_rate: float = 0.0
    use_metadata: bool = False
    """Fuse sex / age / site / images-per-patient features with the image features (ISIC)."""
    freeze_epochs: int = 0
    """Feature extraction: train only the head for this many epochs with the backbone frozen."""
    unfreeze_blocks: int = 0
    """After the frozen epochs unfreeze the top N blocks of the backbone (0 = all of it)."""
    backbone_lr_scale: float = 0.1
    """The backbone's learning rate relative to the head's once unfrozen (fine-tuning at a lower rate)."""


@dataclass(frozen=True)
class AugConfig:
    preset: str = "histo"
    """classic | histo | isic | none (see kit/transforms.py)."""
    strength: float = 1.0
    """Scales magnitudes (angles, shifts, colour jitter) and probabilities of the preset."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    """Any name timm.optim.create_optimizer_v2 knows (adamw, sgd, lamb, ...)."""
    scheduler: str = "cosine"
    """cosine | plateau | step | none (timm.scheduler)."""
    warmup_epochs: int = 0
    min_lr: float = 1e-6
    loss: str = "auto"
    """auto (bce for binary, ce for multiclass) | bce | ce | focal."""
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    class_weights: bool = False
    """Weight the loss by inverse class frequency (pos_weight for bce)."""
    balanced_sampler: bool = False
    """Sample training images with inverse class-frequency weights instead of shuffling."""
    ema: bool = False
    ema_decay: float = 0.998
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0 = off)."""
    amp: str = "auto"
    """auto (bf16 if the GPU supports it else fp16 with a scaler; off on CPU) | bf16 | fp16 | off."""
    channels_last: str = "auto"
    """auto (on for CUDA, where it is faster; off on CPU) | on | off."""
    early_stopping: int = 0
    """Stop a fold after this many epochs without improvement of the validation metric (0 = off)."""
    num_workers: int = -1
    """DataLoader workers; -1 = 0 on CPU (images are cached in memory), min(8, cores) on CUDA."""
    cache_images: bool = True
    """Decode every image once into a packed uint8 array shared by all folds (fast; needs RAM)."""
    seed: int = 42
    device: str = "auto"


@dataclass(frozen=True)
class Config:
    competition: str = "histopathologic-cancer-detection"
    n_folds: int = 5
    fold_seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "aug": AugConfig, "train": TrainConfig}


def valid_keys() -> list[str]:
    top = [f.name for f in fields(Config) if f.name not in SECTIONS]
    return top + [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint} Valid keys: {', '.join(valid_keys())}")


def _coerce(key: str, value: Any, default: Any, annotation: str) -> Any:
    """Check a value against the field's type (from its annotation string) and convert ints to floats."""
    if value is None:
        if "None" in annotation:
            return None
        raise ConfigError(f"config key '{key}' cannot be null")
    if annotation.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation.startswith("float") and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string; users write it that way
            return float(value)
        except ValueError:
            pass
    expected = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation.split(" ")[0])
    if expected and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ConfigError(f"config key '{key}' must be {annotation}, got {value!r}")
    return value


def from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from nested dicts, rejecting unknown keys and wrongly typed values."""
    top_kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"config section '{key}' must be a mapping, got {value!r}")
            cls = SECTIONS[key]
            known = {f.name: f for f in fields(cls)}
            kwargs = {}
            for sub, v in value.items():
                if sub not in known:
                    raise _unknown(f"{key}.{sub}")
                kwargs[sub] = _coerce(f"{key}.{sub}", v, known[sub].default, str(known[sub].type))
            top_kwargs[key] = cls(**kwargs)
        elif key in {f.name for f in fields(Config)}:
            f = next(f for f in fields(Config) if f.name == key)
            top_kwargs[key] = _coerce(key, value, f.default, str(f.type))
        elif key in ("kit",):  # provenance written by save_config: ignored on load
            continue
        else:
            raise _unknown(key)
    return Config(**top_kwargs)


def _deep_update(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.lr=0.01", "model.name=resnet34"]`` -> nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got '{pair}'")
        key, raw = pair.split("=", 1)
        if key not in valid_keys():
            raise _unknown(key)
        value = yaml.safe_load(raw) if raw != "" else None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        presets = ", ".join(p.stem for p in sorted(PRESET_DIR.glob("*.yaml")))
        raise ConfigError(f"config file not found: {path} (shipped presets: {presets})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def resolve_preset(name_or_path: str) -> Path:
    """A path as given, or the name of a shipped preset (kit/configs/<name>.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = PRESET_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    return shipped if shipped.is_file() else path


def load_config(competition: str | None = None, preset: str | None = None,
                overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """Defaults <- preset YAML (the competition's default preset when none is given) <- overrides."""
    from kit.competitions import get_competition

    data: dict[str, Any] = {}
    if preset is None and competition is not None:
        default = PRESET_DIR / f"{get_competition(competition).name}.yaml"
        if default.is_file():
            preset = str(default)
    if preset is not None:
        data = read_yaml(resolve_preset(preset))
    if competition is not None:
        data["competition"] = get_competition(competition).name
    if overrides:
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        data = _deep_update(data, overrides)
    cfg = from_dict(data)
    get_competition(cfg.competition)  # validate the name early
    return cfg


def provenance() -> dict[str, Any]:
    """Git SHA of the working tree (if any) and versions of the packages that shape results."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("kit", "torch", "timm", "albumentations", "numpy", "scikit-learn", "pandas", "optuna"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        sha = None
    return {"git_sha": sha, "versions": versions}


def config_to_yaml(cfg: Config, with_provenance: bool = True) -> str:
    data = cfg.to_dict()
    if with_provenance:
        data["kit"] = provenance()
    return yaml.safe_dump(data, sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> Path:
    from kit.io import write_text_atomic

    return write_text_atomic(path, config_to_yaml(cfg))


def load_saved_config(path: str | Path) -> Config:
    return from_dict(read_yaml(path))
