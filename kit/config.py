"""Typed, frozen run configuration: defaults here, a YAML preset on top, ``--set section.key=value`` on top of that.

The resolved config is saved as ``config.yaml`` in the run folder (with the git SHA and package versions) and inside
every checkpoint, so a run can be reproduced or resumed from its folder alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import operator
import re
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from kit.errors import ConfigError

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent / "configs"

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _f(default: Any, help: str, *, choices: Any = None, check: Callable[[str, Any], None] | None = None,
       valid: str | None = None, factory: Callable[[], Any] | None = None, **bounds: float) -> Any:
    """A config field with its one-line help and what values it takes.

    ``factory``: builds a mutable default (a list) instead of ``default``;
    ``choices``: a tuple of strings, or a function returning a list or registry of them (imported when checked);
    ``check(key, value)``: raises for an invalid value, ``valid`` describes the valid values then;
    ``bounds``: ``ge``/``gt``/``le``/``lt`` for numbers (None always passes).
    """
    meta = {"help": help, "choices": choices, "check": check, "valid": valid, "bounds": bounds}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _losses() -> list[str]:
    from kit.losses import LOSSES

    return ["auto", *LOSSES]


def _presets() -> Any:
    from kit.transforms import AUG_PRESETS

    return AUG_PRESETS


def _competitions() -> Any:
    from kit.competitions import COMPETITIONS

    return COMPETITIONS


def _check_model(key: str, value: str) -> None:
    from kit.models import check_model_name

    try:
        check_model_name(value)
    except ConfigError as e:
        raise ConfigError(f"config key {key}={value} is not valid; {e}") from None


def _optimizers() -> list[str]:
    from timm.optim import list_optimizers

    return list(list_optimizers())


def _check_optimizer(key: str, value: str) -> None:
    # timm's create_optimizer_v2 lower-cases the name and takes an optional "lookahead_" prefix
    parts = value.lower().split("_")
    known = _optimizers()
    if parts[-1] in known and (len(parts) == 1 or parts[:-1] == ["lookahead"]):
        return
    raise _not_one_of(key, value, known, " (optionally prefixed lookahead_)")


def _check_extra(key: str, value: Any) -> None:
    from kit.competitions import get_competition

    entries_ok = isinstance(value, list) and all(
        isinstance(e, dict) and set(e) == {"competition", "data"} and all(isinstance(v, str) for v in e.values())
        for e in value)
    if not entries_ok:
        raise ConfigError(f"config key {key}={value} is not valid; expected a list of {{competition: NAME, data: DIR}} "
                          "(or kit train --extra-data NAME=DIR)")
    for entry in value:
        try:
            get_competition(entry["competition"])
        except ConfigError as e:
            raise ConfigError(f"config key {key}: {e}") from None


TRACKERS = ("tensorboard", "mlflow")
"""The experiment trackers train.loggers may name (kit.trackers)."""


def _check_loggers(key: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config key {key}={value} is not valid; expected a list such as [tensorboard, mlflow] "
                          "(--set train.loggers=[mlflow])")
    for name in value:
        if name not in TRACKERS:
            raise _not_one_of(key, name, list(TRACKERS))


def _targets() -> tuple[str, ...]:
    from kit.data.targets import TARGETS

    return TARGETS


def _mix_modes() -> tuple[str, ...]:
    from kit.mixing import MIX_MODES

    return MIX_MODES


def _check_device(key: str, value: str) -> None:
    if not _DEVICE.fullmatch(value):
        raise ConfigError(f"config key {key}={value} is not valid; expected one of auto, cpu, cuda, cuda:N "
                          "(N a GPU index)")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("resnet18", "the backbone: a timm model (timm.list_models()) or one of kit's own models",
                   check=_check_model, valid="any timm model name, or classic_cnn, classic_cnn_bn")
    weights: str | None = _f(None, "local weights file (.pth/.safetensors/.bin) for the backbone (a Kaggle dataset); "
                                   "null: see model.pretrained")
    pretrained: bool | str = _f(False, "timm's pretrained weights through the Hugging Face cache (HF_HUB_OFFLINE=1 "
                                       "works from a populated cache): true (timm's default tag), a tag such as "
                                       "in1k, or false (from scratch unless model.weights)",
                                valid="true, false, or a timm pretrained tag of model.name")
    img_size: int | None = _f(None, "input side in pixels; null takes the backbone's timm data config", ge=1)
    drop_rate: float = _f(0.0, "dropout before the classifier (timm's drop_rate)", ge=0.0, lt=1.0)
    use_metadata: bool = _f(False, "fuse every feature column of the metadata (numbers standardised, text one-hot, "
                                   "missing flagged) and images per patient with the image features (competitions "
                                   "with metadata: ISIC)")
    freeze_epochs: int = _f(0, "feature extraction: train only the head for this many epochs with the backbone "
                               "frozen (at most train.epochs: equal trains the head alone)", ge=0)
    unfreeze_blocks: int = _f(0, "after the frozen epochs unfreeze the top N blocks of the backbone (0 = all of it)",
                              ge=0)
    backbone_lr_scale: float = _f(0.1, "the backbone's learning rate relative to the head's once unfrozen "
                                       "(fine-tuning at a lower rate)", gt=0.0)
    init_from: str | None = _f(None, "warm start: an earlier run folder whose fold{k}/best.pt starts fold k (growing "
                                     "sizes: a 64 px run, then a 128 px run from it); refused unless its folds agree "
                                     "with this run's; its weights replace model.pretrained and model.weights")


@dataclass(frozen=True)
class AugConfig:
    preset: str = _f("histo", "augmentation preset (see kit/transforms.py)", choices=_presets)
    strength: float = _f(1.0, "scales magnitudes (angles, shifts, colour jitter) and probabilities of the preset",
                         ge=0.0)
    on_device: bool = _f(False, "apply the preset per batch on the training device (GPU) instead of in the CPU "
                                "workers, which then only read and resize; presets: see kit/gpu_augment.py")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(5, "epochs per fold", ge=1)
    batch_size: int = _f(64, "training batch size (validation uses twice this)", ge=1)
    lr: float = _f(1e-3, "peak learning rate (of the head, when model.freeze_epochs > 0)", gt=0.0)
    weight_decay: float = _f(1e-4, "weight decay of the optimizer", ge=0.0)
    optimizer: str = _f("adamw", "any optimizer name timm.optim.create_optimizer_v2 knows (adamw, sgd, lamb, ...)",
                        check=_check_optimizer, valid="timm.optim.list_optimizers(), optionally prefixed lookahead_")
    scheduler: str = _f("cosine", "learning-rate schedule (timm.scheduler); none keeps train.lr",
                        choices=("cosine", "plateau", "step", "none"))
    warmup_epochs: int = _f(0, "linear warm-up epochs from lr/100 (less than train.epochs)", ge=0)
    min_lr: float = _f(1e-6, "the schedule's floor (at most train.lr)", ge=0.0)
    loss: str = _f("auto", "auto (bce for binary, ce for multiclass), or a registered loss (kit/losses.py)",
                   choices=_losses)
    focal_gamma: float = _f(2.0, "focusing parameter of the focal loss", ge=0.0)
    label_smoothing: float = _f(0.0, "label smoothing of the ce loss", ge=0.0, lt=1.0)
    class_weights: bool = _f(False, "weight the loss by inverse class frequency (pos_weight for bce)")
    balanced_sampler: bool = _f(False, "sample training images with inverse class-frequency weights instead of "
                                       "shuffling")
    target: str = _f("competition", "what the model learns: competition (its own target) or diagnosis (one output "
                                    "per ISIC 2019 class, the 2020 diagnoses mapped to them; the competition's class "
                                    "is scored: siim-isic-melanoma-classification)", choices=_targets)
    negatives_per_positive: float = _f(0.0, "binary only: each epoch trains on every positive and this many "
                                            "negatives per positive, a fresh random subset each epoch (ISIC 2024 "
                                            "winners used 3 to 20); 0 = every image", ge=0.0)
    ema: bool = _f(False, "validate and save an exponential moving average of the weights (timm ModelEmaV3)")
    ema_decay: float = _f(0.998, "decay of the weight average", gt=0.0, lt=1.0)
    grad_clip: float = _f(0.0, "clip the gradient norm to this value (0 = off)", ge=0.0)
    accum_steps: int = _f(1, "gradient accumulation: one optimizer step per this many batches of train.batch_size "
                             "(the effective batch); the schedule, EMA, clipping and AMP scaling run per step", ge=1)
    mixup: float = _f(0.0, "mixup's Beta(alpha, alpha) for the mixing weight (timm's Mixup; 0 = off, timm's "
                           "ImageNet recipe uses 0.8)", ge=0.0)
    cutmix: float = _f(0.0, "CutMix's Beta(alpha, alpha) for the pasted area (0 = off, timm's recipe uses 1.0)",
                       ge=0.0)
    mixup_prob: float = _f(1.0, "probability that a batch is mixed (train.mixup / train.cutmix)", ge=0.0, le=1.0)
    mixup_switch_prob: float = _f(0.5, "with both train.mixup and train.cutmix on: the probability of CutMix "
                                       "instead of mixup", ge=0.0, le=1.0)
    mixup_mode: str = _f("batch", "one mixing weight per batch, per pair of images, or per image (elem)",
                         choices=_mix_modes)
    mixup_off_epochs: int = _f(0, "train the last N epochs unmixed (mixup and CutMix off), as the winners do", ge=0)
    swa_epochs: int = _f(0, "stochastic weight averaging: best.pt becomes the average of the weights at the end of "
                            "each of the last N epochs, BatchNorm statistics recomputed on the training fold (0 = "
                            "off; at least 2)", ge=0)
    top_k: int = _f(0, "best.pt becomes the average of the k best epochs' weights by validation score, BatchNorm "
                       "statistics recomputed on the training fold (0 = off; at least 2)", ge=0)
    amp: str = _f("auto", "mixed precision: auto (bf16 if the GPU supports it else fp16 with a scaler; off on CPU)",
                  choices=("auto", "bf16", "fp16", "off"))
    channels_last: str = _f("auto", "channels-last memory format: auto (on for CUDA, where it is faster; off on "
                                    "CPU)", choices=("auto", "on", "off"))
    early_stopping: int = _f(0, "stop a fold after this many epochs without improvement of the validation metric "
                                "(0 = off)", ge=0)
    num_workers: int = _f(-1, "DataLoader workers; -1 = 0 on CPU (images are cached in memory), min(8, cores) on "
                              "CUDA", ge=-1)
    cache_images: bool = _f(True, "read images from the split's pack: decoded once into a uint8 file on disk (kit "
                                  "pack; built on first use), shared by every fold, run, trial and prediction at "
                                  "that size; false = decode the image files every epoch")
    keep_last: bool = _f(True, "keep fold{k}/last.pt (optimizer state, ~3x best.pt) once the fold has finished; "
                               "false deletes it then (kit tune's default)")
    seed: int = _f(42, "seed of weights, augmentation and sampling (fold k uses seed + k)", ge=0)
    device: str = _f("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N", check=_check_device,
                     valid="auto, cpu, cuda, cuda:N")
    compile: bool = _f(False, "torch.compile the model (slow first steps, then faster on a GPU; needs a C compiler)")
    sync_bn: bool = _f(False, "under torchrun with several GPUs: BatchNorm statistics over the global batch "
                              "(SyncBatchNorm) instead of each process's part")
    loggers: list[str] = _f(None, "experiment trackers that get each epoch's metrics, the config and the plots: a "
                                  "list of tensorboard, mlflow (pip install 'kit[trackers]'); [] = none",
                            factory=list, check=_check_loggers, valid="a list of tensorboard, mlflow")
    mlflow_uri: str = _f("", "MLflow tracking URI: a file store (file:///abs/mlruns), a database URL or a server "
                             "(http://host:5000); empty: $MLFLOW_TRACKING_URI, else MLflow's default")
    mlflow_experiment: str = _f("", "MLflow experiment of the runs; empty: kit-<competition>")


@dataclass(frozen=True)
class DataConfig:
    extra: list[dict] = _f(None, "labelled data of other competitions added to the training part of every fold only "
                                 "(never validated, never in oof.csv or the CV): a list of {competition: NAME, data: "
                                 "DIR}; kit train --extra-data NAME=DIR", factory=list, check=_check_extra,
                           valid="a list of {competition: NAME, data: DIR}")
    pseudo: str | None = _f(None, "pseudo-labels: a predicted run folder (kit predict) of this competition and image "
                                  "size; fold k trains also on the test images its test_fold{k}.csv is confident "
                                  "about (never validated, never in oof.csv or the CV); kit pseudo RUN")
    pseudo_threshold: float = _f(0.9, "keep a test image when its top probability (binary: p or 1 - p) is at least "
                                      "this", ge=0.0, le=1.0)
    pseudo_hard: bool = _f(False, "pseudo-labels as the argmax class instead of the predicted probabilities")


@dataclass(frozen=True)
class Config:
    competition: str = _f("histopathologic-cancer-detection", "competition name or alias (see `kit competitions`)",
                          choices=_competitions)
    n_folds: int = _f(5, "number of cross-validation folds", ge=2)
    fold_seed: int = _f(42, "seed of the fold split", ge=0)
    model: ModelConfig = field(default_factory=ModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "aug": AugConfig, "train": TrainConfig, "data": DataConfig}


def key_fields() -> dict[str, dataclasses.Field]:
    """Every config key (``section.key`` for sectioned ones) -> its dataclass field, in definition order."""
    top = {f.name: f for f in fields(Config) if f.name not in SECTIONS}
    return top | {f"{s}.{f.name}": f for s, cls in SECTIONS.items() for f in fields(cls)}


def valid_keys() -> list[str]:
    return list(key_fields())


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint} Valid keys: {', '.join(valid_keys())}")


def _coerce(key: str, value: Any, annotation: str) -> Any:
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
    types = {"int": int, "float": float, "bool": bool, "str": str}
    allowed = [types[a] for a in annotation.split(" | ") if a in types]  # "bool | str": either
    if allowed and not any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed):
        raise ConfigError(f"config key '{key}' must be {annotation}, got {value!r}")
    return value


def _not_one_of(key: str, value: Any, valid: list[str], note: str = "") -> ConfigError:
    close = difflib.get_close_matches(str(value), valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"config key {key}={value} is not valid{hint}; expected one of {', '.join(valid)}{note}")


def _range_text(bounds: dict[str, float]) -> str:
    low = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds['gt']}" if "gt" in bounds else ""
    high = f"{bounds['le']}]" if "le" in bounds else f"{bounds['lt']})" if "lt" in bounds else ""
    if low and high:
        return f"in {low}, {high}"
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{ops[k]} {v}" for k, v in bounds.items())


def _choices(f: dataclasses.Field) -> Any:
    """The field's valid values (a tuple, list or registry), or None for an open field."""
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def _check_value(key: str, f: dataclasses.Field, value: Any) -> Any:
    """A typed value checked against the field's closed set, check or bounds; YAML's on/off become strings."""
    choices = _choices(f)
    if isinstance(value, bool) and choices is not None and ("on" if value else "off") in choices:
        value = "on" if value else "off"  # YAML 1.1 reads an unquoted on / off as a boolean
    value = _coerce(key, value, str(f.type))
    if value is None:
        return value
    if choices is not None and value not in choices:
        raise _not_one_of(key, value, list(choices))
    if hasattr(choices, "canonical"):  # a registry: an alias becomes the registered name
        value = choices.canonical(value)
    if f.metadata.get("check"):
        f.metadata["check"](key, value)
    bounds = f.metadata.get("bounds") or {}
    ops = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}
    if not all(ops[op](value, bound) for op, bound in bounds.items()):
        raise ConfigError(f"config key {key}={value} is not valid; it must be {_range_text(bounds)}")
    return value


