"""Models by name: any timm backbone, kit's classic CNNs (registered with timm), an optional metadata branch, and
the freeze / unfreeze steps of feature extraction then fine-tuning.

Initial weights come from :mod:`kit.weights`: none, a local file (timm's ``pretrained_cfg_overlay=dict(file=...)``)
or timm's pretrained machinery through the Hugging Face cache (``model.pretrained``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from kit.errors import ConfigError
from kit.registry import Registry
from kit.weights import pretrained_name, read_state_dict, resolve_weights

MIN_IMG_SIZE = 8
"""The smallest input side kit trains at: below it the augmentations divide by zero or flip 1-pixel arrays."""

# ---------------------------------------------------------------------------------------------------------------
# The classic CNNs, registered so that timm.create_model("classic_cnn") works like any timm model.

KIT_MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
"""kit's own models (their timm entrypoint functions); every other model name is timm's."""


class ClassicCNN(nn.Module):
    """The lecture's convnet: Conv 32-64-128-128 (3x3, ReLU, 2x2 max-pool), Dense 512, one output.

    Inputs are only rescaled to [0, 1] (Keras ``rescale=1/255``), hence mean 0 and std 1 in ``pretrained_cfg``.
    With ``batch_norm=True`` it is the histopathology variant: BatchNorm after every conv and Dropout between blocks.
    """

    def __init__(self, num_classes: int = 1, in_chans: int = 3, img_size: int = 150, batch_norm: bool = False,
                 drop_rate: float = 0.0, **_):
        super().__init__()
        layers: list[nn.Module] = []
        chans = [in_chans, 32, 64, 128, 128]
        side = img_size
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers.append(nn.Conv2d(c_in, c_out, 3, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            if batch_norm:
                layers.append(nn.Dropout(0.1))
            side = (side - 2) // 2
        if side < 1:
            raise ConfigError(f"classic_cnn needs img_size >= 46, got {img_size}")
        self.features = nn.Sequential(*layers)
        self.num_features = 128 * side * side
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.fc = nn.Sequential(nn.Linear(self.num_features, 512), nn.ReLU(inplace=True))
        self.head = nn.Linear(512, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = {"input_size": (in_chans, img_size, img_size), "mean": (0.0,) * in_chans,
                               "std": (1.0,) * in_chans, "interpolation": "bilinear", "crop_pct": 1.0,
                               "num_classes": num_classes}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc(torch.flatten(x, 1))
        x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, *_, **__) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(512, num_classes) if num_classes else nn.Identity()


@KIT_MODELS.register("classic_cnn")
@register_model
def classic_cnn(pretrained: bool = False, **kwargs) -> ClassicCNN:
    """The lecture's 4-block convnet (150x150 input by default)."""
    kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None)
    return ClassicCNN(batch_norm=False, **kwargs)


