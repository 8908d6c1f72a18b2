"""Consistent flags: -c for --competition with its choices in --help, --out for every output folder, kit bundle and
kit kernel of the same shape (build, then push DIR), and a --folds-file that sets the fold count."""

from __future__ import annotations

import argparse
import contextlib
import io

import pandas as pd
import pytest
import yaml

from kit.cli import build_parser, main
from kit.competitions import list_competitions

COMMANDS_WITH_COMPETITION = [["check-data"], ["config", "show"], ["demo-data"], ["folds"], ["pack"], ["train"],
                             ["submit"], ["tune"], ["stack"], ["kernel", "build"], ["kernel", "run"]]


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return out.getvalue()


@pytest.mark.parametrize("argv", COMMANDS_WITH_COMPETITION, ids=" ".join)
def test_competition_has_c_and_lists_its_choices(argv):
    text = " ".join(_help(argv).split())
    assert "-c NAME, --competition NAME" in text
    for spec in list_competitions():
        assert spec.name in text.replace("- ", "-")  # argparse may wrap a name at its hyphen


@pytest.mark.parametrize("argv", [["predict", "RUN"], ["ensemble", "RUN"], ["pack", "-c", "hcd", "--data", "D",
                                                                           "--size", "8"],
                                  ["kernel", "run", "-c", "hcd", "--data", "D", "--weights", "W"]], ids=lambda a: a[0])
def test_every_output_folder_is_out(argv):
    args = build_parser().parse_args([*argv, "--out", "somewhere"])
    assert "somewhere" in vars(args).values()


def test_bundle_and_kernel_are_built_then_pushed_the_same_way():
    """kit bundle build RUN / kit bundle push DIR, as kit kernel build / kit kernel push DIR."""
    parser = build_parser()
    for command in ("bundle", "kernel"):
        assert parser.parse_args([command, "push", "somewhere"]).folder == "somewhere"
        assert "build" in _help([command]) and "push" in _help([command])
    assert parser.parse_args(["bundle", "build", "runs/a", "--owner", "me", "--out", "b"]).run_dir == "runs/a"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        parser.parse_args(["bundle", "runs/a", "--owner", "me"])  # the action is named, as for kit kernel
    assert "invalid choice: 'runs/a' (choose from 'build', 'wheels', 'push')" in err.getvalue()


def test_c_works_like_competition(tmp_path, capsys):
    assert main(["demo-data", "-c", "hcd", "--out", str(tmp_path / "d"), "--n", "12"]) == 0
    assert (tmp_path / "d" / "train_labels.csv").is_file()


def test_a_folds_file_sets_the_fold_count(demo_data, tmp_path):
    from kit.commands import with_folds_file
    from kit.config import load_config

    data = demo_data("histopathologic-cancer-detection", n=40)
    folds = tmp_path / "folds.csv"
    assert main(["folds", "-c", "hcd", "--data", str(data), "--out", str(folds), "--n-folds", "3"]) == 0
    assert pd.read_csv(folds)["fold"].max() == 2
    cfg = load_config("hcd")
    assert cfg.n_folds == 5 and with_folds_file(cfg, folds).n_folds == 3
    assert with_folds_file(cfg, tmp_path / "missing.csv").n_folds == 5  # the folds check names it later


def test_kit_train_takes_the_fold_count_from_the_folds_file(demo_data, tmp_path, capsys):
    data = demo_data("histopathologic-cancer-detection", n=40)
    folds = tmp_path / "folds.csv"
    assert main(["folds", "-c", "hcd", "--data", str(data), "--out", str(folds), "--n-folds", "3"]) == 0
    sets = [a for s in ("model.name=test_resnet", "model.img_size=32", "train.epochs=1", "train.device=cpu",
                        "train.warmup_epochs=0") for a in ("--set", s)]
    assert main(["train", "-c", "hcd", "--data", str(data), "--out", str(tmp_path / "run"), "--folds-file",
                 str(folds), "--folds", "0", "--no-progress", *sets]) == 0, capsys.readouterr().err
    assert "folds 0 of 3" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# Every command's --help: a shared flag means the same everywhere (it comes from kit/commands/flags.py)


