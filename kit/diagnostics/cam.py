"""``kit show cam``: class-activation maps of out-of-fold images, from pytorch-grad-cam (MIT; ``kit[diagnostics]``).

Each image is explained by its own fold's model, the one that never trained on it, on the pixels that model saw
(the pack at its input size, its normalisation). The layer explained is the backbone's last feature map: the last
module whose output is an N x C x H x W map (for timm models checked against ``feature_info``), so any timm CNN,
kit's classic CNNs and the metadata-fused models work; a transformer's tokens or a 1 x 1 map is refused in one line.
A binary model's map explains its positive logit, a multiclass one's the class the model predicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from kit.competitions import Competition
from kit.diagnostics.errors import caption, confident_correct, scored_rows, worst_errors
from kit.diagnostics.grid import Grid, Tile, write_grid
from kit.diagnostics.images import RunImages, require_ids
from kit.errors import KitError
from kit.models import MetaFusion
from kit.predict import load_fold_model
from kit.progress import Progress
from kit.registry import Registry
from kit.rundir import RunDir
from kit.runtime import resolve_device

__all__ = ["CAM_METHODS", "CamError", "CamResult", "cam_mass", "default_ids", "explain", "library_missing",
           "target_layer", "write_cam_grid"]

CAM_METHODS: Registry[str] = Registry("CAM method")
"""kit's name -> the pytorch-grad-cam class (imported when used)."""
for _name, _cls in (("gradcam", "GradCAM"), ("gradcam++", "GradCAMPlusPlus"), ("hirescam", "HiResCAM"),
                    ("xgradcam", "XGradCAM"), ("layercam", "LayerCAM"), ("eigencam", "EigenCAM"),
                    ("scorecam", "ScoreCAM")):
    CAM_METHODS.add(_name, _cls)
DEFAULT_METHODS = ("gradcam", "gradcam++")
CHUNK = 16


class CamError(KitError):
    """A model or input a CAM method cannot explain."""


MISSING = "class-activation maps need pytorch-grad-cam: pip install 'kit[diagnostics]' (or pip install grad-cam)"


def library_missing() -> str | None:
    """Why the CAM library cannot be used here (the line to show), or None when it can."""
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        return MISSING
    return None


def _library():
    if library_missing():
        raise KitError(MISSING)
    import pytorch_grad_cam

    return pytorch_grad_cam


# --------------------------------------------------------------------------------------------- the layer
def _output_shapes(body: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, tuple]]:
    """(name, module, output shape) of every submodule, in the order their forward calls end."""
    seen: list[tuple[str, nn.Module, tuple]] = []
    hooks = [m.register_forward_hook(lambda mod, _, out, name=name: seen.append(
        (name, mod, tuple(out.shape) if isinstance(out, torch.Tensor) else ())))
             for name, m in body.named_modules() if name]
    try:
        with torch.no_grad():
            body(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return seen


def _named_layer(body: nn.Module, name: str, model_name: str) -> tuple[str, nn.Module]:
    modules = dict(body.named_modules())
    if name not in modules:
        import difflib

        close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
        raise CamError(f"{model_name} has no layer '{name}'" + (f"; did you mean {', '.join(close)}?" if close else ""))
    return name, modules[name]


def target_layer(model: nn.Module, x: torch.Tensor, model_name: str = "the model",
                 layer: str | None = None) -> tuple[str, nn.Module]:
    """The backbone's last feature map module (its name and itself) for input ``x``, or the backbone's module named
    ``layer``; a model without a feature map raises."""
    body = model.backbone if isinstance(model, MetaFusion) else model
    if layer:
        return _named_layer(body, layer, model_name)
    seen = _output_shapes(body, x)
    info = getattr(body, "feature_info", None)
    if info is not None and len(info):
        last = info[-1]
        shapes = [s for name, _, s in seen if name == last["module"]]
        if shapes and (len(shapes[-1]) != 4 or shapes[-1][1] != last.get("num_chs", shapes[-1][1])):
            raise CamError(f"{model_name}: its last feature stage '{last['module']}' outputs {shapes[-1]}, not an "
                           "N x C x H x W map (a transformer's tokens?): CAM methods need a convolutional backbone")
    maps = [(name, m, s) for name, m, s in seen if len(s) == 4]
    if not maps:
        raise CamError(f"{model_name}: no layer outputs an N x C x H x W feature map: CAM methods cannot explain it")
    spatial = [(name, m) for name, m, s in maps if min(s[2:]) >= 2]  # a global pool's 1 x 1 output is no map
    if not spatial:
        raise CamError(f"{model_name}: its feature maps shrink to 1x1 at {x.shape[-1]} px: too coarse to show where "
                       "it looks; train at a larger model.img_size")
    return spatial[-1]


class _WithMeta(nn.Module):
    """A metadata-fused model as a function of the image alone (the CAM libraries call model(x))."""

    def __init__(self, model: nn.Module, meta: torch.Tensor):
        super().__init__()
        self.model, self.meta = model, meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.meta)


