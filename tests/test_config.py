"""kit.config: every closed-set key and range is checked when the config is built, with one line naming the key,
the bad value and the valid values, before anything is written; `kit config show` and `kit config keys`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from kit.cli import main
from kit.config import (
    config_to_yaml,
    from_dict,
    key_fields,
    load_config,
    load_saved_config,
    valid_keys,
)
from kit.errors import ConfigError

HCD = "histopathologic-cancer-detection"
TINY = ["model.name=test_resnet", "model.img_size=32"]

# One wrong value for each closed-set key, and a word its one-line error must hold besides the key and the value.
CLOSED_SETS = {
    "competition": ("isic-2020x", "isic-2019"),
    "model.name": ("resnet_18", "resnet18"),
    "aug.preset": ("histoo", "isic"),
    "train.optimizer": ("adamx", "adamw"),
    "train.scheduler": ("cos", "plateau"),
    "train.loss": ("focall", "focal"),
    "train.amp": ("fp32", "bf16"),
    "train.channels_last": ("maybe", "on"),
    "train.device": ("gpu", "cuda:N"),
    "train.target": ("diagnosiss", "diagnosis"),
    "train.mixup_mode": ("element", "elem"),
    "data.extra": ("isic-2019", "competition: NAME"),
    "train.loggers": ("tensorbord", "tensorboard"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from kit.data.synthetic import make_demo_data

    return make_demo_data(HCD, tmp_path_factory.mktemp("config") / "hcd", n=40)


def train_fails(data, run, capsys, *pairs: str) -> str:
    """`kit train` with ``--set`` pairs: it must fail with one line on stderr and write nothing; returns that line."""
    argv = ["train", "--competition", HCD, "--data", str(data), "--out", str(run)]
    for pair in pairs:
        argv += ["--set", pair]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith("kit train: error: ") and "Traceback" not in err, err
    assert not run.exists(), "a failed config check must not write the run folder"
    return err


# ------------------------------------------------------------------------------------------ closed sets
def test_every_closed_set_key_is_covered_here():
    closed = {k for k, f in key_fields().items() if f.metadata.get("choices") or f.metadata.get("check")}
    assert closed == set(CLOSED_SETS)


@pytest.mark.parametrize("key", list(CLOSED_SETS))
def test_wrong_closed_set_value_through_the_cli_is_one_line(key, data, tmp_path, capsys):
    bad, valid = CLOSED_SETS[key]
    err = train_fails(data, tmp_path / "run", capsys, f"{key}={bad}")
    assert key in err and bad in err and valid in err, err


def test_closed_set_error_suggests_close_matches_and_lists_the_valid_values():
    with pytest.raises(ConfigError) as e:
        load_config(HCD, overrides=["aug.preset=histoo"])
    assert str(e.value) == ("config key aug.preset=histoo is not valid (did you mean histo?); expected one of "
                            "none, classic, histo, isic")


@pytest.mark.parametrize("pair, expected", [
    ("train.amp=off", "off"), ("train.amp=bf16", "bf16"), ("train.channels_last=on", "on"),
    ("train.channels_last=off", "off"), ("train.device=cuda:1", "cuda:1"), ("train.device=cpu", "cpu"),
    ("train.optimizer=sgd", "sgd"), ("train.optimizer=lookahead_adamw", "lookahead_adamw"),
    ("train.scheduler=none", "none"), ("train.loss=focal", "focal"), ("aug.preset=none", "none"),
    ("model.name=classic_cnn_bn", "classic_cnn_bn"), ("competition=hcd", HCD),
])
def test_valid_closed_set_values_pass(pair, expected):
    key = pair.split("=")[0]
    section, _, sub = key.rpartition(".")
    cfg = load_config(HCD, overrides=[*TINY, pair] if "classic" not in pair else [pair])
    got = getattr(getattr(cfg, section), sub) if section else getattr(cfg, key)
    assert got == expected  # on / off stay strings although YAML 1.1 reads them as booleans; aliases resolve


def test_loss_for_the_other_task_names_the_competitions_task():
    with pytest.raises(ConfigError, match=r"train\.loss=ce is for multiclass competitions; use bce or focal "
                                          rf"\({HCD} is binary\)"):
        load_config(HCD, overrides=["train.loss=ce"])
    assert load_config("isic-2019", overrides=[*TINY, "train.loss=ce"]).train.loss == "ce"


# ---------------------------------------------------------------------------------------------- ranges
RANGES = [
    ("train.epochs=0", ">= 1"),
    ("model.img_size=0", ">= 1"),
    ("model.drop_rate=1.5", "in [0.0, 1.0)"),
    ("n_folds=1", ">= 2"),
    ("train.batch_size=0", ">= 1"),
    ("train.lr=0", "> 0.0"),
    ("train.lr=-0.1", "> 0.0"),
    ("train.label_smoothing=1.0", "in [0.0, 1.0)"),
    ("train.ema_decay=1", "in (0.0, 1.0)"),
    ("train.ema_decay=0", "in (0.0, 1.0)"),
    ("train.warmup_epochs=-1", ">= 0"),
    ("model.freeze_epochs=-1", ">= 0"),
    ("model.unfreeze_blocks=-2", ">= 0"),
    ("train.early_stopping=-1", ">= 0"),
    ("train.grad_clip=-1", ">= 0.0"),
    ("train.weight_decay=-0.01", ">= 0.0"),
    ("train.focal_gamma=-1", ">= 0.0"),
    ("train.min_lr=-1e-6", ">= 0.0"),
    ("train.num_workers=-2", ">= -1"),
    ("aug.strength=-0.5", ">= 0.0"),
    ("model.backbone_lr_scale=0", "> 0.0"),
    ("train.seed=-1", ">= 0"),
    ("fold_seed=-1", ">= 0"),
    ("train.warmup_epochs=8", "less than train.epochs (8)"),
    ("model.freeze_epochs=9", "at most train.epochs (8)"),
    ("train.min_lr=0.01", "at most train.lr (0.001)"),
    ("model.use_metadata=true", f"{HCD} has no metadata"),
    ("train.epochs=2.5", "must be int"),
]


@pytest.mark.parametrize("pair, expected", RANGES, ids=[p for p, _ in RANGES])
def test_out_of_range_value_is_one_line(pair, expected, data, tmp_path, capsys):
    err = train_fails(data, tmp_path / "run", capsys, pair)
    assert pair.split("=")[0] in err and expected in err, err


def _outside(f) -> object:
    """A value just outside the field's bounds."""
    bounds = f.metadata["bounds"]
    step = 1 if str(f.type).startswith("int") else 0.5
    if "ge" in bounds:
        return bounds["ge"] - step
    if "gt" in bounds:
        return bounds["gt"]
    return bounds["lt"] if "lt" in bounds else bounds["le"] + step


