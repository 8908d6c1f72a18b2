"""kit.tta: the dihedral views, the merge modes, and TTA's batching, metadata, shapes and memory format."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from kit.errors import ConfigError
from kit.tta import (
    TTA,
    VIEW_SETS,
    default_views_per_forward,
    get_merge,
    get_view,
    get_view_set,
    list_merges,
    list_views,
)

ALL8 = get_view_set("8")


def grid(h: int = 5, w: int = 5, n: int = 2, c: int = 3) -> torch.Tensor:
    """A batch whose every value is distinct, so any two different pixel permutations give different tensors."""
    return torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w)


def manual_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 dihedral views written out independently of kit's registry."""
    t = x.transpose(2, 3)
    return [x, x.flip(3), x.flip(2), x.flip(2).flip(3), t, t.flip(3), t.flip(2), t.flip(2).flip(3)]


def conv_net(out: int = 1, seed: int = 0) -> nn.Module:
    """A tiny CNN that is not flip/rotation invariant (3x3 convs, then a linear layer over positions)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2, padding=1),
        nn.Flatten(), nn.LazyLinear(out),
    )


def ready(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Materialise lazy layers, give BatchNorm non-trivial statistics, switch to eval."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


class Recorder(nn.Module):
    """Records what each forward receives; returns per-image logits from the images and, if given, the metadata."""

    def __init__(self, out: int = 1):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1.0, 1.0, out))
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append({
            "shape": tuple(x.shape), "ptr": x.data_ptr(), "meta": None if meta is None else meta.clone(),
            "channels_last": x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
            "inference": torch.is_inference_mode_enabled(),
        })
        z = x[:, 0, 0, :1] * 0.01  # the top-left pixel: differs between views
        if meta is not None:
            z = z + meta.sum(dim=1, keepdim=True)
        return z * self.w


# ------------------------------------------------------------------------------------------------ views
@pytest.mark.parametrize("name", ALL8)
def test_each_view_is_a_bijection_with_inverse_in_the_group(name):
    x = grid()
    y = get_view(name)(x)
    assert torch.equal(y.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)  # a permutation of pixels
    inverses = [m for m in ALL8 if torch.equal(get_view(m)(y), x)]
    assert len(inverses) == 1


def test_the_eight_views_are_distinct_and_closed_under_composition():
    x = grid()
    images = {name: get_view(name)(x) for name in ALL8}
    assert len({tuple(v.flatten().tolist()) for v in images.values()}) == 8
    for f, g in itertools.product(ALL8, repeat=2):
        composed = get_view(f)(get_view(g)(x))
        assert sum(torch.equal(composed, v) for v in images.values()) == 1, (f, g)


def test_views_match_their_geometric_definitions():
    x = grid(h=3, w=4, n=1, c=1)[0, 0]
    h, w = x.shape
    expect = {
        "identity": lambda i, j: x[i, j],
        "hflip": lambda i, j: x[i, w - 1 - j],
        "vflip": lambda i, j: x[h - 1 - i, j],
        "rot180": lambda i, j: x[h - 1 - i, w - 1 - j],
        "rot90": lambda i, j: x[j, w - 1 - i],  # counter-clockwise
        "rot270": lambda i, j: x[h - 1 - j, i],
        "transpose": lambda i, j: x[j, i],
        "transverse": lambda i, j: x[h - 1 - j, w - 1 - i],
    }
    for name, at in expect.items():
        y = get_view(name)(x[None, None])[0, 0]
        assert all(y[i, j] == at(i, j) for i in range(y.shape[0]) for j in range(y.shape[1])), name


def test_view_sets_are_nested_subsets_of_the_dihedral_group():
    assert list(VIEW_SETS) == ["1", "2", "4", "8"]
    assert sorted(list_views()) == sorted(ALL8)
    for a, b in [("1", "2"), ("2", "4"), ("4", "8")]:
        assert set(get_view_set(a)) < set(get_view_set(b))
    assert get_view_set(4) == get_view_set("4")


@pytest.mark.parametrize("bad", [lambda: get_view_set("3"), lambda: TTA(views="16"), lambda: get_view("hflp"),
                                 lambda: TTA(views=("identity", "rot45")), lambda: get_merge("median"),
                                 lambda: TTA(merge="avg")])
def test_unknown_names_raise_config_error_listing_known_ones(bad):
    with pytest.raises(ConfigError, match="Known: "):
        bad()


def test_bad_config_values_raise():
    with pytest.raises(ConfigError, match="views_per_forward"):
        TTA(views_per_forward=0)
    with pytest.raises(ConfigError, match="task"):
        TTA(task="regression")
    with pytest.raises(ConfigError, match="at least one view"):
        TTA(views=())


# ----------------------------------------------------------------------------------------------- merges
def test_merge_modes_match_their_definitions_binary():
    p = torch.tensor([0.2, 0.8])
    logits = torch.logit(p).reshape(2, 1, 1)  # two views, one image, one output
    expect = {"mean": 0.5, "gmean": 0.4, "max": 0.8, "logits": 0.5}  # gmean = sqrt(0.2 * 0.8)
    assert sorted(list_merges()) == sorted(expect)
    for name, value in expect.items():
        assert get_merge(name)(logits, "binary").item() == pytest.approx(value, abs=1e-6), name


def test_merge_modes_match_their_definitions_multiclass():
    logits = torch.tensor([[[0.0, 1.0, 2.0]], [[2.0, 0.0, -1.0]]])  # V=2, N=1, C=3
    p = torch.softmax(logits, dim=-1)
    gm = torch.sqrt(p[0] * p[1])
    mx = torch.maximum(p[0], p[1])
    expect = {
        "mean": (p[0] + p[1]) / 2,
        "gmean": gm / gm.sum(),
        "max": mx / mx.sum(),
        "logits": torch.softmax((logits[0] + logits[1]) / 2, dim=-1),
    }
    for name, value in expect.items():
        torch.testing.assert_close(get_merge(name)(logits, "multiclass"), value, msg=name)


def test_gmean_stays_finite_for_extreme_logits():
    logits = torch.tensor([-200.0, 0.0]).reshape(2, 1, 1)
    out = get_merge("gmean")(logits, "binary").item()
    assert math.isfinite(out) and out == pytest.approx(math.exp((-200.0 + math.log(0.5)) / 2), rel=1e-5)


@pytest.mark.parametrize("merge", ["mean", "gmean", "max", "logits"])
def test_tta_merges_the_known_logits_of_each_view(merge):
    """Recorder's logit is 0.01 x the top-left pixel: under the 8 views, each corner of the image twice."""
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, 0, 0], x[0, 0, 0, 3], x[0, 0, 3, 0], x[0, 0, 3, 3] = 100.0, 200.0, -300.0, 50.0
    corners = torch.tensor([1.0, 2.0, -3.0, 0.5]).repeat(2).reshape(8, 1, 1)
    model = Recorder(out=1)
    with torch.no_grad():
        model.w.fill_(1.0)
    got = TTA(views="8", merge=merge)(model, x)
    torch.testing.assert_close(got, get_merge(merge)(corners, "binary").squeeze(-1))


