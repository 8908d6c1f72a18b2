"""The training recipes of issue 22: mixup / CutMix (timm's Mixup with the metadata rows mixed alike), gradient
accumulation, and weight averaging (SWA, top-k) into a normal best.pt."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
from torch import nn

from kit.averaging import EpochAverage, TopK, recompute_batchnorm
from kit.checkpoint import load_checkpoint
from kit.cli import main
from kit.config import load_config
from kit.errors import ConfigError
from kit.losses import build_loss
from kit.metrics import auc
from kit.mixing import BatchMix
from kit.runtime import Runtime
from kit.train import train_folds, train_one_epoch

CPU = torch.device("cpu")
HCD, ISIC = "histopathologic-cancer-detection", "isic-2018-task3"
TINY = ["model.name=test_resnet", "model.pretrained=false", "model.img_size=32", "n_folds=2", "train.batch_size=8",
        "train.warmup_epochs=0", "train.device=cpu", "aug.preset=none"]


# ------------------------------------------------------------------------------------------------- mixup / CutMix
def _row_images(n: int, side: int = 16) -> torch.Tensor:
    """Image i is one-hot in channel i: after mixing, channel j's mean over the pixels of image i is exactly the
    share of image j in it, for mixup (a blend) and CutMix (a pasted box) alike."""
    return torch.eye(n).view(n, n, 1, 1).repeat(1, 1, side, side)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("alphas", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)], ids=["mixup", "cutmix", "both"])
def test_mixed_targets_sum_to_one_and_follow_the_mixed_images(mode, alphas):
    torch.manual_seed(0)
    n, n_classes = 8, 3
    y, meta = torch.randint(0, n_classes, (n,)), torch.randn(n, 5)
    mix = BatchMix(n_classes, binary=False, mixup_alpha=alphas[0], cutmix_alpha=alphas[1], mode=mode)
    mixed, mixed_meta, soft = mix(_row_images(n), meta.clone(), y.clone())
    shares = mixed.mean(dim=(2, 3))  # (n, n): how much of each original image every mixed image holds
    assert not torch.allclose(shares, torch.eye(n)), "nothing was mixed"
    torch.testing.assert_close(soft.sum(1), torch.ones(n))
    torch.testing.assert_close(soft, shares @ nn.functional.one_hot(y, n_classes).float())
    torch.testing.assert_close(mixed_meta, shares @ meta)  # the metadata rows mix with their images


def test_binary_targets_mix_into_probabilities_and_an_odd_row_stays():
    torch.manual_seed(1)
    n = 7
    y = torch.tensor([1, 0, 0, 1, 1, 0, 1]).float()
    mixed, meta, soft = BatchMix(2, binary=True, mixup_alpha=1.0)(_row_images(n), None, y.clone())
    shares = mixed.mean(dim=(2, 3))
    assert meta is None and soft.shape == (n,) and ((soft >= 0) & (soft <= 1)).all()
    torch.testing.assert_close(soft, shares @ y)
    assert shares[-1, -1] == 1 and soft[-1] == y[-1]  # timm mixes mirrored pairs: the odd row is left alone


@pytest.mark.parametrize("loss", ["ce", "focal"])
def test_soft_targets_give_the_hard_loss_for_one_hot_rows_with_class_weights(loss):
    """A mixed batch with lam = 1 must train exactly like a plain one (class weights, focal term)."""
    torch.manual_seed(2)
    targets = torch.tensor([0, 1, 2, 2, 1, 0, 0, 0])
    fn = build_loss(loss, 3, targets.numpy(), weighted=True)
    logits = torch.randn(8, 3)
    hard, soft = fn(logits, targets), fn(logits, nn.functional.one_hot(targets, 3).float())
    if loss == "ce":  # torch's weighted mean divides by the targets' weights for indices, by n for probabilities
        hard = hard * fn.weight[targets].sum() / len(targets)
    torch.testing.assert_close(hard, soft)


def test_mixup_trains_multiclass_with_metadata_weights_smoothing_and_stops_for_the_last_epoch(demo_data, tmp_path,
                                                                                               monkeypatch):
    calls: list[int] = []
    real_call = BatchMix.__call__
    monkeypatch.setattr(BatchMix, "__call__", lambda self, *a: calls.append(1) or real_call(self, *a))
    seen: list[int] = []
    cfg = load_config(ISIC, overrides=TINY + [
        "train.epochs=2", "model.use_metadata=true", "train.class_weights=true", "train.label_smoothing=0.1",
        "train.mixup=0.4", "train.cutmix=1.0", "train.mixup_off_epochs=1"])
    train_folds(cfg, demo_data(ISIC, n=60, size=48), tmp_path / "run", folds=[0],
                on_epoch=lambda k, epoch, metric: seen.append(len(calls)))
    assert seen[0] > 0 and seen[1] == seen[0]  # mixed, then plain
    history = pd.read_csv(tmp_path / "run" / "fold0" / "history.csv")
    assert history["train_loss"].notna().all() and len(history) == 2


CONFIG_ERRORS = [
    (["train.mixup_off_epochs=1"], "train.mixup_off_epochs=1 is not valid without mixing"),
    (["train.mixup=0.4", "train.mixup_off_epochs=2"], "it must be less than train.epochs (2)"),
    (["train.swa_epochs=1"], "train.swa_epochs=1 is not valid; it averages 2 to train.epochs (2)"),
    (["train.top_k=3"], "train.top_k=3 is not valid; it averages 2 to train.epochs (2)"),
    (["train.top_k=2", "train.swa_epochs=2"], "two ways to average"),
    (["train.swa_epochs=2", "train.early_stopping=1"], "set train.early_stopping=0, or use train.top_k"),
    (["train.accum_steps=0"], "train.accum_steps=0 is not valid; it must be >= 1"),
]


@pytest.mark.parametrize("pairs, expected", CONFIG_ERRORS, ids=[" ".join(p) for p, _ in CONFIG_ERRORS])
def test_recipe_keys_that_cannot_train_are_one_line(pairs, expected):
    with pytest.raises(ConfigError, match=f"^config key.*{re.escape(expected)}"):
        load_config(HCD, overrides=TINY + ["train.epochs=2", *pairs])


# ------------------------------------------------------------------------------------------ gradient accumulation
class _Recorder:
    """Stands in for the scheduler and the EMA: the global steps they were driven with."""

    def __init__(self):
        self.steps: list[int] = []

    def step_update(self, step: int) -> None:
        self.steps.append(step)

    def update(self, model: nn.Module, step: int) -> None:
        self.steps.append(step)


def _accumulated(batch_rows: list[int], accum_steps: int, epoch: int = 0) -> tuple[torch.Tensor, list, list]:
    """A linear model (no BatchNorm) after one epoch over the same 96 rows cut into ``batch_rows``."""
    torch.manual_seed(0)
    images, targets = torch.randint(0, 256, (96, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 2, (96,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    rt = Runtime.create(CPU, "off", "off", (0.5,) * 3, (0.25,) * 3, binary=True, use_meta=False)
    edges = torch.tensor([0, *batch_rows]).cumsum(0).tolist()
    loader = [{"image": images[a:b], "target": targets[a:b]} for a, b in zip(edges[:-1], edges[1:], strict=True)]
    scheduler, ema = _Recorder(), _Recorder()
    train_one_epoch(model, loader, optimizer, nn.BCEWithLogitsLoss(), rt, scheduler, ema, grad_clip=0.5,
                    epoch=epoch, accum_steps=accum_steps)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), scheduler.steps, ema.steps


def test_four_batches_of_16_accumulate_the_step_of_one_batch_of_64():
    # 96 rows: a full group of 4 x 16, then a short group of 2 x 16 that must step like one batch of 32
    accumulated, sched_steps, ema_steps = _accumulated([16] * 6, accum_steps=4, epoch=1)
    whole, whole_sched, _ = _accumulated([64, 32], accum_steps=1, epoch=1)
    torch.testing.assert_close(accumulated, whole, rtol=1e-5, atol=1e-6)  # clipping saw the whole gradient too
    assert sched_steps == ema_steps == whole_sched == [3, 4]  # per optimizer step: epoch 1 starts at step 2 + 1
    unaccumulated, _, _ = _accumulated([16] * 6, accum_steps=1, epoch=1)
    assert not torch.allclose(unaccumulated, whole, atol=1e-4)  # the comparison can fail


def test_a_run_with_accumulation_and_mixup_resumes_exactly(demo_data, tmp_path):
    """Stopped after epoch 1 of fold 0 (last.pt written), resumed: the same OOF as an uninterrupted run."""
    data = demo_data(HCD, n=40)
    cfg = load_config(HCD, overrides=TINY + ["train.epochs=2", "train.accum_steps=3", "train.mixup=0.4",
                                             "train.cutmix=1.0", "train.ema=true"])
    train_folds(cfg, data, tmp_path / "whole", folds=[0])

    class Stop(Exception):
        pass

    def stop_after_first_epoch(k: int, epoch: int, metric: float) -> None:
        if (k, epoch) == (0, 0):
            raise Stop

    with pytest.raises(Stop):
        train_folds(cfg, data, tmp_path / "stopped", folds=[0], on_epoch=stop_after_first_epoch)
    assert (tmp_path / "stopped" / "fold0" / "last.pt").is_file()
    assert main(["train", "--resume", str(tmp_path / "stopped"), "--no-progress"]) == 0
    a = pd.read_csv(tmp_path / "whole" / "fold0" / "history.csv")
    b = pd.read_csv(tmp_path / "stopped" / "fold0" / "history.csv")
    pd.testing.assert_frame_equal(a.drop(columns="images_per_s"), b.drop(columns="images_per_s"))
    a = pd.read_csv(tmp_path / "whole" / "oof.csv", dtype={"id": str})
    b = pd.read_csv(tmp_path / "stopped" / "oof.csv", dtype={"id": str})
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6)


# ------------------------------------------------------------------------------------------------ weight averaging
def _bn_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(1))


def _snapshots(n: int) -> list[nn.Module]:
    models = [_bn_model(i) for i in range(n)]
    for m in models:
        m(torch.zeros(2, 3, 6, 6))  # materialise the lazy layer
    return models


def test_the_epoch_average_is_the_mean_of_the_weights_and_survives_a_state_round_trip():
    snaps = _snapshots(3)
    avg = EpochAverage(snaps[0])
    for epoch, m in enumerate(snaps, 1):
        avg.add(m, epoch)
    for name, p in avg.model().named_parameters():
        torch.testing.assert_close(p, torch.stack([dict(m.named_parameters())[name] for m in snaps]).mean(0))
    again = EpochAverage(snaps[0])
    again.load_state_dict(torch.load(_saved(avg.state_dict()), weights_only=True))  # what last.pt holds
    assert again.epochs == [1, 2, 3]
    torch.testing.assert_close(again.model().state_dict(), avg.model().state_dict())


def _saved(state: dict):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_top_k_keeps_the_best_epochs_by_metric_then_loss_and_averages_them():
    snaps = _snapshots(4)
    top = TopK(2)
    scores = [(0.70, 0.5), (0.90, 0.4), (0.80, 0.3), (0.90, 0.2)]  # epoch 4 ties epoch 2 on the metric, lower loss
    kept = [top.offer(m, epoch, *score) for epoch, (m, score) in enumerate(zip(snaps, scores, strict=True), 1)]
    assert kept == [True, True, True, True] and top.epochs == [2, 4]
    assert not top.offer(snaps[0], 5, 0.5, 0.1)
    restored = TopK(0)
    restored.load_state_dict(torch.load(_saved(top.state_dict()), weights_only=True))
    model = restored.average(snaps[0])
    for name, p in model.named_parameters():
        expected = (dict(snaps[1].named_parameters())[name] + dict(snaps[3].named_parameters())[name]) / 2
        torch.testing.assert_close(p, expected)


def test_batchnorm_statistics_are_measured_again_through_the_runtime():
    model = _snapshots(1)[0]
    rt = Runtime.create(CPU, "off", "off", (0.5,) * 3, (0.25,) * 3, binary=True, use_meta=False)
    images = torch.full((8, 3, 6, 6), 200, dtype=torch.uint8)
    assert recompute_batchnorm(model, [{"image": images[:4]}, {"image": images[4:]}], rt)
    bn = model[1]
    x = rt.inputs({"image": images})[0]
    expected = model[0](x).mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected.detach(), rtol=1e-4, atol=1e-5)
    assert not recompute_batchnorm(nn.Linear(2, 1), [], rt)


def _state(path) -> dict:
    return load_checkpoint(path).model_state


def test_an_swa_fold_resumes_exactly_and_its_best_pt_predicts_through_kit_predict_and_the_kernel(demo_data, tmp_path,
                                                                                                 capsys):
    from kit.commands.predict import predict_and_submit

    data = demo_data(HCD, n=40)
    cfg = load_config(HCD, overrides=TINY + ["train.epochs=3", "train.swa_epochs=2"])
    train_folds(cfg, data, tmp_path / "whole", folds=[0])
    result = json.loads((tmp_path / "whole" / "fold0" / "result.json").read_text())
    assert result["weights"] == "SWA of epochs 2,3"
    assert "fold 0: best.pt holds the SWA of epochs 2,3" in capsys.readouterr().out
    best, last = _state(tmp_path / "whole" / "fold0" / "best.pt"), _state(tmp_path / "whole" / "fold0" / "last.pt")
    assert not torch.equal(best["fc.weight"], last["fc.weight"])  # not the last epoch's weights: their average

    class Stop(Exception):
        pass

    def stop(k: int, epoch: int, metric: float) -> None:
        if epoch == 1:  # epoch 2 is in the average when the fold stops
            raise Stop

    with pytest.raises(Stop):
        train_folds(cfg, data, tmp_path / "stopped", folds=[0], on_epoch=stop)
    train_folds(cfg, data, tmp_path / "stopped", folds=[0])
    resumed = _state(tmp_path / "stopped" / "fold0" / "best.pt")
    for name, tensor in best.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6)

    # kit predict and the kernel's prediction step read the averaged best.pt as any other
    _, local = predict_and_submit(tmp_path / "whole", data, tta="2", out_dir=tmp_path / "local", report=False)
    assert main(["kernel", "run", "--competition", HCD, "--data", str(data), "--weights", str(tmp_path / "whole"),
                 "--working", str(tmp_path / "kernel"), "--tta", "2", "--device", "cpu"]) == 0
    ours = pd.read_csv(tmp_path / "kernel" / "submission.csv", dtype={"id": str})
    theirs = pd.read_csv(local, dtype={"id": str})
    assert ours["id"].tolist() == theirs["id"].tolist()
    assert ours["label"].to_numpy() == pytest.approx(theirs["label"].to_numpy(), abs=1e-6)


def test_top_k_averages_the_best_epochs_into_best_pt(demo_data, tmp_path):
    cfg = load_config(HCD, overrides=TINY + ["train.epochs=3", "train.top_k=2"])
    train_folds(cfg, demo_data(HCD, n=40), tmp_path / "run", folds=[0])
    result = json.loads((tmp_path / "run" / "fold0" / "result.json").read_text())
    history = pd.read_csv(tmp_path / "run" / "fold0" / "history.csv")
    ranked = history.sort_values(["auc", "val_loss", "epoch"], ascending=[False, True, True])["epoch"].head(2)
    assert result["weights"] == f"top-2 average of epochs {','.join(map(str, sorted(ranked)))}"
    oof = pd.read_csv(tmp_path / "run" / "fold0" / "oof.csv")  # the fold's OOF predictions are the average's
    average = auc(oof["target"], oof["pred"])
    assert load_checkpoint(tmp_path / "run" / "fold0" / "best.pt").metric == pytest.approx(average)
    assert result["best_metric"] == pytest.approx(average)  # result.json scores what best.pt holds
