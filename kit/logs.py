"""kit's output goes through :mod:`logging`, as timm's and optuna's does: each library module logs to its own logger
under ``"kit"`` (``log = logging.getLogger(__name__)``), so a notebook or a Kaggle kernel can quiet it
(``logging.getLogger("kit").setLevel(logging.WARNING)``) or send it elsewhere.

The ``kit`` command shows the records with :func:`console_logging`: the plain message, INFO on stdout and WARNING or
worse on stderr, which is what kit printed before it logged. The handler writes to whatever ``sys.stdout`` and
``sys.stderr`` are at that moment, so a run's ``train.log`` (the tee of :meth:`kit.rundir.RunDir.logging`), a fold
process's log file and pytest's capture all receive them. Progress bars are not log records (:mod:`kit.progress`).
Without a handler (kit imported as a library), Python shows warnings and errors only, on stderr.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

__all__ = ["ROOT", "console_logging"]

ROOT = "kit"


class _Console(logging.Handler):
    """Plain messages on the current stdout (below WARNING) or stderr, flushed at once (a killed run keeps them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging's contract: a failing handler reports itself and never raises into the caller
            self.handleError(record)


@contextmanager
def console_logging(level: int = logging.INFO) -> Iterator[None]:
    """Show the ``kit`` logger's records of ``level`` and above on the console for the block (what the ``kit``
    command and each fold process of ``kit train --devices`` do). Nested blocks add no second handler."""
    logger = logging.getLogger(ROOT)
    if any(isinstance(h, _Console) for h in logger.handlers):
        yield
        return
    handler = _Console()
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)
