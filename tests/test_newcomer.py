"""A newcomer's first hour (issue 20), through the CLI: presets that survive quick settings, honest weights wording, a
Hub that cannot be reached failing fast and whole, the folds.csv that `kit folds` wrote, hints that name flags and
keys that exist, demo data written over an earlier set, and words."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kit.cli import main

HCD = "histopathologic-cancer-detection"
ISIC = "isic-2018-task3"
KIT = Path(__file__).resolve().parents[1] / "kit"
TINY = ["model.name=test_resnet", "model.img_size=32", "train.batch_size=8", "train.epochs=1", "train.device=cpu",
        "train.warmup_epochs=0"]


def sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def said(capsys, caplog) -> str:
    """Everything the command said: stdout, stderr and the log records (notes are logged by the library)."""
    out = capsys.readouterr()
    return out.out + out.err + caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Presets that survive quick settings; the user's explicit value wins over a preset's default, with one line


def test_epochs_1_on_the_hcd_preset_lowers_its_warm_up_with_a_note(capsys, caplog):
    assert main(["config", "show", "-c", HCD, "--set", "train.epochs=1"]) == 0
    out = capsys.readouterr()
    assert yaml.safe_load(out.out)["train"]["warmup_epochs"] == 0
    assert "train.warmup_epochs=1 of the preset lowered to 0 to fit train.epochs=1" in out.err + caplog.text


def test_a_users_own_contradictory_pair_is_still_refused(capsys):
    assert main(["config", "show", "-c", HCD, "--set", "train.epochs=1", "--set", "train.warmup_epochs=1"]) == 1
    err = capsys.readouterr().err
    assert "train.warmup_epochs=1 is not valid; it must be less than train.epochs (1)" in err


def test_a_weights_file_wins_over_a_pretrained_preset(capsys, caplog, shared_weights):
    argv = ["config", "show", "--config", ISIC, "--set", f"model.weights={shared_weights}", "--set", "train.epochs=1"]
    assert main(argv) == 0
    text = said(capsys, caplog)
    assert "the preset's model.pretrained=true is turned off" in text and "pretrained: false" in text
    # the preset's freeze_epochs=1 with epochs=1: only the head trains, and it says so
    assert "model.freeze_epochs=1 >= train.epochs=1: only the head trains" in text


def test_both_weights_given_by_the_user_are_still_refused(capsys, shared_weights):
    argv = ["config", "show", "-c", ISIC, "--set", f"model.weights={shared_weights}", "--set", "model.pretrained=true"]
    assert main(argv) == 1
    assert "both give initial weights" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Weights: the Hub that cannot be reached, --config without -c, the start line


def _offline_env(tmp_path: Path) -> dict:
    """No HF_HUB_OFFLINE, an empty cache and a Hub endpoint on the loopback where nothing listens: no internet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "hf-empty"),
               PYTHONPATH=str(KIT.parent))
    return env


def test_an_unreachable_hub_says_fetching_first_then_fails_whole_in_one_line(demo_data, tmp_path):
    data = demo_data(ISIC, n=40, size=32)
    # no -c: the preset names its competition
    argv = [sys.executable, "-m", "kit.cli", "train", "--config", ISIC, "--data", str(data), "--out",
            str(tmp_path / "run"), *sets("n_folds=2", "model.img_size=32")]
    done = subprocess.run(argv, env=_offline_env(tmp_path), capture_output=True, text=True, timeout=900)
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert "Retrying" not in text and "Traceback" not in text, text
    fetching = text.index("fetching timm/tf_efficientnet_lite0.in1k from the Hugging Face Hub (http://127.0.0.1:9)")
    errors = [line for line in text.splitlines() if line.startswith("kit train: error: ")]
    assert len(errors) == 1 and text.index(errors[0]) > fetching, text
    assert "the Hub http://127.0.0.1:9 cannot be reached: ConnectError:" in errors[0]
    assert errors[0].endswith("--set model.pretrained=false --set model.weights=FILE")  # whole, not cut
    assert not (tmp_path / "run").exists()