def _check_together(cfg: Config) -> None:
    """Checks that involve two keys, or a key and the competition."""
    from kit.competitions import get_competition
    from kit.losses import resolve_loss

    m, t = cfg.model, cfg.train
    if t.warmup_epochs and t.warmup_epochs >= t.epochs:
        raise ConfigError(f"config key train.warmup_epochs={t.warmup_epochs} is not valid; it must be less than "
                          f"train.epochs ({t.epochs}); lower it (0 = no warm-up)")
    if m.freeze_epochs > t.epochs:  # equal is pure feature extraction: the backbone stays frozen throughout
        raise ConfigError(f"config key model.freeze_epochs={m.freeze_epochs} is not valid; it must be at most "
                          f"train.epochs ({t.epochs}); lower it (0 = no frozen epochs)")
    if m.weights and m.pretrained is not False:
        raise ConfigError(f"config key model.pretrained={m.pretrained} is not valid with model.weights={m.weights}: "
                          "both give initial weights; set model.pretrained=false to start from the file")
    if t.min_lr > t.lr:
        raise ConfigError(f"config key train.min_lr={t.min_lr} is not valid; it must be at most train.lr ({t.lr})")
    spec = get_competition(cfg.competition)
    space = _target_space(cfg)
    what = spec.name if t.target == "competition" else f"{spec.name} with train.target={t.target}"
    try:
        resolve_loss(t.loss, space.task)
    except ConfigError as e:
        raise ConfigError(f"config key {e} ({what} is {space.task})") from None
    if t.negatives_per_positive and space.task != "binary":
        raise ConfigError(f"config key train.negatives_per_positive={t.negatives_per_positive} is not valid; "
                          f"{what} is {space.task}, it needs a binary target")
    if t.negatives_per_positive and t.balanced_sampler:
        raise ConfigError("config keys train.negatives_per_positive and train.balanced_sampler are two ways to "
                          "rebalance the classes: set one of them")
    _check_recipes(t)
    if cfg.data.pseudo and t.target != "competition":
        raise ConfigError(f"config key data.pseudo is not valid with train.target={t.target}: the test predictions "
                          "are the competition's target")
    soft = cfg.data.pseudo and not cfg.data.pseudo_hard
    if soft and space.task != "binary" and resolve_loss(t.loss, space.task) != "ce":  # focal gathers class indices
        raise ConfigError(f"config key data.pseudo with soft labels needs train.loss=ce (got {t.loss}); set "
                          "data.pseudo_hard=true for hard labels")
    if m.use_metadata and not spec.has_metadata:
        raise ConfigError(f"config key model.use_metadata=true is not valid; {spec.name} has no metadata")
    if cfg.aug.on_device:
        from kit.gpu_augment import BATCH_PRESETS

        if cfg.aug.preset not in BATCH_PRESETS:
            raise ConfigError(f"config key aug.on_device=true is not valid with aug.preset={cfg.aug.preset}; presets "
                              f"that run on the device: {', '.join(BATCH_PRESETS.names())}")