# ------------------------------------------------------------------------------------------------- TTA
def test_invariant_model_gives_the_same_output_for_1_and_8_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.randn(4, 3, 8, 8)
    one = TTA(views="1", task="multiclass")(model, x)
    for vpf in (1, 8):
        torch.testing.assert_close(TTA(views="8", task="multiclass", views_per_forward=vpf)(model, x), one)


@pytest.mark.parametrize("h,w", [(8, 8), (8, 6)])
def test_non_invariant_model_gives_the_exact_mean_of_eight_forwards(h, w):
    x = torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(1))
    # Non-square images: the transposed views have another shape, so the net must not depend on it (pooling).
    model = conv_net() if h == w else nn.Sequential(*list(conv_net())[:-2], nn.AdaptiveAvgPool2d((2, 1)),
                                                    nn.Flatten(), nn.Linear(4, 1))
    model = ready(model, x)
    with torch.no_grad():
        manual = torch.stack([torch.sigmoid(model(v)).squeeze(1) for v in manual_views(x)]).mean(0)
        plain = torch.sigmoid(model(x)).squeeze(1)
    assert (manual - plain).abs().max() > 1e-3  # the model really is not invariant: the test can tell
    for vpf in (1, 3, 8):
        torch.testing.assert_close(TTA(views="8", views_per_forward=vpf)(model, x), manual, rtol=1e-5, atol=1e-6)


