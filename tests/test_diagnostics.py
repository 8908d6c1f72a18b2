"""kit show batch / errors / cam and kit lr-find (kit/diagnostics/), on the real ISIC 2018 and HCD files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY
from PIL import Image

from kit.cli import main
from kit.competitions import get_competition
from kit.config import load_config
from kit.data.readers import fit_square, open_store

HCD, ISIC = "histopathologic-cancer-detection", "isic-2018-task3"


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: with the cores shared, two threads spin against each other (a tiny step 30x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def reader_pixels(data, competition, ids, size):
    """The images as the competition's reader gives them, resized as the pack resizes."""
    store = open_store(get_competition(competition), data, "train")
    return [fit_square(store.read(i, min_side=size), size) for i in ids]


@pytest.fixture(scope="module")
def hcd_run(shared_data, tmp_path_factory):
    """A tiny run on the 15 real HCD patches (one epoch: plenty of wrong out-of-fold predictions)."""
    from kit.train import train_folds

    cfg = load_config(HCD, overrides=TINY + ["train.epochs=1", "train.batch_size=8"])
    out = tmp_path_factory.mktemp("diag") / "hcd"
    train_folds(cfg, shared_data / HCD, out)
    return out


# ------------------------------------------------------------------------------------------------------ batch
def test_the_batch_grid_holds_the_images_of_the_ids_it_names(shared_data, tmp_path):
    from kit.diagnostics.batch import preview_batch, write_batch_grids

    data = shared_data / ISIC
    cfg = load_config(ISIC, overrides=TINY + ["model.img_size=40", "aug.preset=isic"])
    preview = preview_batch(cfg, data, n=6, seed=3)
    train_grid, eval_grid = write_batch_grids(preview, tmp_path)
    assert train_grid.keys == eval_grid.keys == preview.ids and len(set(preview.ids)) == 6
    truth = pd.read_csv(data / "ISIC2018_Task3_Training_GroundTruth.csv").set_index("image")
    assert preview.labels == [truth.loc[i].idxmax() for i in preview.ids]  # the one-hot column that is 1
    expected = reader_pixels(data, ISIC, preview.ids, 40)
    picture = png(eval_grid.path)
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(eval_grid.crop(picture, i, 40), want)
    augmented = png(train_grid.path)
    changed = [not np.array_equal(train_grid.crop(augmented, i, 40), want) for i, want in enumerate(expected)]
    assert sum(changed) >= 4  # the isic preset flips, transposes, distorts: the training view is not the image


def test_kit_show_batch_draws_the_ids_asked_for(shared_data, tmp_path, capsys):
    ids = ["ISIC_0024306", "ISIC_0024307"]
    code = main(["show", "batch", "-c", ISIC, "--data", str(shared_data / ISIC), "--ids", ",".join(ids),
                 "--out", str(tmp_path), *sum((["--set", s] for s in TINY), [])])
    assert code == 0
    assert {p.name for p in tmp_path.glob("*.png")} == {"batch_train.png", "batch_eval.png"}
    assert main(["show", "batch", "-c", ISIC, "--data", str(shared_data / ISIC), "--ids", "ISIC_nope",
                 "--out", str(tmp_path)]) == 1
    assert "ISIC_nope is not a training id" in capsys.readouterr().err


def test_kit_show_batch_of_a_run_uses_its_config_and_writes_its_report(hcd_run, capsys):
    assert main(["show", "batch", str(hcd_run), "--set", "aug.on_device=true", "--n", "3"]) == 0
    assert {"batch_train.png", "batch_eval.png"} <= {p.name for p in (hcd_run / "report").iterdir()}
    assert "aug.on_device" not in (hcd_run / "config.yaml").read_text() or "on_device: false" in \
        (hcd_run / "config.yaml").read_text()  # --set changed the preview, not the run
    assert main(["show", "batch", str(hcd_run), "-c", HCD]) == 1
    assert "a run folder brings its own config" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------- errors
def test_the_error_grid_orders_images_by_their_oof_loss(hcd_run, shared_data, tmp_path):
    from kit.diagnostics.errors import write_error_grids

    grids = write_error_grids(hcd_run, tmp_path, n=3)
    assert [g.path.name for g in grids] == ["errors.png"]  # no kit predict yet: no TTA grid
    oof = pd.read_csv(hcd_run / "oof.csv", dtype={"id": str})
    p_true = np.where(oof["target"] == 1, oof["pred"], 1 - oof["pred"])
    oof["loss"] = -np.log(p_true)
    wrong = oof[p_true < 0.5].sort_values("loss", ascending=False)
    expected = [i for t in (0, 1) for i in wrong[wrong["target"] == t]["id"].head(3)]
    assert grids[0].keys == expected and expected
    picture = png(grids[0].path)
    for i, want in enumerate(reader_pixels(shared_data / HCD, HCD, expected, 32)):
        np.testing.assert_array_equal(grids[0].crop(picture, i, 32), want)