@KIT_MODELS.register("classic_cnn_bn")
@register_model
def classic_cnn_bn(pretrained: bool = False, **kwargs) -> ClassicCNN:
    """The BatchNorm/Dropout variant used on the 96x96 histopathology patches."""
    kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.setdefault("img_size", 96)
    return ClassicCNN(batch_norm=True, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Metadata fusion


class MetaFusion(nn.Module):
    """Image features from a backbone (no head) concatenated with an MLP embedding of tabular metadata."""

    def __init__(self, backbone: nn.Module, n_meta: int, num_classes: int, drop_rate: float = 0.3):
        super().__init__()
        self.backbone = backbone
        self.meta = nn.Sequential(nn.Linear(n_meta, 64), nn.BatchNorm1d(64), nn.SiLU(), nn.Dropout(drop_rate),
                                  nn.Linear(64, 32), nn.BatchNorm1d(32), nn.SiLU())
        self.head = nn.Linear(backbone.num_features + 32, num_classes)
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})

    def forward(self, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        img = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        return self.head(torch.cat([img, self.meta(meta)], dim=1))

    def get_classifier(self) -> nn.Module:
        return self.head


# ---------------------------------------------------------------------------------------------------------------
# Factory


def check_model_name(name: str) -> None:
    """Raise naming close matches unless ``name`` is a timm model or one of kit's (which timm knows too)."""
    if name in KIT_MODELS or timm.is_model(name):
        return
    close = difflib.get_close_matches(str(name), timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ConfigError(f"unknown model '{name}'{hint} (any timm model name, or one of {', '.join(KIT_MODELS)})")


def check_pretrained(name: str, pretrained: bool | str) -> None:
    """Raise when ``model.pretrained`` asks for weights that ``name`` does not have: kit's own models have none, a
    timm model only its tags."""
    if pretrained not in (False, None) and name in KIT_MODELS:
        raise ConfigError(f"model.pretrained: kit's own model {name} has no pretrained weights; give a file with "
                          "model.weights=FILE or set model.pretrained=false")
    pretrained_name(name, pretrained)


def check_input_size(name: str, img_size: int) -> None:
    """Raise when ``img_size`` pixels are too few for ``name`` (a pooling or conv layer left with no output), or
    when the model takes one fixed size only: one forward of the features on a zero image, on the CPU."""
    if img_size < MIN_IMG_SIZE:
        raise ConfigError(f"model.img_size={img_size} is too small for {name}: kit trains at {MIN_IMG_SIZE} pixels "
                          "a side or more (augmentation and the backbones' strides)")
    try:
        model = create_backbone(name, 0, img_size=img_size).eval()
        with torch.no_grad():
            model.forward_features(torch.zeros(1, 3, img_size, img_size))
    except ConfigError as e:  # kit's own models check their size when built
        raise ConfigError(f"model.img_size={img_size} is too small for {name}: {e}") from None
    except (RuntimeError, ValueError) as e:  # e.g. "Output size is too small", a kernel larger than the input
        raise ConfigError(f"model.img_size={img_size} is too small for {name}: {_first_line(e)}") from None
    except AssertionError as e:  # timm's fixed-size models (ViT: "Input height (32) doesn't match model (224)")
        raise ConfigError(f"model.img_size={img_size} does not fit {name}: {_first_line(e)}") from None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _load_weights_error(name: str, path: Path, err: Exception) -> ConfigError:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = "; ".join(lines[1:4]) if len(lines) > 1 else str(err)
    return ConfigError(f"weights file {path} does not fit model '{name}': {detail[:600]}")


def create_backbone(name: str, num_classes: int, weights: str | None = None, img_size: int | None = None,
                    drop_rate: float = 0.0, pretrained: bool | str = False) -> nn.Module:
    """A timm (or kit) model with ``num_classes`` outputs (0 = features only); initial weights from a local file,
    timm's pretrained weights through the Hugging Face cache (``pretrained``: True or a tag), or none."""
    check_model_name(name)
    check_pretrained(name, pretrained)
    kwargs: dict = {"num_classes": num_classes}
    if drop_rate:
        kwargs["drop_rate"] = drop_rate
    if name in KIT_MODELS and img_size:
        kwargs["img_size"] = img_size
    source = resolve_weights(name, pretrained, weights)
    if source.kind == "scratch":
        return timm.create_model(name, pretrained=False, **kwargs)
    if source.kind == "hf-hub":  # timm's own route: pretrained_cfg -> hf_hub_id -> the (cached) Hub file
        return _new_head(timm.create_model(source.model, pretrained=True, **kwargs), num_classes)
    path = source.path
    if name in KIT_MODELS:
        model = timm.create_model(name, pretrained=False, **kwargs)
        try:
            model.load_state_dict(read_state_dict(path))
        except RuntimeError as e:
            raise _load_weights_error(name, path, e) from e
        return model
    _check_weights_fit(name, path, timm.create_model(name, pretrained=False, **kwargs))
    # timm drops the pretrained classifier itself when num_classes differs from the file's
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    return _new_head(model, num_classes)


def _new_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Zero the classifier that timm created for pretrained features (not the file's own head, kept when its
    classes match). timm's EfficientNet initialises a linear head with range 1/sqrt(num_classes): about 0.38 for 7
    classes, which on ImageNet features of norm ~50 gives logits of +-10 and a first epoch spent undoing them
    (a loss of 12 in the head-only epoch on ISIC 2018). All-zero logits start at the uniform prediction."""
    head = model.get_classifier()
    if num_classes and num_classes != model.pretrained_cfg.get("num_classes") and isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return model


def _check_weights_fit(name: str, path: Path, model: nn.Module) -> None:
    """Raise naming the keys when a weights file does not fit ``model`` (classifier keys may differ).

    timm only logs unexpected keys, so a resnet34 file would silently half-load into a resnet18 without this.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier", "")
    classifier = classifier if isinstance(classifier, str) else ""

    def is_head(key: str) -> bool:
        return bool(classifier) and key.startswith(classifier + ".")

    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own and not is_head(k)]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and not is_head(k) and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [(label, keys) for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                  ("wrong shape", mismatched)) if keys]
    if problems:
        detail = "; ".join(f"{len(keys)} {label} keys, e.g. {', '.join(keys[:3])}" for label, keys in problems)
        raise ConfigError(f"weights file {path} does not fit model '{name}': {detail}")