# --------------------------------------------------------------------------------------------- the maps
@dataclass
class CamResult:
    spec: Competition
    rows: pd.DataFrame
    """The OOF rows explained (id, fold, target, loss, predicted, p), in the order of the picture."""
    images: list[np.ndarray]
    """H x W x 3 uint8: each image as its fold's model saw it."""
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    """method -> N x H x W maps in [0, 1] (each scaled to its own maximum by pytorch-grad-cam)."""
    explained: list[str] = field(default_factory=list)
    """The class each map explains."""
    layers: dict[int, str] = field(default_factory=dict)
    """fold -> the layer explained."""


def default_ids(spec: Competition, oof: pd.DataFrame, n_errors: int = 6, n_correct: int = 2) -> list[str]:
    """The worst errors (taking the groups in turn) and a few confident correct images."""
    groups = [g.rows[spec.id_col].astype(str).tolist() for g in worst_errors(spec, oof, n_errors)]
    errors = [i for turn in range(n_errors) for g in groups if turn < len(g) for i in [g[turn]]][:n_errors]
    return errors + confident_correct(spec, oof, n_correct)[spec.id_col].astype(str).tolist()


def _targets(ckpt, rows: pd.DataFrame) -> tuple[list, list[str]]:
    """What each map explains: a binary model's positive logit, a finer model's scored class, else the class the
    model predicted for the row."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if ckpt.task == "binary":
        return [ClassifierOutputTarget(0)] * len(rows), [f"{ckpt.classes[0]}=1"] * len(rows)
    if ckpt.scored is not None:
        j = ckpt.classes.index(ckpt.scored)
        return [ClassifierOutputTarget(j)] * len(rows), [ckpt.scored] * len(rows)
    picked = rows["predicted"].astype(int).tolist()
    return [ClassifierOutputTarget(j) for j in picked], [ckpt.classes[j] for j in picked]


def _fold_maps(images: RunImages, k: int, rows: pd.DataFrame, methods: Sequence[str], device: torch.device,
               bar: Progress, layer: str | None) -> tuple[list[np.ndarray], dict[str, np.ndarray], list[str], str]:
    """Fold ``k``'s model on its own out-of-fold ``rows``: their pixels, each method's maps, what they explain."""
    lib = _library()
    model, ckpt, rt = load_fold_model(images.run.best_path(k), device)
    ds = images.dataset(rows[images.spec.id_col].tolist(), ckpt)
    batch = {key: torch.stack([ds[i][key] for i in range(len(ds))]) for key in ds[0]}
    x, meta = rt.inputs(batch)
    layer_name, layer = target_layer(model, x, f"fold {k}'s {ckpt.model.name}", layer)
    net = _WithMeta(model, meta) if meta is not None else model
    targets, explained = _targets(ckpt, rows)
    maps: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for method in methods:
        cam = getattr(lib, CAM_METHODS.get(method))(model=net, target_layers=[layer])
        try:
            for s in range(0, len(x), CHUNK):
                maps[method].append(cam(input_tensor=x[s:s + CHUNK], targets=targets[s:s + CHUNK]))
                bar.update(len(x[s:s + CHUNK]))
        except (ValueError, RuntimeError, IndexError, TypeError) as e:  # a layer whose output is no feature map, ...
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CamError(f"{method} cannot explain layer '{layer_name}' of fold {k}'s {ckpt.model.name}: "
                           f"{detail}") from None
        finally:
            cam.activations_and_grads.release()
    pixels = list(batch["image"].permute(0, 2, 3, 1).numpy())
    return pixels, {m: np.concatenate(v) for m, v in maps.items()}, explained, layer_name


def explain(run_dir: str | Path, ids: Sequence[str] | None = None, methods: Sequence[str] = DEFAULT_METHODS,
            n_errors: int = 6, n_correct: int = 2, data_dir: str | Path | None = None,
            device: str = "auto", layer: str | None = None) -> CamResult:
    """CAMs of ``ids`` (default: :func:`default_ids`) with ``methods``, each by its own fold's model, at the
    backbone's last feature map or its module named ``layer``."""
    methods = [CAM_METHODS.canonical(m) for m in methods]
    if not methods:
        raise KitError(f"--methods names no method; known: {', '.join(CAM_METHODS.names())}")
    _library()
    run = RunDir.open(run_dir)
    spec, oof = run.competition(), run.oof()
    ids = [str(i) for i in ids] if ids else default_ids(spec, oof, n_errors, n_correct)
    rows = require_ids(scored_rows(spec, oof), spec.id_col, ids, run.oof_path)
    missing = sorted({int(k) for k in rows["fold"] if not run.best_path(int(k)).is_file()})
    if missing:
        raise KitError(f"{run.best_path(missing[0])} is missing: its out-of-fold images have no model to explain them")
    images, dev = RunImages(run, data_dir), resolve_device(device)
    result = CamResult(spec, rows, [None] * len(rows), {m: None for m in methods}, [""] * len(rows))
    with Progress(len(rows) * len(methods), f"{run.name}: CAMs ({', '.join(methods)})", unit="map") as bar:
        for k, part in rows.groupby("fold", sort=True):
            pixels, maps, explained, result.layers[int(k)] = _fold_maps(images, int(k), part, methods, dev, bar, layer)
            for j, i in enumerate(part.index):
                result.images[i], result.explained[i] = pixels[j], explained[j]
            for m in methods:
                if result.maps[m] is None:
                    result.maps[m] = np.zeros((len(rows), *maps[m].shape[1:]), dtype=np.float32)
                result.maps[m][part.index] = maps[m]
    return result