def _check_recipes(t: TrainConfig) -> None:
    """Mixup's off epochs and the weight averaging against the run's epochs."""
    mixing = t.mixup > 0 or t.cutmix > 0
    if t.mixup_off_epochs and not mixing:
        raise ConfigError(f"config key train.mixup_off_epochs={t.mixup_off_epochs} is not valid without mixing; set "
                          "train.mixup or train.cutmix (their Beta alpha, e.g. 0.8 / 1.0)")
    if mixing and t.mixup_off_epochs >= t.epochs:
        raise ConfigError(f"config key train.mixup_off_epochs={t.mixup_off_epochs} is not valid; it must be less "
                          f"than train.epochs ({t.epochs}), or no epoch would be mixed")
    for key, value in (("swa_epochs", t.swa_epochs), ("top_k", t.top_k)):
        if value == 1 or value > t.epochs:
            raise ConfigError(f"config key train.{key}={value} is not valid; it averages 2 to train.epochs "
                              f"({t.epochs}) epochs (0 = off)")
    if t.swa_epochs and t.top_k:
        raise ConfigError("config keys train.swa_epochs and train.top_k are two ways to average a fold's weights: "
                          "set one of them")
    if t.swa_epochs and t.early_stopping:
        raise ConfigError(f"config key train.swa_epochs={t.swa_epochs} is not valid with train.early_stopping="
                          f"{t.early_stopping}: SWA averages the last epochs, which an early stop may never reach; set "
                          "train.early_stopping=0, or use train.top_k")


