"""The flags that several commands share, defined once: one spelling and one meaning per flag, in every command.

- ``RUN_DIR`` (positional): a run folder the command reads (``kit predict RUN_DIR``, ``kit report RUN_DIR``, ...).
- ``--data DIR``: the competition data folder, as Kaggle ships it.
- ``--out PATH``: what the command creates (a run, a stack, a folds file, a bundle or kernel folder, ...).
- ``--submissions DIR``: where submission CSVs go; ``--cache-dir DIR``: where packs go; ``--working DIR``: a
  kernel's output folder. Their old ``--out`` / ``--out-dir`` spellings still work with a one-line note.
- ``--config``, ``--set``, ``--tta``, ``--merge``, ``--fold-merge``, ``--device``: the same everywhere; closed sets
  are argparse ``choices`` (listed in ``--help``, an unknown value refused by argparse).

Each helper stamps its actions with ``kit_flag`` so that ``tests/test_flags.py`` can walk every command's parser and
check that a shared spelling always comes from here. Parsing imports nothing heavy: the closed sets are spelled
out here, and a test checks them against the registries they mirror (kit.tta, kit.ensemble).
"""

from __future__ import annotations

import argparse
import sys

TTA_SETS = ("1", "2", "4", "8")
"""kit.tta.VIEW_SETS: 1 (none), 2 (+hflip), 4 (flips), 8 (the dihedral group)."""
TTA_MERGES = ("mean", "gmean", "max", "logits")
"""kit.tta's merges of the views."""
FOLD_MERGES = ("mean", "rank", "gmean")
"""kit.ensemble's blends with equal weights (the folds of one run)."""
BLEND_METHODS = (*FOLD_MERGES, "fit")
"""kit.ensemble's blends of several runs (fit: weights chosen on the OOF)."""
DEVICE_HELP = "auto, cpu, cuda, cuda:1, ... (default auto)"


def _stamp(action: argparse.Action, name: str) -> argparse.Action:
    action.kit_flag = name
    return action


class _Deprecated(argparse.Action):
    """An old spelling of a flag: stores into the new flag's dest and says, in one line, what to write instead."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: {option_string} is an old spelling of {self.new}; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def deprecated(parser, old: list[str], new: str, dest: str, nargs=None) -> None:
    """``old`` spellings of ``new`` keep working (same ``dest``), with a one-line note when used."""
    for spelling in old:
        _stamp(parser.add_argument(spelling, dest=dest, action=_Deprecated, new=new, nargs=nargs), "deprecated")


def add_competition(parser, required: bool = False, help: str = "") -> None:
    """``-c/--competition NAME``, the same in every command (the kaggle CLI's habit), its choices in --help."""
    from kit.competitions import list_competitions

    specs = list_competitions()
    names = ", ".join(s.name for s in specs)
    aliases = ", ".join(f"{a}={s.name}" for s in specs for a in s.aliases)
    _stamp(parser.add_argument("-c", "--competition", required=required, default=None, metavar="NAME",
                               help=f"{help + '; ' if help else ''}one of: {names}"
                               + (f" (aliases: {aliases})" if aliases else "")), "competition")


def add_run_dir(parser, help: str = "a run folder written by kit train", nargs=None) -> None:
    """The positional ``RUN_DIR``: a run folder the command reads."""
    _stamp(parser.add_argument("run_dirs" if nargs else "run_dir", metavar="RUN_DIR", nargs=nargs, help=help),
           "run_dir")


def add_data(parser, required: bool = False, default_note: str = "") -> None:
    """``--data DIR``: the competition data folder."""
    _stamp(parser.add_argument("--data", required=required, default=None, metavar="DIR",
                               help="the competition data folder" + (f" ({default_note})" if default_note else "")),
           "data")


def add_out(parser, what: str, required: bool = False, default: str | None = None, metavar: str = "PATH") -> None:
    """``--out PATH``: what the command creates (``what`` says which kind of thing)."""
    shown = f" (default {default})" if default else ""
    _stamp(parser.add_argument("--out", required=required, default=default, metavar=metavar,
                               help=f"what this command writes: {what}{shown}"), "out")


def add_submissions(parser, old: tuple[str, ...] = ("--out", "--out-dir")) -> None:
    """``--submissions DIR``: where a submission CSV goes (``old``: its old spellings in this command)."""
    _stamp(parser.add_argument("--submissions", dest="out_dir", default="submissions", metavar="DIR",
                               help="the folder the submission CSV goes into (default submissions)"), "submissions")
    deprecated(parser, list(old), "--submissions", "out_dir")


def add_config(parser, note: str = "default: the competition's preset") -> None:
    """``--config PRESET``: a shipped preset's name or a YAML file."""
    _stamp(parser.add_argument("--config", default=None, metavar="PRESET",
                               help=f"a preset name (see kit/configs, `kit config show`) or a YAML file; {note}"),
           "config")


def add_set(parser, note: str = "") -> None:
    """``--set KEY=VALUE`` (repeatable) into ``overrides``."""
    _stamp(parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                               help="override a config key, e.g. --set train.epochs=3 (repeatable; `kit config "
                               "keys` lists them)" + (f"; {note}" if note else "")), "set")


def add_tta(parser, default: str = "8") -> None:
    _stamp(parser.add_argument("--tta", default=default, choices=TTA_SETS,
                               help=f"TTA view set: 1 (none), 2 (+hflip), 4 (flips), 8 (dihedral group); default "
                               f"{default}"), "tta")


def add_merge(parser) -> None:
    _stamp(parser.add_argument("--merge", default="mean", choices=TTA_MERGES,
                               help="how the TTA views of an image merge (default mean)"), "merge")


def add_fold_merge(parser) -> None:
    _stamp(parser.add_argument("--fold-merge", default="mean", choices=FOLD_MERGES,
                               help="how the folds of a run blend, with equal weights (default mean)"), "fold_merge")


def add_device(parser, default: str | None = "auto") -> None:
    """``--device``: where the model runs (``kit train --device D`` is ``--set train.device=D``)."""
    _stamp(parser.add_argument("--device", default=default, metavar="DEVICE",
                               help=f"where the model runs: {DEVICE_HELP}"), "device")
