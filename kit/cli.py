"""The ``kit`` command. Each subcommand lives in ``kit/commands/<name>.py`` with an ``add_parser(subparsers)``.

The library logs (:mod:`kit.console`); the command shows its messages as plain lines.
A ``KitError`` (bad input, unknown name) is printed as one line with a non-zero exit; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from kit import __version__
from kit.console import show_messages
from kit.errors import KitError
from kit.io import write_error

# Order is the order of ``kit --help``; modules are imported only to build their parser (they import heavy
# libraries such as torch inside their ``run`` functions).
COMMANDS = ["competitions", "demo_data", "folds", "check_data", "pack", "config", "train", "predict", "pseudo", "ensemble",
            "report", "runs", "submit", "bundle", "kernel", "tune", "stack", "show", "lr_find"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kit", description="k-fold training, TTA, ensembling and Kaggle "
                                     "submissions for histopathology and skin-lesion image competitions.")
    parser.add_argument("--version", action="version", version=f"kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"kit.commands.{name}").add_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Kaggle sends at its time limit, and `kill`) handled as Ctrl-C is: the same clean stop."""


def _raise_terminated(signum, frame):
    raise Terminated


def _stop_on_sigterm():
    """Turn SIGTERM into Terminated; the previous handler, or None outside the main thread (no signals there)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_messages()
    previous = _stop_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except KitError as e:
        print(f"kit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"kit {args.command}: stopped by SIGTERM (files are written atomically: the last checkpoint is intact; "
              "continue with kit train --resume)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"kit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of kit's
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except OSError as e:  # a write refused where no writer of kit's named its path first (a folder it creates)
        refused = write_error(e.filename or "a file", e)
        if refused is None:
            raise
        print(f"kit {args.command}: error: {refused}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