def cam_mass(maps: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """The fraction of each map's total inside ``box`` (rows, columns)."""
    total = maps.reshape(len(maps), -1).sum(axis=1)
    inside = maps[:, box[0], box[1]].reshape(len(maps), -1).sum(axis=1)
    return inside / np.maximum(total, 1e-12)


def write_cam_grid(result: CamResult, out_dir: str | Path, name: str = "cam") -> Grid:
    """``cam.png`` in ``out_dir``: one row per image, the image then each method's overlay."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    spec, rows = result.spec, []
    for i, (_, row) in enumerate(result.rows.iterrows()):
        image = result.images[i]
        tiles = [Tile(image, caption(spec, row), str(row[spec.id_col]))]
        for method, maps in result.maps.items():
            overlay = show_cam_on_image(image.astype(np.float32) / 255, maps[i], use_rgb=True, image_weight=0.55)
            # an empty map: nothing in the image raises the class's score (Grad-CAM keeps positive evidence only)
            where = "no evidence found" if maps[i].max() <= 0 else f"layer {result.layers[int(row['fold'])]}"
            tiles.append(Tile(overlay, f"{method}\nexplains {result.explained[i]}\n{where}", str(row[spec.id_col])))
        rows.append(tiles)
    title = f"{spec.name}: class-activation maps, each image by its own fold's model (never one trained on it)"
    return write_grid(rows, Path(out_dir) / f"{name}.png", title)
