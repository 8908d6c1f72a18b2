"""Initial weights: timm's pretrained route offline from a Hugging Face cache built here from the shared ImageNet file,
a local weights file, the record in config.yaml, the two-stage fine-tune, and the one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kit.cli import main
from kit.config import load_config
from kit.errors import ConfigError
from kit.io import sha256_file
from kit.models import build_model, frozen_modules
from kit.weights import populate_hf_cache, pretrained_name, resolve_weights

LITE0 = "tf_efficientnet_lite0"
ISIC = "isic-2018-task3"
TINY = ["model.img_size=32", "n_folds=2", "train.batch_size=16", "train.epochs=1", "train.device=cpu",
        "aug.preset=none"]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, shared_weights) -> Path:
    """An offline Hugging Face cache holding the shared file as timm's Hub weights of tf_efficientnet_lite0."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf"
    populate_hf_cache(shared_weights, LITE0, cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # huggingface_hub reads the environment at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _conv_stem(shared_weights: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(shared_weights))["conv_stem.weight"]


def test_pretrained_true_loads_the_cached_hub_weights_offline(hf_cache, shared_weights):
    model = build_model(LITE0, 7, pretrained=True)
    torch.testing.assert_close(model.conv_stem.weight, _conv_stem(shared_weights))
    assert model.classifier.out_features == 7  # timm dropped the 1,000-class head
    source = resolve_weights(LITE0, "in1k", None)
    assert source.record() == {"source": "hf-hub:timm/tf_efficientnet_lite0.in1k",
                               "sha256": sha256_file(shared_weights)}


def test_the_cache_layout_is_huggingface_hubs(hf_cache, shared_weights):
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache("timm/tf_efficientnet_lite0.in1k", "model.safetensors", cache_dir=hf_cache)
    assert found and Path(found).resolve() == shared_weights.resolve()
    repo = hf_cache / "models--timm--tf_efficientnet_lite0.in1k"
    commit = (repo / "refs" / "main").read_text()
    assert (repo / "snapshots" / commit / "model.safetensors").is_symlink()
    assert (repo / "blobs" / sha256_file(shared_weights)).exists()


def test_kit_train_records_the_weights_source_not_the_path(hf_cache, shared_weights, demo_data, tmp_path):
    """A real `kit train` process, offline, from the cache: config.yaml names the Hub weights and their sha256."""
    data = demo_data(ISIC, n=40, size=32)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, "-c", "from kit.cli import main; raise SystemExit(main())", "train", "--competition", ISIC,
            "--data", str(data), "--out", str(tmp_path / "run"), "--folds", "0", "--set", f"model.name={LITE0}",
            "--set", "model.pretrained=true", "--set", "model.freeze_epochs=1"]
    for pair in TINY:
        argv += ["--set", pair]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "weights hf-hub:timm/tf_efficientnet_lite0.in1k" in done.stdout
    text = (tmp_path / "run" / "config.yaml").read_text()
    saved = yaml.safe_load(text)
    assert saved["kit"]["weights"] == {"source": "hf-hub:timm/tf_efficientnet_lite0.in1k",
                                       "sha256": sha256_file(shared_weights)}
    assert str(hf_cache) not in text and str(shared_weights.parent) not in text


def test_an_empty_offline_cache_says_how_to_give_a_file(tmp_path, monkeypatch, demo_data, capsys):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    data = demo_data(ISIC, n=40, size=32)
    argv = ["train", "--competition", ISIC, "--data", str(data), "--out", str(tmp_path / "run"),
            "--set", f"model.name={LITE0}", "--set", "model.pretrained=true", "--set", "n_folds=2"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "timm/tf_efficientnet_lite0.in1k are not in the Hugging Face cache" in err
    assert "model.weights=FILE" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "run").exists()


def test_model_weights_loads_the_shared_file_and_records_its_name(shared_weights, demo_data, tmp_path, capsys):
    from kit.train import train_folds

    model = build_model(LITE0, 7, weights=str(shared_weights))
    torch.testing.assert_close(model.conv_stem.weight, _conv_stem(shared_weights))
    data = demo_data(ISIC, n=40, size=32)
    cfg = load_config(ISIC, overrides=[*TINY, f"model.name={LITE0}", "model.pretrained=false",
                                       f"model.weights={shared_weights}"])
    train_folds(cfg, data, tmp_path / "run", folds=[0])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["kit"]["weights"] == {"source": f"file:{shared_weights.name}", "sha256": sha256_file(shared_weights)}


def test_training_from_scratch_says_so_at_the_start(demo_data, tmp_path, capsys):
    from kit.train import train_folds

    data = demo_data(ISIC, n=40, size=32)
    cfg = load_config(ISIC, overrides=[*TINY, "model.name=test_resnet", "model.pretrained=false"])
    train_folds(cfg, data, tmp_path / "run", folds=[0])
    out = capsys.readouterr().out.splitlines()
    first = next(line for line in out if line.startswith("model "))
    assert first.startswith("model test_resnet: random initial weights (training from scratch)"), first
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["kit"]["weights"]["source"].startswith("scratch")


