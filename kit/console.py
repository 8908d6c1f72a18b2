"""Where the library's messages go: the ``kit`` logger, and the one handler that shows them on the console.

Library modules report through ``logging.getLogger(__name__)`` (children of ``kit``), as timm and optuna do, so a
notebook can quiet or redirect them. The CLI (a fold's own process, the scripts) calls :func:`show_messages`: plain
lines, INFO on ``sys.stdout`` and warnings and errors on ``sys.stderr`` (where kit printed them before it logged),
each stream as it is at the moment of each message, so ``train.log``'s tee and pytest's capture see them too.
Progress bars are not messages (:mod:`kit.progress`).
"""

from __future__ import annotations

import logging
import sys

__all__ = ["show_messages"]


class _CurrentStdout(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stdout`` (below WARNING) or ``sys.stderr`` is when a message
    comes (not when the handler was made)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.level_now = logging.INFO

    def emit(self, record: logging.LogRecord) -> None:
        self.level_now = record.levelno
        super().emit(record)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr if self.level_now >= logging.WARNING else sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the current stream is used instead
        pass


def show_messages(level: int = logging.INFO) -> None:
    """Show the ``kit`` logger's messages from ``level`` up on the console (once, however often called)."""
    logger = logging.getLogger("kit")
    logger.setLevel(level)
    if not any(isinstance(h, _CurrentStdout) for h in logger.handlers):
        logger.addHandler(_CurrentStdout())
    logger.propagate = False  # a notebook's root handler would show every line twice