def test_train_without_competition_or_preset_names_what_is_missing(capsys, tmp_path):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    assert "missing --competition" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(demo_data, tmp_path_factory):
    """A one-epoch HCD run of fold 0 of 2, trained by kit train: (data, run folder, what it printed)."""
    import contextlib
    import io

    run = tmp_path_factory.mktemp("newcomer") / "run"
    data = demo_data(HCD, n=40)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", "-c", HCD, "--data", str(data), "--out", str(run), "--folds", "0", "--no-progress",
                     *sets(*TINY, "n_folds=2")]) == 0
    return data, run, out.getvalue()


def test_resume_does_not_claim_random_weights(tiny_run, tmp_path, capsys):
    import shutil

    data, trained, printed = tiny_run
    start = next(line for line in printed.splitlines() if line.startswith("kit train "))
    assert "folds 0 of 2; 1 epoch; test_resnet, from scratch" in start  # "1 epoch", not "1 epochs"
    run = shutil.copytree(trained, tmp_path / "run")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    start = next(line for line in out.splitlines() if line.startswith("kit train "))
    assert "continuing from each fold's last.pt (initial weights: from scratch)" in start, start
    assert not any(line.startswith("model test_resnet: random initial weights") for line in out.splitlines())
    assert "model test_resnet: folds with a last.pt continue from it" in out


def test_a_test_folder_alone_is_predicted_by_kernel_run(tiny_run, tmp_path, capsys):
    """The README's test-only route: no training images or labels, only the test folder and its sample submission."""
    import shutil

    data, run, _ = tiny_run
    test_only = tmp_path / "hcd-test"
    shutil.copytree(data / "test", test_only / "test")
    shutil.copy(data / "sample_submission.csv", test_only)
    assert main(["predict", str(run), "--data", str(test_only), "--tta", "1", "--device", "cpu",
                 "--submissions", str(tmp_path / "subs"), "--no-report"]) == 1  # kit predict needs the training rows
    capsys.readouterr()
    assert main(["kernel", "run", "-c", HCD, "--data", str(test_only), "--weights", str(run), "--working",
                 str(tmp_path / "working"), "--tta", "2", "--device", "cpu"]) == 0, capsys.readouterr().err
    submission = pd.read_csv(tmp_path / "working" / "submission.csv")
    assert list(submission["id"]) == list(pd.read_csv(test_only / "sample_submission.csv")["id"])


# ---------------------------------------------------------------------------------------------------------------
# The folds.csv that kit folds wrote into the data folder


def test_kit_train_uses_the_folds_csv_in_the_data_folder_and_says_so(demo_data, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_data(HCD, n=40), data)
    assert main(["folds", "-c", HCD, "--data", str(data), "--out", str(data / "folds.csv"), "--n-folds", "3"]) == 0
    assert main(["train", "-c", HCD, "--data", str(data), "--out", str(tmp_path / "run"), "--folds", "0",
                 "--no-progress", *sets(*TINY)]) == 0
    out = capsys.readouterr().out
    assert f"folds 0 of 3 (from {data / 'folds.csv'})" in out
    ours, used = pd.read_csv(data / "folds.csv"), pd.read_csv(tmp_path / "run" / "folds.csv")
    assert ours.equals(used)
    # an explicit n_folds that the file contradicts wins, and the line says how to use the file
    assert main(["train", "-c", HCD, "--data", str(data), "--out", str(tmp_path / "run2"), "--folds", "0",
                 "--no-progress", *sets(*TINY, "n_folds=2")]) == 0
    out = capsys.readouterr().out
    assert f"note: {data / 'folds.csv'} (3 folds) is not used since --set n_folds=2" in out
    assert f"--folds-file {data / 'folds.csv'}" in out and "folds 0 of 2;" in out


# ---------------------------------------------------------------------------------------------------------------
# kit tune --set of a key the space searches; a study made with another config names the key


