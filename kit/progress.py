"""Progress of long work with an ETA: a tqdm bar in a terminal, one plain line per interval in a log.

Every long phase of kit (packing, loading, each epoch, validation, prediction, tune trials) reports through
:class:`Progress`, so they look alike and all speak when stdout/stderr is not a terminal (Kaggle notebooks, CI
logs), where a bar would print nothing useful. The interval of those plain lines is ``KIT_PROGRESS_EVERY`` seconds
(default 30; 0 prints every update).

A phase inside a larger one (an epoch inside a run of folds x epochs) passes its :class:`Eta` as ``overall``: each
unit done moves the overall count by ``overall_weight`` and every line ends with the overall ETA::

    fold 0 epoch 3/10: 120/500 steps (24%), 35.2 steps/s, ETA 11s; overall 14%, ETA 12m30s
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

__all__ = ["DEFAULT_EVERY_S", "Eta", "Progress", "fmt_duration", "progress_every"]

DEFAULT_EVERY_S = 30.0


def progress_every() -> float:
    """Seconds between two plain progress lines: ``$KIT_PROGRESS_EVERY``, else 30."""
    raw = os.environ.get("KIT_PROGRESS_EVERY", "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_EVERY_S
    except ValueError:
        return DEFAULT_EVERY_S


def fmt_duration(seconds: float) -> str:
    """``2h05m``, ``4m05s``, ``12s``."""
    s = int(round(max(seconds, 0.0)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Eta:
    """Work done against a total, and the time left at the rate measured since it was created."""

    def __init__(self, total: float, done: float = 0.0):
        self.total, self.done, self.new = float(total), float(done), 0.0
        self.start = time.monotonic()

    def update(self, n: float = 1.0) -> None:
        self.done += n
        self.new += n

    @property
    def rate(self) -> float:
        """Units per second of the work done here (work done before ``done`` at creation is not timed)."""
        return self.new / max(time.monotonic() - self.start, 1e-9)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 1.0

    def remaining_s(self) -> float | None:
        return max(self.total - self.done, 0.0) / self.rate if self.new > 0 else None

    def eta(self) -> str:
        left = self.remaining_s()
        return "?" if left is None else fmt_duration(left)

    def describe(self) -> str:
        return f"{100 * self.fraction:.0f}%, ETA {self.eta()}"


def _is_terminal(stream: TextIO) -> bool:
    stream = getattr(stream, "terminal", stream)  # a tee (kit.io.Tee) answers for the terminal behind it
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """``total`` units of one phase: ``update(n)`` as they are done, ``close()`` at the end (or use ``with``).

    Args:
        total: units in the phase.
        what: what is being done, e.g. ``"packing"`` or ``"fold 0 epoch 3/10"``.
        unit: the unit's name (plural is made by adding an s).
        done: units already done before (a resumed build).
        enabled: False shows nothing (the accounting still runs).
        every: seconds between plain lines; default :func:`progress_every`.
        overall: the enclosing phase's Eta, moved by ``overall_weight`` per unit.
        stream: where to write (default stderr).
    """

    def __init__(self, total: int, what: str, unit: str = "it", *, done: int = 0, enabled: bool = True,
                 every: float | None = None, overall: Eta | None = None, overall_weight: float = 1.0,
                 stream: TextIO | None = None):
        self.what, self.unit, self.enabled = what, unit, enabled
        self.eta = Eta(total, done)
        self.overall, self.overall_weight = overall, overall_weight
        self.every = progress_every() if every is None else every
        self.stream = sys.stderr if stream is None else stream
        self.last = time.monotonic()
        self.updates = 0
        self.postfix = ""
        self.postfix_fn: Callable[[], str] | None = None
        """Extra text computed only when shown (every 10th bar update, or a plain line): a loss read from the GPU."""
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            # the bar goes to the terminal itself, never into a log file that tees the stream
            self.bar = tqdm(total=total, initial=done, unit=unit, desc=what, leave=False, dynamic_ncols=True,
                            file=getattr(self.stream, "terminal", self.stream))

    @property
    def done(self) -> float:
        return self.eta.done

    @property
    def total(self) -> float:
        return self.eta.total

    def line(self) -> str:
        """One plain line: what, count, percent, rate, ETA, and the overall ETA when inside a larger phase."""
        e, units = self.eta, self.unit + "s"
        text = (f"{self.what}: {e.done:.0f}/{e.total:.0f} {units} ({100 * e.fraction:.0f}%), {e.rate:.1f} {units}/s, "
                f"ETA {e.eta()}")
        extra = self.postfix_fn() if self.postfix_fn is not None else self.postfix
        if extra:
            text += f", {extra}"
        if self.overall is not None:
            text += f"; overall {self.overall.describe()}"
        return text

    def set_postfix(self, text: str) -> None:
        """Extra text for the bar and the lines, e.g. ``loss 0.4132``."""
        self.postfix = text
        if self.bar is not None:
            extra = text + (f", overall ETA {self.overall.eta()}" if self.overall is not None else "")
            self.bar.set_postfix_str(extra, refresh=False)

    def update(self, n: float = 1) -> None:
        self.eta.update(n)
        if self.overall is not None:
            self.overall.update(n * self.overall_weight)
        if self.bar is not None:
            self.bar.update(n)
            self.updates += 1
            if self.postfix_fn is not None and self.updates % 10 == 1:
                self.set_postfix(self.postfix_fn())
            elif self.overall is not None and not self.postfix:
                self.bar.set_postfix_str(f"overall ETA {self.overall.eta()}", refresh=False)
        elif self.enabled and time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self.stream.write(self.line() + "\n")  # a progress bar's plain form, not a log record
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wrap(self, iterable, per_item=lambda item: 1):
        """Yield the items of ``iterable``, counting ``per_item(item)`` units for each; closes at the end."""
        try:
            for item in iterable:
                yield item
                self.update(per_item(item))
        finally:
            self.close()