def build_model(name: str, num_outputs: int, weights: str | None = None, img_size: int | None = None,
                drop_rate: float = 0.0, n_meta: int = 0, pretrained: bool | str = False) -> nn.Module:
    """The model a run trains: a backbone with ``num_outputs`` logits, fused with metadata when ``n_meta`` > 0."""
    if n_meta:
        backbone = create_backbone(name, 0, weights, img_size, drop_rate, pretrained)
        return MetaFusion(backbone, n_meta, num_outputs)
    return create_backbone(name, num_outputs, weights, img_size, drop_rate, pretrained)


def data_config(model: nn.Module, img_size: int | None = None) -> dict:
    """Input size, mean and std from the backbone's timm data config (``img_size`` overrides the size)."""
    cfg = timm.data.resolve_model_data_config(getattr(model, "backbone", model))
    size = img_size or cfg["input_size"][-1]
    return {"input_size": (3, size, size), "mean": tuple(float(v) for v in cfg["mean"]),
            "std": tuple(float(v) for v in cfg["std"])}


# ---------------------------------------------------------------------------------------------------------------
# Feature extraction, then fine-tuning


def head_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters that stay trainable while the backbone is frozen (classifier, metadata branch)."""
    if isinstance(model, MetaFusion):
        return {id(p) for m in (model.meta, model.head) for p in m.parameters()}
    head = {id(p) for p in model.get_classifier().parameters()}
    if isinstance(model, ClassicCNN):  # its dense layer is part of the classifier in the lecture's recipe
        head |= {id(p) for p in model.fc.parameters()}
    return head


def backbone_blocks(model: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's parameters in blocks, input to output: timm's own grouping (``group_matcher``: stem, stages,
    and for VGG each conv layer) where the model has one, its top-level children otherwise."""
    body = model.backbone if isinstance(model, MetaFusion) else model
    head = head_parameters(model)
    if hasattr(body, "group_matcher"):
        from timm.models import group_parameters

        named = dict(body.named_parameters())
        groups = group_parameters(body, body.group_matcher(coarse=True))
        blocks = [[named[n] for n in names] for _, names in sorted(groups.items())]
    else:
        blocks = [list(m.parameters()) for m in body.children()]
    blocks = [[p for p in block if id(p) not in head] for block in blocks]
    return [b for b in blocks if b]


def set_backbone_trainable(model: nn.Module, trainable: bool, top_blocks: int = 0) -> None:
    """Freeze the backbone (head stays trainable), or unfreeze all of it / its top ``top_blocks`` blocks."""
    blocks = backbone_blocks(model)
    chosen = blocks[-top_blocks:] if (trainable and top_blocks) else (blocks if trainable else [])
    chosen_ids = {id(p) for block in chosen for p in block}
    for block in blocks:
        for p in block:
            p.requires_grad = id(p) in chosen_ids


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers with no trainable parameter: kept in eval mode so their statistics stay as loaded."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not any(p.requires_grad for p in m.parameters())]