@pytest.mark.parametrize("key", [k for k, f in key_fields().items() if f.metadata.get("bounds")])
def test_every_bounded_key_rejects_a_value_outside(key):
    value = _outside(key_fields()[key])
    section, _, sub = key.rpartition(".")
    with pytest.raises(ConfigError, match=rf"^config key {key}={value} is not valid; it must be "):
        from_dict({section: {sub: value}} if section else {key: value})


def test_null_img_size_takes_the_models_default():
    assert load_config(HCD, overrides=["model.img_size=null"]).model.img_size is None


@pytest.mark.parametrize("name, size, expected", [
    ("test_convnext", 16, "model.img_size=16 is too small for test_convnext: Calculated padded input size"),
    ("classic_cnn", 32, "model.img_size=32 is too small for classic_cnn: classic_cnn needs img_size >= 46"),
    ("test_vit3", 16, "model.img_size=16 does not fit test_vit3: Input height (16) doesn't match model (160)"),
])
def test_img_size_too_small_for_the_model(name, size, expected, data, tmp_path, capsys):
    err = train_fails(data, tmp_path / "run", capsys, f"model.name={name}", f"model.img_size={size}")
    assert expected in err, err


def test_resnet18_takes_even_tiny_images():
    """Padding and adaptive pooling: resnet18's features exist down to 1 px, so 8 px is not an error."""
    assert load_config(HCD, overrides=["model.img_size=8"]).model.img_size == 8