def _target_space(cfg: Config):
    """The run's target space; raises when train.target or an extra source does not fit the competition."""
    from kit.competitions import get_competition
    from kit.data.targets import check_extra, target_space

    spec = get_competition(cfg.competition)
    space = target_space(spec, cfg.train.target)
    for entry in cfg.data.extra:
        check_extra(space, spec, get_competition(entry["competition"]))
    return space


def from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from nested dicts, rejecting unknown keys, wrongly typed values, values outside a field's
    closed set or range, and combinations that cannot train (see ``kit config keys``)."""
    top_kwargs: dict[str, Any] = {}
    top_fields = {f.name: f for f in fields(Config)}
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
                kwargs[sub] = _check_value(f"{key}.{sub}", known[sub], v)
            top_kwargs[key] = cls(**kwargs)
        elif key in top_fields:
            top_kwargs[key] = _check_value(key, top_fields[key], value)
        elif key in ("kit",):  # the provenance section of a run's config.yaml (config_to_yaml): ignored on load
            continue
        else:
            raise _unknown(key)
    cfg = Config(**top_kwargs)
    _check_together(cfg)
    return cfg


def describe_keys() -> list[dict[str, str]]:
    """Every key with its type, default, help and valid values (closed set or range; empty when open)."""
    out = []
    for key, f in key_fields().items():
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        choices, bounds = _choices(f), f.metadata.get("bounds")
        valid = (f"one of {', '.join(choices)}" if choices is not None else f.metadata.get("valid")
                 or (_range_text(bounds) if bounds else ""))
        out.append({"key": key, "type": str(f.type), "default": shown, "help": f.metadata["help"], "valid": valid})
    return out


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
        _users_values_win(data, overrides)
    cfg = from_dict(data)
    check_buildable(cfg)
    if 0 < cfg.model.freeze_epochs >= cfg.train.epochs:
        log.warning("note: model.freeze_epochs=%d >= train.epochs=%d: only the head trains, the backbone stays "
                    "frozen throughout (lower model.freeze_epochs to fine-tune it)", cfg.model.freeze_epochs,
                    cfg.train.epochs)
    return cfg


def preset_competition(preset: str) -> str | None:
    """The competition a preset names (``competition:`` in its YAML), None when it names none."""
    name = read_yaml(resolve_preset(preset)).get("competition")
    return str(name) if name else None


def _users_values_win(data: dict[str, Any], given: dict[str, Any]) -> None:
    """Where a ``--set`` value contradicts a preset's default that the user did not set, the user's value wins and
    the preset's gives way, with one line each (a shipped preset must survive ``epochs=1`` or a weights file)."""
    model, train = data.setdefault("model", {}), data.setdefault("train", {})
    set_model, set_train = given.get("model") or {}, given.get("train") or {}
    epochs = train.get("epochs")
    if "epochs" in set_train and isinstance(epochs, int) and epochs >= 1:
        for section, key, values, bound in (("train", "warmup_epochs", train, epochs - 1),
                                            ("model", "freeze_epochs", model, epochs)):
            own = set_train if section == "train" else set_model
            value = values.get(key)
            if key not in own and isinstance(value, int) and value > bound:
                values[key] = bound
                log.warning("note: %s.%s=%d of the preset lowered to %d to fit train.epochs=%d", section, key,
                            value, bound, epochs)
    if set_model.get("weights") and "pretrained" not in set_model and model.get("pretrained") not in (False, None):
        log.warning("note: model.weights=%s given: the preset's model.pretrained=%s is turned off (the file gives "
                    "the initial weights)", set_model["weights"], yaml.safe_dump(model["pretrained"]).split("\n")[0])
        model["pretrained"] = False


