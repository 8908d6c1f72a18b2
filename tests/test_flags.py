"""Consistent flags: -c for --competition with its choices in --help, --out for every output folder, kit bundle and
kit kernel of the same shape (build, then push DIR), and a --folds-file that sets the fold count."""

from __future__ import annotations

import contextlib
import io

import pandas as pd
import pytest

from kit.cli import build_parser, main
from kit.competitions import list_competitions

COMMANDS_WITH_COMPETITION = [["check-data"], ["config", "show"], ["demo-data"], ["folds"], ["pack"], ["train"],
                             ["submit"], ["tune"], ["stack"], ["kernel", "build"], ["kernel", "run"], ["show", "batch"],
                             ["lr-find"]]


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