def test_chunked_and_unchunked_give_the_same_result_multiclass():
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    model = ready(conv_net(out=4), x)
    ref = TTA(views="8", merge="gmean", task="multiclass", views_per_forward=8)(model, x)
    for vpf in (1, 2, 3, 5):
        got = TTA(views="8", merge="gmean", task="multiclass", views_per_forward=vpf)(model, x)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("vpf", [1, 3, 8])
def test_metadata_reaches_every_view_unchanged(vpf):
    x = torch.randn(4, 3, 6, 6)
    meta = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.5], [-1.0, 1.0]])
    model = Recorder(out=1)
    TTA(views="8", views_per_forward=vpf)(model, x, meta)
    assert sum(c["shape"][0] for c in model.calls) == 8 * len(x)
    for call in model.calls:
        k = call["shape"][0] // len(x)
        assert torch.equal(call["meta"], meta.repeat(k, 1))


def test_metadata_changes_the_output():
    """The metadata is really used: the same images with other metadata give other probabilities."""
    x = torch.randn(2, 3, 6, 6)
    meta = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    a = TTA(views="8")(Recorder(), x, meta)
    b = TTA(views="8")(Recorder(), x, meta + 1.0)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("merge", ["mean", "gmean", "max", "logits"])
def test_output_shapes_and_rows_summing_to_one(merge):
    x = torch.randn(3, 3, 6, 6)
    binary_n1 = TTA(views="4", merge=merge)(Recorder(out=1), x)
    binary_n = TTA(views="4", merge=merge)(lambda b: b[:, 0, 0, 0], x)  # a model that returns shape N
    multi = TTA(views="4", merge=merge, task="multiclass")(Recorder(out=4), x)
    assert binary_n1.shape == (3,) and binary_n.shape == (3,)
    assert ((binary_n1 > 0) & (binary_n1 < 1)).all()
    assert multi.shape == (3, 4)
    torch.testing.assert_close(multi.sum(dim=1), torch.ones(3))


def test_output_that_does_not_fit_the_task_raises():
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(ConfigError, match="binary"):
        TTA(views="2")(Recorder(out=3), x)
    with pytest.raises(ConfigError, match="multiclass"):
        TTA(views="2", task="multiclass")(Recorder(out=1), x)
    with pytest.raises(ConfigError, match="N x C x H x W"):
        TTA()(Recorder(), x[0])


def test_runs_under_inference_mode_and_reuses_the_input_for_identity():
    x = torch.randn(2, 3, 6, 6)
    model = Recorder()
    TTA(views="2", views_per_forward=1)(model, x)
    assert all(c["inference"] for c in model.calls)
    assert model.calls[0]["ptr"] == x.data_ptr()  # identity view: the input itself, no copy
    assert model.calls[1]["ptr"] != x.data_ptr()


@pytest.mark.parametrize("vpf", [1, 8])
def test_channels_last_input_stays_channels_last_for_every_view(vpf):
    x = torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    model = Recorder()
    TTA(views="8", views_per_forward=vpf)(model, x)
    assert model.calls and all(c["channels_last"] for c in model.calls)
    nchw = Recorder()
    TTA(views="8", views_per_forward=vpf)(nchw, x.contiguous())
    assert not any(c["channels_last"] for c in nchw.calls)


def test_default_views_per_forward_one_on_cpu_all_on_cuda():
    assert default_views_per_forward(torch.device("cpu"), 8) == 1
    assert default_views_per_forward(torch.device("cuda", 0), 8) == 8
    model = Recorder()
    TTA(views="8")(model, torch.randn(2, 3, 6, 6))
    assert [c["shape"][0] for c in model.calls] == [2] * 8  # CPU model: one view per forward