def test_two_stage_fine_tune_switches_the_trainable_set_and_keeps_frozen_statistics(hf_cache, demo_data,
                                                                                     tmp_path):
    """Epoch 1: only the head trains and every backbone BatchNorm keeps its ImageNet statistics; epoch 2: the top
    two blocks join, the rest stays frozen with its statistics."""
    from kit.rundir import RunDir
    from kit.train import FoldTrainer, prepare_data

    data_dir = demo_data(ISIC, n=40, size=32)
    cfg = load_config(ISIC, overrides=[*TINY, f"model.name={LITE0}", "model.pretrained=true", "train.epochs=2",
                                       "model.freeze_epochs=1", "model.unfreeze_blocks=2"])
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    with run.writing():
        trainer = FoldTrainer(cfg, prepare_data(cfg, data_dir, run), 0, run)
        model = trainer.model

        def trainable() -> set[str]:
            return {n for n, p in model.named_parameters() if p.requires_grad}

        def stats() -> dict[str, torch.Tensor]:
            return {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}

        before = stats()
        trainer.train_epoch(0, False)
        head_only, after_frozen = trainable(), stats()
        assert head_only == {"classifier.weight", "classifier.bias"}
        assert all(torch.equal(before[n], after_frozen[n]) for n in before)  # frozen BatchNorm kept its statistics
        trainer.train_epoch(1, False)
        fine_tuned, after = trainable(), stats()
    assert head_only < fine_tuned and any(n.startswith("blocks.6") for n in fine_tuned)
    assert not any(n.startswith(("conv_stem", "bn1", "blocks.0")) for n in fine_tuned)
    changed = {n for n in before if not torch.equal(after_frozen[n], after[n])}
    assert changed and all(not n.startswith(("bn1", "blocks.0")) for n in changed)
    assert frozen_modules(model)  # the lower blocks' BatchNorm layers are still frozen


@pytest.mark.parametrize("pretrained, expected", [
    ("in22k", "model.pretrained=in22k: unknown tag for tf_efficientnet_lite0; timm knows in1k"),
    ("tf_efficientnet_lite0.in1k", None),
    (True, None),
])
def test_pretrained_tags_are_checked(pretrained, expected):
    if expected is None:
        assert pretrained_name(LITE0, pretrained) == "tf_efficientnet_lite0.in1k"
    else:
        with pytest.raises(ConfigError, match=expected):
            pretrained_name(LITE0, pretrained)


def test_pretrained_and_weights_together_are_refused(shared_weights):
    with pytest.raises(ConfigError, match="both give initial weights"):
        load_config(ISIC, overrides=[f"model.name={LITE0}", "model.pretrained=true",
                                     f"model.weights={shared_weights}"])
    with pytest.raises(ConfigError, match="kit's own model classic_cnn has no pretrained weights"):
        load_config("hcd", overrides=["model.name=classic_cnn", "model.img_size=96", "model.pretrained=true"])
    with pytest.raises(ConfigError, match=r"config key 'model.pretrained' must be bool \| str, got 3"):
        load_config("hcd", overrides=["model.pretrained=3"])


# ---------------------------------------------------------------------------------------------------------------
# Issue 12: bad weights files and sizes are one line


@pytest.mark.parametrize("name", ["classic_cnn_bn", "test_resnet"])
@pytest.mark.parametrize("content", [b"not a pickle at all \x00\x01", b"\x80\x04\x95garbage"])
def test_a_garbage_weights_file_is_one_line_naming_it(name, content, tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^weights file {path} cannot be read as a state dict \(") as e:
        build_model(name, 2, weights=str(path), img_size=96)
    assert "\n" not in str(e.value)


def test_a_garbage_weights_file_through_kit_train(demo_data, tmp_path, capsys):
    path = tmp_path / "garbage.pth"
    path.write_bytes(np.random.default_rng(0).bytes(512))
    data = demo_data("histopathologic-cancer-detection", n=40)
    rc = main(["train", "--competition", "hcd", "--data", str(data), "--out", str(tmp_path / "run"),
               "--set", "model.name=classic_cnn_bn", "--set", f"model.weights={path}"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"weights file {path} cannot be read as a state dict" in err


@pytest.mark.parametrize("name, size", [("resnet18", 1), ("resnet18", 4), (LITE0, 2), ("test_resnet", 7)])
def test_img_size_below_the_floor_is_one_line(name, size, demo_data, tmp_path, capsys):
    data = demo_data("histopathologic-cancer-detection", n=40)
    rc = main(["train", "--competition", "hcd", "--data", str(data), "--out", str(tmp_path / "run"),
               "--set", f"model.name={name}", "--set", f"model.img_size={size}"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"model.img_size={size} is too small for {name}: kit trains at 8 pixels a side or more" in err
    assert not (tmp_path / "run").exists()


def test_a_new_head_on_pretrained_features_starts_at_zero_and_a_matching_one_is_kept(shared_weights):
    from safetensors.torch import load_file

    new = build_model(LITE0, 7, weights=str(shared_weights))
    assert not new.classifier.weight.any() and not new.classifier.bias.any()  # uniform first predictions
    kept = build_model(LITE0, 1000, weights=str(shared_weights))
    torch.testing.assert_close(kept.classifier.weight, load_file(str(shared_weights))["classifier.weight"])


@pytest.mark.parametrize("competition", ["isic-2018-task3", "siim-isic-melanoma-classification",
                                         "isic-2024-challenge"])
def test_every_isic_preset_starts_from_imagenet_weights(competition):
    cfg = load_config(competition)
    assert cfg.model.pretrained is True and cfg.model.weights is None
    assert "." in pretrained_name(cfg.model.name, cfg.model.pretrained)  # a tag timm knows: model.TAG