def check_buildable(cfg: Config) -> None:
    """Checks of user input that need more than the values: the weights file exists, the image size fits the model
    (one forward of a zero image on the CPU), the augmentation preset builds at its strength. ``load_config`` runs
    them; ``from_dict`` does not, since it also reads saved configs (whose weights may live elsewhere)."""
    from kit.models import check_input_size, check_pretrained
    from kit.transforms import check_preset

    if cfg.model.weights and not Path(cfg.model.weights).is_file():
        raise ConfigError(f"config key model.weights={cfg.model.weights}: file not found")
    if cfg.model.img_size is not None:
        check_input_size(cfg.model.name, cfg.model.img_size)
    check_pretrained(cfg.model.name, cfg.model.pretrained)  # a bad tag fails before anything is fetched
    check_preset(cfg.aug.preset, cfg.aug.strength)


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


def config_to_yaml(cfg: Config, with_provenance: bool = True, extra: dict[str, Any] | None = None) -> str:
    """The config as YAML; with provenance, a ``kit`` section (git SHA, versions, and ``extra``: the weights)."""
    data = cfg.to_dict()
    if with_provenance:
        data["kit"] = {**provenance(), **(extra or {})}
    return yaml.safe_dump(data, sort_keys=False)


def load_saved_config(path: str | Path) -> Config:
    return from_dict(read_yaml(path))
