"""Where the library's messages go: the ``kit`` logger, and the one handler that shows them on standard output.

Library modules report through ``logging.getLogger(__name__)`` (children of ``kit``), as timm and optuna do, so a
notebook can quiet or redirect them. The CLI (and a fold's own process) calls :func:`show_messages`: plain lines on
``sys.stdout`` as it is at the moment of each message, so ``train.log``'s tee and pytest's capture see them too.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["show_messages"]


class _CurrentStdout(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stdout`` is when a message comes (not when it was made)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the current sys.stdout is used instead
        pass


def show_messages(level: int = logging.INFO) -> None:
    """Show the ``kit`` logger's messages from ``level`` up on standard output (once, however often called)."""
    logger = logging.getLogger("kit")
    logger.setLevel(level)
    if not any(isinstance(h, _CurrentStdout) for h in logger.handlers):
        logger.addHandler(_CurrentStdout())
    logger.propagate = False  # a notebook's root handler would show every line twice