def all_parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every parser of kit by its command words: () for kit itself, ("kernel", "run"), ..."""
    out = {}

    def walk(parser, words):
        out[words] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*words, name))

    walk(build_parser(), ())
    return out


def help_text(argv: list[str]) -> str:
    return _help(argv)


SHARED = {"-c": "competition", "--competition": "competition", "--data": "data", "--out": "out",
          "--config": "config", "--set": "set", "--tta": "tta", "--merge": "merge", "--fold-merge": "fold_merge",
          "--device": "device", "--submissions": "submissions", "--out-dir": "deprecated"}


def test_every_help_walks_and_shared_flags_come_from_one_place():
    """Each command's --help prints; every shared spelling is defined by kit/commands/flags.py (the same help,
    metavar, choices), a run folder read is the positional RUN_DIR, and --out is what the command writes."""
    parsers = all_parsers()
    assert len(parsers) > 20
    wrong = []
    for words, parser in parsers.items():
        assert parser.format_help()  # every --help renders
        for action in parser._actions:
            for spelling in action.option_strings:
                want = SHARED.get(spelling)
                if want and getattr(action, "kit_flag", None) not in (want, "deprecated"):
                    wrong.append(f"kit {' '.join(words)} {spelling}: not defined by kit.commands.flags")
            if spelling_is_out(action) and getattr(action, "kit_flag", None) == "out":
                assert action.help.startswith("what this command writes: "), (words, action.help)
            if not action.option_strings and action.metavar == "RUN_DIR":
                assert getattr(action, "kit_flag", None) == "run_dir", words
    assert not wrong, "\n".join(wrong)
    # one meaning: where --data appears, it is the competition data folder; --tta has the same choices
    for words, parser in parsers.items():
        for action in parser._actions:
            if "--data" in action.option_strings:
                assert action.help.startswith("the competition data folder"), words
            if "--tta" in action.option_strings:
                assert tuple(action.choices) == ("1", "2", "4", "8"), words


def spelling_is_out(action) -> bool:
    return "--out" in action.option_strings


def test_closed_sets_are_argparse_choices_that_match_the_registries():
    from kit.commands import flags
    from kit.ensemble import BLENDS, list_blends
    from kit.tta import VIEW_SETS, list_merges

    assert set(flags.TTA_SETS) == set(VIEW_SETS.names())
    assert set(flags.TTA_MERGES) == set(list_merges())
    assert set(flags.BLEND_METHODS) == set(list_blends())
    assert set(flags.FOLD_MERGES) == {n for n, b in BLENDS.items() if not b.fitted}
    err = io.StringIO()
    for argv in (["predict", "R", "--tta", "3"], ["predict", "R", "--merge", "median"],
                 ["ensemble", "R", "--method", "best"], ["predict", "R", "--fold-merge", "fit"]):
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
            build_parser().parse_args(argv)
    assert err.getvalue().count("invalid choice") == 4


def test_old_spellings_still_work_with_a_one_line_note(capsys):
    parser = build_parser()
    assert parser.parse_args(["predict", "R", "--out-dir", "subs"]).out_dir == "subs"
    assert parser.parse_args(["predict", "R", "--submissions", "subs"]).out_dir == "subs"
    assert parser.parse_args(["pack", "-c", "hcd", "--data", "D", "--size", "8", "--out", "x"]).cache_dir == "x"
    args = parser.parse_args(["kernel", "train", "-c", "hcd", "--owner", "me", "--out-run", "runs/r"])
    assert args.out_run == "runs/r" and args.competition == "hcd"  # kit kernel train takes -c like the others
    args = parser.parse_args(["stack", "-c", "isic-2024", "--runs", "a", "b", "--out", "s"])
    assert args.old_runs == ["a", "b"] and args.run_dirs == []
    err = capsys.readouterr().err.splitlines()
    assert err == ["kit predict: note: --out-dir is an old spelling of --submissions; use --submissions",
                   "kit pack: note: --out is an old spelling of --cache-dir; use --cache-dir",
                   "kit kernel train: note: --out-run is an old spelling of --run; use --run",
                   "kit stack: note: --runs is an old spelling of the run folders as arguments (kit stack -c NAME RUN "
                   "[RUN ...]); use the run folders as arguments (kit stack -c NAME RUN [RUN ...])"]


def test_kernel_run_on_a_laptop_does_not_write_to_kaggle_working():
    args = build_parser().parse_args(["kernel", "run", "-c", "hcd", "--data", "D", "--weights", "W"])
    assert args.working is None  # resolved when run: /kaggle/working inside a kernel, else the current folder


def test_train_device_is_predicts_device(demo_data, tmp_path, capsys):
    """kit train --device D means --set train.device=D (kit predict's --device)."""
    data = demo_data("histopathologic-cancer-detection", n=40)
    sets = [a for s in ("model.name=test_resnet", "model.img_size=32", "train.epochs=1", "train.warmup_epochs=0",
                        "n_folds=2") for a in ("--set", s)]
    assert main(["train", "-c", "hcd", "--data", str(data), "--out", str(tmp_path / "run"), "--folds", "0",
                 "--device", "cpu", "--no-progress", *sets]) == 0, capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["device"] == "cpu"