def test_multiclass_errors_are_grouped_by_true_class_with_and_without_tta(predicted_runs, tmp_path):
    from kit.diagnostics.errors import worst_errors, write_error_grids
    from kit.rundir import RunDir

    run = RunDir(predicted_runs["multi"].run_dir)
    grids = write_error_grids(run.path, tmp_path, n=2)
    assert [g.path.name for g in grids] == ["errors.png", "errors_tta.png"]
    for group in worst_errors(run.competition(), run.oof(), n=2):
        assert group.rows["target"].nunique() == 1 and (group.rows["predicted"] != group.rows["target"]).all()
        assert group.rows["loss"].is_monotonic_decreasing


def test_a_run_without_oof_is_one_line(hcd_run, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.yaml", "run.json"):
        shutil.copy(hcd_run / name, bare / name)
    assert main(["show", "errors", str(bare)]) == 1
    err = capsys.readouterr().err.strip()
    assert "has no out-of-fold predictions" in err and len(err.splitlines()) == 1


# -------------------------------------------------------------------------------------------------------- cam
@pytest.mark.slow
def test_most_cam_mass_lies_in_the_centre_where_the_signal_is(demo_data, tmp_path, monkeypatch):
    """kit's synthetic patches follow PCam's rule: a patch is positive when its centre 32x32 holds tumour (negatives
    may have tumour in the margin), so a model that learnt the rule looks at the centre of the positives it finds.

    At 96 px the last feature map is 3x3 and its centre cell covers the centre 32x32 exactly; the mass is measured
    on that grid, where the method computes it (pytorch-grad-cam's bilinear upsampling alone would move 44% of a
    perfect centre map outside the centre square), and on the upsampled map against chance (1/9)."""
    from pytorch_grad_cam.base_cam import BaseCAM

    from kit.diagnostics.cam import cam_mass, explain, write_cam_grid
    from kit.rundir import RunDir
    from kit.train import train_folds

    cfg = load_config(HCD, overrides=TINY + ["model.img_size=96", "train.epochs=10", "train.lr=0.01",
                                             "aug.preset=none"])
    train_folds(cfg, demo_data(HCD, n=192, seed=1), tmp_path / "run")
    oof = RunDir(tmp_path / "run").oof()
    found = oof[(oof["target"] == 1) & (oof["pred"] > 0.5)]["id"].tolist()
    assert len(found) >= 8
    result = explain(tmp_path / "run", ids=found, methods=["gradcam", "gradcam++"], device="cpu")
    assert result.layers == {0: "layer4", 1: "layer4"}
    for method, maps in result.maps.items():
        assert maps.shape == (len(found), 96, 96)
        assert cam_mass(maps, (slice(32, 64), slice(32, 64))).mean() > 3 / 9, method
    grid = write_cam_grid(result, tmp_path)
    assert grid.keys[::3] == found
    monkeypatch.setattr(BaseCAM, "get_target_width_height", lambda self, x: (3, 3))  # the feature map's own grid
    native = explain(tmp_path / "run", ids=found, methods=["gradcam", "gradcam++"], device="cpu")
    for method, maps in native.maps.items():
        assert maps.shape == (len(found), 3, 3)
        assert cam_mass(maps, (slice(1, 2), slice(1, 2))).mean() > 0.5, method


def test_each_image_is_explained_by_its_own_fold_model(predicted_runs, tmp_path, capsys):
    """The multiclass run with a metadata branch: default ids (worst errors + confident correct), by fold."""
    from kit.diagnostics.cam import explain

    run_dir = predicted_runs["multi"].run_dir
    result = explain(run_dir, methods=["gradcam", "eigencam"], n_errors=3, n_correct=2, device="cpu")
    assert len(result.rows) == 5 and set(result.layers) == set(result.rows["fold"])
    assert result.explained == [f for f in result.rows["predicted"].map(lambda j: result.spec.classes[j])]
    assert all(m.shape == (5, 32, 32) and np.isfinite(m).all() for m in result.maps.values())  # model.img_size
    assert main(["show", "cam", str(run_dir), "--ids", "nope", "--device", "cpu"]) == 1
    assert "id nope is not in" in capsys.readouterr().err
    assert main(["show", "cam", str(run_dir), "--methods", "gradcam,gradcan", "--device", "cpu"]) == 1
    assert "unknown CAM method 'gradcan'" in capsys.readouterr().err
    assert main(["show", "cam", str(run_dir), "--n-errors", "1", "--n-correct", "1", "--out", str(tmp_path),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "cam.png").is_file()


def test_a_model_without_a_feature_map_is_refused_in_one_line():
    import timm

    from kit.diagnostics.cam import CamError, target_layer

    vit = timm.create_model("test_vit", num_classes=2, img_size=32, patch_size=8).eval()
    with pytest.raises(CamError, match="transformer's tokens"):
        target_layer(vit, torch.zeros(1, 3, 32, 32), "test_vit")
    cnn = timm.create_model("classic_cnn_bn", num_classes=1, img_size=96).eval()
    assert target_layer(cnn, torch.zeros(1, 3, 96, 96))[0].startswith("features")


def test_a_layer_a_method_cannot_use_is_one_line(hcd_run, capsys):
    assert main(["show", "cam", str(hcd_run), "--layer", "fc", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert "gradcam cannot explain layer 'fc'" in err and len(err.splitlines()) == 1
    assert main(["show", "cam", str(hcd_run), "--layer", "layer9", "--device", "cpu"]) == 1
    assert "has no layer 'layer9'" in capsys.readouterr().err


def test_the_run_page_gets_the_error_grid_and_the_cams(hcd_run, tmp_path):
    from kit.diagnostics import write_run_pictures

    paths = write_run_pictures(hcd_run, tmp_path, n_errors=2, device="cpu")
    assert [p.name for p in paths] == ["errors.png", "cam.png"] and all(p.stat().st_size for p in paths)


def test_a_missing_grad_cam_names_the_extra(monkeypatch, hcd_run, tmp_path, capsys):
    import sys

    from kit.diagnostics import write_run_pictures
    from kit.diagnostics.cam import explain
    from kit.errors import KitError

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(KitError, match=r"kit\[diagnostics\]"):
        explain(hcd_run)
    capsys.readouterr()
    assert [p.name for p in write_run_pictures(hcd_run, tmp_path, n_errors=2)] == ["errors.png"]
    assert "no cam.png: class-activation maps need pytorch-grad-cam" in capsys.readouterr().err  # a kit warning


# --------------------------------------------------------------------------------------------------- lr-find
@pytest.mark.slow
def test_lr_find_suggests_a_rate_within_a_decade_of_the_best(demo_data):
    from kit.diagnostics.lr_find import fold_trainer, lr_find, run_schedule

    data = demo_data(HCD, n=120)
    cfg = load_config(HCD, overrides=TINY)
    found = lr_find(cfg, data, start=1e-6, end=10, steps=60)
    final = {}
    for lr in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):  # the same fold, model and batches at one constant rate each
        trainer, _ = fold_trainer(cfg, data)
        losses, _ = run_schedule(trainer, np.full(40, lr), stop_on_divergence=False)
        final[lr] = losses[-10:].mean()
    best = min(final, key=final.get)
    assert abs(np.log10(found.suggestion) - np.log10(best)) <= 1, (found.suggestion, final)


def test_the_suggestion_ignores_a_minimum_after_the_first_turn():
    """A small training part is memorised at any rate: past its first instability the loss can fall lower still."""
    from kit.diagnostics.lr_find import first_minimum, suggest_lr

    flat = 0.7 + 0.01 * np.sin(np.arange(20))  # noise on a flat start is no turn
    curve = np.concatenate([flat, np.linspace(0.7, 0.1, 20), [0.4, 0.6, 0.3], np.linspace(0.2, 0.01, 10), [5.0]])
    assert first_minimum(curve) == 39
    lrs = np.geomspace(1e-6, 10, len(curve))
    assert suggest_lr(lrs, curve) == pytest.approx(lrs[39] / 10)


def test_lr_find_trains_in_the_configs_freezing_stage(demo_data):
    """model.freeze_epochs > 0: the first epoch trains the head alone, so does the range test (stage auto); unfrozen,
    the backbone's rate keeps its backbone_lr_scale ratio to the head's."""
    from kit.diagnostics.lr_find import fold_trainer, run_schedule
    from kit.models import head_parameters

    cfg = load_config(HCD, overrides=TINY + ["model.freeze_epochs=1", "model.backbone_lr_scale=0.1"])
    trainer, stage = fold_trainer(cfg, demo_data(HCD, n=60))
    assert stage == "frozen"
    head = head_parameters(trainer.model)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    run_schedule(trainer, np.geomspace(1e-3, 1e-1, 6))
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved == {n for n, p in trainer.model.named_parameters() if id(p) in head}
    trainer, stage = fold_trainer(cfg, demo_data(HCD, n=60), stage="unfrozen")
    run_schedule(trainer, np.geomspace(1e-3, 1e-1, 6))
    head_lr, backbone_lr = (g["lr"] for g in trainer.optimizer.param_groups)
    assert stage == "unfrozen" and backbone_lr == pytest.approx(0.1 * head_lr) and head_lr == pytest.approx(1e-1)


def test_lr_find_on_a_run_changes_nothing_in_it(hcd_run, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in hcd_run.rglob("*")}
    out = tmp_path / "lr.png"
    assert main(["lr-find", str(hcd_run), "--steps", "12", "--start", "1e-4", "--end", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "--set train.lr=" in printed and out.is_file()
    assert {p: p.stat().st_mtime_ns for p in hcd_run.rglob("*")} == before
    assert main(["lr-find", str(hcd_run), "--stage", "thawed"]) == 1
    assert "--stage must be one of" in capsys.readouterr().err