def test_saved_configs_are_checked_but_not_built(tmp_path):
    """from_dict (saved configs, tune trials) checks values; the model build of the size check is load_config's."""
    cfg = from_dict({"competition": HCD, "model": {"name": "test_convnext", "img_size": 16}})
    assert cfg.model.img_size == 16
    bad = tmp_path / "config.yaml"
    bad.write_text(config_to_yaml(cfg).replace("amp: auto", "amp: fp32"))
    with pytest.raises(ConfigError, match="config key train.amp=fp32 is not valid"):
        load_saved_config(bad)


def test_missing_weights_file_fails_before_training(data, tmp_path, capsys):
    err = train_fails(data, tmp_path / "run", capsys, f"model.weights={tmp_path / 'nope.pth'}")
    assert "model.weights=" in err and "file not found" in err


def test_bad_value_in_a_preset_file_names_the_key(tmp_path, capsys):
    preset = tmp_path / "mine.yaml"
    preset.write_text("train:\n  epochs: 0\n")
    assert main(["config", "show", "--config", str(preset)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.epochs=0" in err


# ------------------------------------------------------------------------------------------ kit config
def test_config_show_prints_the_resolved_config(capsys):
    assert main(["config", "show", "--competition", "isic-2019", "--set", "train.epochs=3",
                 "--set", "train.amp=off"]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert "kit" not in shown  # no provenance
    assert shown == load_config("isic-2019", overrides=["train.epochs=3", "train.amp=off"]).to_dict()
    assert shown["competition"] == "isic-2019" and shown["train"]["epochs"] == 3 and shown["train"]["amp"] == "off"
    assert shown["train"]["loss"] == "ce"  # from the competition's preset
    assert from_dict(shown).to_dict() == shown  # the output reads back as a config


def test_config_show_without_arguments_prints_the_defaults(capsys):
    assert main(["config", "show"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == from_dict({}).to_dict()


@pytest.mark.parametrize("argv, expected", [
    (["--set", "train.amp=bad"], "config key train.amp=bad is not valid; expected one of auto, bf16, fp16, off"),
    (["--set", "train.lr=0"], "train.lr=0.0 is not valid; it must be > 0.0"),
    (["--set", "train.learning_rate=0.1"], "unknown config key 'train.learning_rate'"),
    (["--competition", "nope"], "unknown competition 'nope'"),
    (["--config", "no-such-preset"], "config file not found"),
])
def test_config_show_bad_input_is_one_line(argv, expected, capsys):
    assert main(["config", "show", *argv]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("kit config: error: ")
    assert expected in captured.err


def test_config_keys_lists_every_key_with_type_default_help_and_valid_values(capsys):
    assert main(["config", "keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == valid_keys()
    by_key = {line.split()[0]: line for line in lines}
    assert by_key["train.amp"].split()[1:3] == ["str", "auto"]
    assert "valid: one of auto, bf16, fp16, off" in by_key["train.amp"]
    assert "valid: one of auto, bce, ce, focal" in by_key["train.loss"]
    assert "valid: one of none, classic, histo, isic" in by_key["aug.preset"]
    assert by_key["model.img_size"].split()[1:5] == ["int", "|", "None", "null"]
    assert "valid: in [0.0, 1.0)" in by_key["model.drop_rate"] and "valid: >= 2" in by_key["n_folds"]
    assert "classic_cnn" in by_key["model.name"] and "cuda:N" in by_key["train.device"]


def test_every_key_has_a_one_line_help():
    for key, f in key_fields().items():
        help_text = f.metadata.get("help", "")
        assert help_text and "\n" not in help_text, key


def test_registry_modules_do_not_import_kit_config():
    """Layering: kit.config imports kit.models / kit.transforms / kit.losses lazily, never the other way round, and
    importing kit.config alone stays light (no torch)."""
    code = ("import sys; import kit.config; assert 'torch' not in sys.modules, 'kit.config imports torch'; "
            "del sys.modules['kit.config']; import kit.models, kit.transforms, kit.losses, kit.metrics, kit.tta, "
            "kit.competitions; assert 'kit.config' not in sys.modules, 'a registry module imports kit.config'")
    subprocess.run([sys.executable, "-c", code], check=True)