def test_tune_refuses_a_set_of_a_searched_key_naming_it(demo_data, tmp_path, capsys):
    data = demo_data(HCD, n=40)
    argv = ["tune", "-c", HCD, "--data", str(data), "--study", "s", "--trials", "1", "--out", str(tmp_path),
            "--set", "model.name=resnet10t"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--set model.name: the search space" in err and "searches model.name" in err
    assert not (tmp_path / "s.db").exists()


def test_a_study_of_another_config_names_the_key_that_differs():
    from kit.config import load_config
    from kit.tune.space import parse_space
    from kit.tune.study import TuneSetup, _differences

    space = parse_space({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    a = TuneSetup(load_config(HCD), space, Path("d"), Path("s"), [0]).signature()
    b = TuneSetup(load_config(HCD, overrides=["train.epochs=3"]), space, Path("d"), Path("s"), [0]).signature()
    assert _differences(a, b).startswith("config key train.epochs: 8 in the study, 3 here")


def test_tune_quiets_optunas_own_log_lines(tmp_path, capsys):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO)
    assert main(["tune", "--best", "nothing", "--out", str(tmp_path)]) == 1
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING


def test_the_experimental_note_names_public_functions_only(capsys):
    import warnings

    from optuna.exceptions import ExperimentalWarning

    from kit.tune.storage import experimental_warnings_once

    with experimental_warnings_once():
        warnings.warn("optuna.visualization.matplotlib._param_importances.plot_param_importances is experimental",
                      ExperimentalWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.strip().endswith(": plot_param_importances") and "._" not in err


# ---------------------------------------------------------------------------------------------------------------
# Hints: every flag or key a message names exists


def _literals() -> list[tuple[Path, int, str]]:
    """Every string literal of kit, with file and line; an f-string whole, each replacement field as X."""
    out = []
    for path in sorted(KIT.rglob("*.py")):
        tree = ast.parse(path.read_text())
        parts_of_fstrings = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                parts_of_fstrings |= {id(v) for v in node.values}
                out.append((path, node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "X"
                                                       for v in node.values)))
        out += [(path, node.lineno, node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
                and isinstance(node.value, str) and id(node) not in parts_of_fstrings]
    return out


def _options(argv: tuple[str, ...]) -> set[str]:
    """The flags of a command; of a command with actions (kit config), those of any of its actions."""
    from test_flags import all_parsers

    return {o for words, parser in all_parsers().items() if words[:len(argv)] == argv for a in parser._actions
            for o in a.option_strings}


EXTERNAL_FLAGS = {"--disable-pip-version-check", "--find-links", "--implementation", "--no-build-isolation",
                  "--no-deps", "--no-index", "--no-input", "--only-binary", "--platform", "--python-version",
                  "--sweep", "--logdir"}
"""Flags of other programs that kit's messages and commands quote: pip's, scripts/bench_tta.py's, tensorboard's."""


AUDIENCE = {"bundle.py": ("bundle",), "kernel.py": ("kernel", "predict"), "kernel_train.py": ("kernel",),
            "stack": ("stack",), "tune": ("tune",), "decision.py": ("predict",), "synthetic.py": ("demo-data",),
            "code_submission.py": ("submit",), "compare.py": ("runs",), "diagnostics": ("show", "lr-find"),
            "ensemble.py": ("ensemble",)}
"""The commands whose messages a library module writes; any other library module writes kit train's (and kit
predict's) messages, so a flag it names without its command must be kit train's."""
COMMAND = re.compile(r"\bkit ([a-z-]+(?: [a-z]+)?)((?:[^;)`\n](?!\bkit ))*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")


def _audience(path: Path) -> tuple[str, ...] | None:
    """The commands a module speaks for; None for the commands themselves (their flags are their own)."""
    if "commands" in path.parts or path.name == "cli.py" or "templates" in path.parts:
        return None
    for part in reversed(path.relative_to(KIT).parts):
        if part in AUDIENCE:
            return AUDIENCE[part]
    return ("train",)


def test_every_flag_a_message_names_exists_in_the_command_it_names():
    """"kit folds ... --n-folds" names a flag of kit folds; a flag named alone in a library module (which kit train
    reaches) is a flag of the commands that module speaks for: "lower --n-folds" from the fold maker was not."""
    from test_flags import all_parsers

    parsers = all_parsers()
    every = {o for p in parsers.values() for a in p._actions for o in a.option_strings}
    wrong = []
    for path, line, text in _literals():
        for command, rest in COMMAND.findall(text):  # up to the next ';', ')' or backtick
            words = tuple(command.split())
            argv = words if words in parsers else words[:1]
            for flag in FLAG.findall(rest) if argv in parsers else []:
                if flag not in _options(argv) and flag not in EXTERNAL_FLAGS:
                    wrong.append(f"{path.name}:{line}: kit {' '.join(argv)} has no {flag}")
        audience = _audience(path)
        for flag in FLAG.findall(COMMAND.sub("", text)):
            if flag in EXTERNAL_FLAGS:
                continue
            if flag not in every:
                wrong.append(f"{path.name}:{line}: {flag} is no flag of kit")
            elif audience and not any(flag in _options((c,)) for c in audience):
                wrong.append(f"{path.name}:{line}: {flag} is no flag of kit {'/'.join(audience)}")
    assert not wrong, "\n".join(wrong)


def test_every_config_key_a_message_names_exists():
    from kit.config import valid_keys

    keys = set(valid_keys())
    wrong = []
    for path, line, text in _literals():
        named = re.findall(r"(?:--set |config keys? )([a-z_]+(?:\.[a-z_]+)?)=", text)  # --set n_folds=N
        named += re.findall(r"config keys? ([a-z_]+\.[a-z_]+)\b", text)  # config key model.weights
        for key in named:
            if key not in keys and key != "section.key":
                wrong.append(f"{path.name}:{line}: config key {key} does not exist")
        for key in re.findall(r"\b((?:model|train|aug|data)\.[a-z_]+)=", text):
            if key not in keys:
                wrong.append(f"{path.name}:{line}: config key {key} does not exist")
    assert not wrong, "\n".join(wrong)


def test_too_few_samples_names_flags_that_exist_and_the_hint_works(demo_data, tmp_path, capsys):
    data = demo_data(HCD, n=40)
    assert main(["folds", "-c", HCD, "--data", str(data), "--out", str(tmp_path / "f.csv"), "--n-folds", "30"]) == 1
    err = capsys.readouterr().err
    assert "lower the fold count (kit folds --n-folds N; kit train --set n_folds=N)" in err
    assert "--n-folds" in _options(("folds",))
    assert main(["config", "show", "-c", HCD, "--set", "n_folds=3"]) == 0  # the train hint's key exists


# ---------------------------------------------------------------------------------------------------------------
# kit demo-data into a folder that holds something


def test_demo_data_replaces_an_earlier_demo_set_whole(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["demo-data", "-c", HCD, "--out", str(out), "--n", "20"]) == 0
    old = {p.name for p in (out / "train").iterdir()}
    (out / "folds.csv").write_text("id,fold\n")  # what kit folds would have written there
    assert main(["demo-data", "-c", HCD, "--out", str(out), "--n", "12", "--seed", "3"]) == 0
    assert f"replacing the demo data in {out}" in capsys.readouterr().out
    new = {p.name for p in (out / "train").iterdir()}
    labels = pd.read_csv(out / "train_labels.csv", dtype=str)
    assert len(new) == 12 and not old & new and set(labels["id"] + ".tif") == new
    assert len(pd.read_csv(out / "sample_submission.csv")) == len(list((out / "test").iterdir()))
    assert not (out / "folds.csv").exists()


def test_demo_data_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["demo-data", "-c", HCD, "--out", str(tmp_path), "--n", "12"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path} is not empty and was not written by kit demo-data" in err
    assert (tmp_path / "mine.txt").read_text() == "keep me" and not (tmp_path / "train_labels.csv").exists()


# ---------------------------------------------------------------------------------------------------------------
# Words


def test_words():
    from kit.words import article, plural

    assert plural(1, "epoch") == "1 epoch" and plural(2, "epoch") == "2 epochs" and plural(0, "row") == "0 rows"
    assert article("isic-2024-challenge") == "an isic-2024-challenge" and article("hcd") == "a hcd"


def test_competitions_lists_the_aliases(capsys):
    assert main(["competitions"]) == 0
    out = capsys.readouterr().out
    assert "histopathologic-cancer-detection (also: hcd)" in out and "isic-2018-task3 (also: isic-2018" in out


def test_pack_help_does_not_say_memory_mapped():
    from test_flags import help_text

    text = help_text(["pack"]) + help_text([])
    assert "memory-mapped" not in text.replace("not memory-mapped", "")
