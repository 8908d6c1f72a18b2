"""Contract test over every entry of every registry in ``kit.registry.REGISTRIES``, and the helper itself.

Each kind of registry has one check below; a registry without one fails ``test_every_kind_has_a_check``, so a new
registry (or a renamed one) cannot slip past this file. Everything runs on the CPU with tiny inputs.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from kit.errors import ConfigError
from kit.registry import REGISTRIES, Registry

# Every kit module that defines a registry: importing them fills REGISTRIES.
MODULES = ["kit.competitions", "kit.models", "kit.transforms", "kit.losses", "kit.metrics", "kit.tta",
           "kit.submission", "kit.ensemble", "kit.tune", "kit.stack.models", "kit.diagnostics.cam"]
for _module in MODULES:
    importlib.import_module(_module)

ENTRIES = [(kind, name) for kind, registry in REGISTRIES.items() for name in registry.names()]
TASKS = ("binary", "multiclass")


def _probs(n: int, c: int, seed: int = 0) -> np.ndarray:
    """Rows of class probabilities that sum to 1."""
    x = np.random.default_rng(seed).random((n, c)) + 0.05
    return x / x.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------- checks
def check_competition(name: str, spec) -> None:
    from kit.competitions import get_competition
    from kit.metrics import METRICS
    from kit.submission import FORMATS

    assert spec.name == name and get_competition(name) is spec
    assert all(get_competition(alias) is spec for alias in spec.aliases)
    assert spec.metric in METRICS and METRICS.get(spec.metric).task == spec.task
    assert spec.task in FORMATS
    assert len(set(spec.classes)) == len(spec.classes) > 0
    if spec.is_binary:
        assert spec.num_outputs == 1 and spec.submission_columns == (spec.id_col, spec.classes[0])
    else:
        assert spec.num_outputs == len(spec.classes) >= 3
        assert spec.submission_columns == (spec.id_col, *spec.classes)


def check_model(name: str, entry) -> None:
    import timm

    from kit.models import build_model, check_input_size

    assert callable(entry) and timm.is_model(name)  # kit's models are timm models too
    size = 48  # the smallest side the classic CNNs take is 46
    check_input_size(name, size)
    x = torch.rand(2, 3, size, size)
    for outputs in (1, 3):
        model = build_model(name, outputs, img_size=size).eval()
        with torch.no_grad():
            assert model(x).shape == (2, outputs)


def check_augmentation_preset(name: str, entry) -> None:
    import albumentations as A

    from kit.transforms import build_train_transform, check_preset

    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for strength in (0.0, 1.0, 2.0):
        check_preset(name, strength)
        out = A.Compose(entry(64, strength), seed=0)(image=image)["image"]
        assert out.shape == image.shape and out.dtype == np.uint8, f"strength {strength}"
        tensor = build_train_transform(name, 64, strength, native_size=96, seed=1)(image)  # resized, then the preset
        assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.uint8


def _loss_inputs(task: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, int]:
    g = torch.Generator().manual_seed(0)
    if task == "binary":
        target = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
        return torch.randn(8, generator=g, requires_grad=True), target.float(), target.numpy(), 2
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    return torch.randn(8, 4, generator=g, requires_grad=True), target, target.numpy(), 4


def check_loss(name: str, entry) -> None:
    from kit.losses import build_loss

    assert entry.tasks and set(entry.tasks) <= set(TASKS)
    for task in TASKS:
        logits, target, targets, n_classes = _loss_inputs(task)
        if task not in entry.tasks:
            with pytest.raises(ConfigError, match=f"train.loss={name} is for"):
                build_loss(name, n_classes, targets, weighted=False)
            continue
        for weighted in (False, True):
            loss = build_loss(name, n_classes, targets, weighted, gamma=2.0, label_smoothing=0.1)(logits, target)
            assert loss.dim() == 0 and torch.isfinite(loss), f"{task}, weighted={weighted}"
            (grad,) = torch.autograd.grad(loss, logits)
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0, f"{task}, weighted={weighted}"


def check_metric(name: str, metric) -> None:
    assert metric.task in TASKS
    if metric.task == "binary":
        y = np.array([0, 1] * 6)
        perfect, reversed_, noisy = y * 0.9 + 0.05, 1 - y * 0.9 - 0.05, np.linspace(0.1, 0.9, len(y))
    else:
        y = np.arange(12) % 4
        perfect = np.full((12, 4), 0.02)
        perfect[np.arange(12), y] = 0.94
        reversed_, noisy = np.roll(perfect, 1, axis=1), _probs(12, 4)
    best = metric(y, perfect)
    assert best == pytest.approx(metric.best)
    assert metric(y, reversed_) < best and metric(y, noisy) < best


def check_tta_view(name: str, view) -> None:
    assert view.name == name
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    out = view(x)
    assert out.shape == ((2, 3, 7, 5) if view.swaps_hw else x.shape)
    assert torch.equal(out.flatten(1).sort().values, x.flatten(1).sort().values)  # a permutation of the pixels
    square = torch.rand(2, 3, 6, 6)
    assert view(square).shape == square.shape


def check_tta_view_set(name: str, views) -> None:
    from kit.tta import VIEWS, get_view_set

    assert views and len(set(views)) == len(views)
    assert all(v in VIEWS for v in views), views
    assert get_view_set(name) == views


def check_tta_merge(name: str, merge) -> None:
    g = torch.Generator().manual_seed(0)
    for task, c in (("binary", 1), ("multiclass", 4)):
        logits = torch.randn(3, 6, c, generator=g) * 4
        probs = merge(logits, task)
        assert probs.shape == (6, c) and torch.isfinite(probs).all(), task
        assert ((probs >= 0) & (probs <= 1)).all(), task
        if task == "multiclass":
            torch.testing.assert_close(probs.sum(dim=-1), torch.ones(6))
        # one view: every merge is the plain activation
        single = torch.sigmoid(logits[0]) if task == "binary" else torch.softmax(logits[0], dim=-1)
        torch.testing.assert_close(merge(logits[:1], task), single)


def check_submission_format(name: str, fmt) -> None:
    from kit.competitions import list_competitions

    specs = [s for s in list_competitions() if s.task == name]
    assert fmt.task == name and specs, f"no competition has task {name}"
    for spec in specs:
        preds = np.linspace(0.1, 0.9, 5) if spec.is_binary else _probs(5, len(spec.classes)) * 3
        values = fmt.values(spec, preds)
        assert values.shape == (5, len(spec.submission_columns) - 1)
        if not spec.is_binary:
            np.testing.assert_allclose(values.sum(axis=1), 1.0)


def check_blend(name: str, blend) -> None:
    from kit.metrics import get_metric

    assert isinstance(blend.fitted, bool)
    # a member that is its own percentile rank (distinct values k/n), so that even the rank blend returns it
    member = np.random.default_rng(0).permutation(np.arange(1, 13) / 12)
    probs = _probs(12, 4)
    for task, pred, y, metric in (("binary", member, (member > 0.5).astype(int), "auc"),
                                  ("multiclass", probs, probs.argmax(axis=1), "balanced_accuracy")):
        preds = [pred, pred.copy(), pred.copy()]
        w = np.asarray(blend.weights(preds, y, get_metric(metric)))
        assert w.shape == (3,) and (w >= 0).all() and w.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(blend.combine(preds, w, task), pred, rtol=1e-6, atol=1e-9, err_msg=task)


def check_pruner(name: str, entry) -> None:
    import optuna

    from kit.tune import PrunerOptions

    assert isinstance(entry(PrunerOptions()), optuna.pruners.BasePruner)


def check_sampler(name: str, entry) -> None:
    import optuna

    assert isinstance(entry(0), optuna.samplers.BaseSampler)


def check_cam_method(name: str, class_name: str) -> None:
    """A CAM method names a class of pytorch-grad-cam that computes one map per image."""
    import pytorch_grad_cam
    from pytorch_grad_cam.base_cam import BaseCAM

    cls = getattr(pytorch_grad_cam, class_name)
    assert issubclass(cls, BaseCAM), (name, class_name)


def check_gbdt(name: str, spec) -> None:
    """A GBDT spec is whole: it builds, fits, predicts probabilities, searches its space, saves in its own format
    and reads that back to the same predictions, and the offline kernel checks its module."""
    import tempfile

    import optuna

    from kit.kernel import render_script
    from kit.stack.models import GBDTSpec, build_model, importances, load_model

    assert isinstance(spec, GBDTSpec) and spec.name == name and spec.trees in spec.defaults
    X = np.random.default_rng(0).normal(size=(80, 4))
    y = (X[:, 0] > 0).astype(int)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    model = build_model(name, spec.space(trial), 0, trees=5).fit(X, y)
    p = model.predict(X)
    assert p.shape == (80,) and ((p >= 0) & (p <= 1)).all()
    assert np.isclose(importances(model).sum(), 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"model{spec.suffix}"
        model.save(path)
        data = path.read_bytes()
    assert data.startswith(spec.magic) and spec.library().__name__ == spec.module
    assert np.allclose(load_model(name, data, path)(X), p, atol=1e-6)
    script = render_script("isic-2024-challenge", "me/wheels", "me/weights")
    assert f"{name!r}: {spec.module!r}" in script


def check_batch_augmentation(name: str, entry) -> None:
    from kit.transforms import AUG_PRESETS

    assert name in AUG_PRESETS, f"on-device preset {name} has no CPU preset of that name to match"
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    for strength in (0.0, 1.0, 2.0):
        outs = [entry(strength)(x.clone(), torch.Generator().manual_seed(0)) for _ in range(2)]
        assert outs[0].dtype == torch.uint8 and outs[0].shape == x.shape
        assert torch.equal(outs[0], outs[1])  # the generator alone decides


CHECKS = {
    "on-device augmentation preset": check_batch_augmentation,
    "competition": check_competition,
    "model": check_model,
    "augmentation preset": check_augmentation_preset,
    "loss": check_loss,
    "metric": check_metric,
    "TTA view": check_tta_view,
    "TTA view set": check_tta_view_set,
    "TTA merge": check_tta_merge,
    "submission format": check_submission_format,
    "blend": check_blend,
    "pruner": check_pruner,
    "sampler": check_sampler,
    "gbdt": check_gbdt,
    "CAM method": check_cam_method,
}


# ----------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind, name", ENTRIES, ids=[f"{k}:{n}".replace(" ", "_") for k, n in ENTRIES])
def test_registered_entry_keeps_its_contract(kind: str, name: str):
    CHECKS[kind](name, REGISTRIES[kind].get(name))


def test_every_kind_has_a_check():
    assert not set(REGISTRIES) - set(CHECKS), "add a check for the new registry kind to CHECKS"
    assert not set(CHECKS) - set(REGISTRIES), "a checked registry kind is gone (renamed?) from REGISTRIES"
    assert all(len(registry) for registry in REGISTRIES.values())


@pytest.fixture
def widgets():
    """A throwaway registry, taken out of REGISTRIES again so that it does not count as a real one."""
    registry = Registry("test widget")
    try:
        yield registry
    finally:
        REGISTRIES.pop("test widget", None)


def test_registry_lookup_aliases_and_order(widgets):
    widgets.add("sprocket", 1, aliases=("spr",))

    @widgets.register("gear")
    def gear():
        return 2

    assert widgets.get("spr") == 1 and widgets.canonical("spr") == "sprocket" and widgets.get("gear") is gear
    assert widgets.names() == ["sprocket", "gear"] == list(widgets)
    assert dict(widgets.items()) == {"sprocket": 1, "gear": gear}
    assert "spr" in widgets and "cog" not in widgets and len(widgets) == 2
    assert REGISTRIES["test widget"] is widgets


def test_registry_refuses_a_name_or_alias_twice(widgets):
    widgets.add("sprocket", 1, aliases=("spr",))
    for name, aliases in (("sprocket", ()), ("spr", ()), ("gear", ("sprocket",))):
        with pytest.raises(ConfigError, match="test widget '(sprocket|spr)' is registered twice"):
            widgets.add(name, 2, aliases)
    assert widgets.names() == ["sprocket"]
    with pytest.raises(ConfigError, match="a registry of kind 'test widget' exists already"):
        Registry("test widget")


def test_unknown_name_names_close_matches_and_the_known_ones(widgets):
    for name in ("sprocket", "gear", "flywheel"):
        widgets.add(name, name)
    with pytest.raises(ConfigError) as e:
        widgets.get("sprockt")
    assert str(e.value) == ("unknown test widget 'sprockt'. Did you mean 'sprocket'? "
                            "Known: sprocket, gear, flywheel")
    with pytest.raises(ConfigError, match=r"^unknown test widget 'zzz'\. Known: sprocket, gear, flywheel$"):
        widgets.canonical("zzz")
