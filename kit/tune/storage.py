"""Where a study lives, and how it survives killed workers and Ctrl-C.

Storage: an SQLAlchemy URL (SQLite file by default; PostgreSQL for many workers) opened with heartbeats. A trial
whose worker stopped beating is failed by the next worker that looks, and a copy with the same parameters is queued;
the worker that takes it adopts the dead trial's folder and resumes its folds from their ``last.pt``
(see kit.tune.study).

Ctrl-C is held while a storage call runs (``deferred_interrupt``): an interrupt inside an SQLAlchemy call would leave
the session broken, and the trial could not even be marked failed.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from kit.errors import ConfigError

__all__ = ["deferred_interrupt", "default_storage_url", "experimental_warnings_once", "open_storage", "redact_url"]

log = logging.getLogger(__name__)


@contextmanager
def experimental_warnings_once() -> Iterator[None]:
    """Optuna's ExperimentalWarnings of the block (heartbeats, the retry callback, matplotlib plots: each warns at
    every use) gathered into one line at its end; every other warning passes as usual."""
    features: list[str] = []
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ExperimentalWarning):
            found = re.match(r"(.*?) is (?:an )?experimental", str(message))
            name = (found.group(1) if found else str(message)).replace("Argument ", "").strip("`")
            name = name.rsplit(".", 1)[-1]  # the public function's name, not the private module that defines it
            if name not in features:
                features.append(name)
        else:
            original(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", ExperimentalWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            if features:
                log.warning(f"note: kit tune uses Optuna features marked experimental (their interface may change): "
                            f"{', '.join(features)}")


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C until the block (storage calls) is done, then deliver it.

    An interrupt inside an SQLAlchemy call leaves the session broken, and Optuna then cannot even mark the trial
    failed; delivered between calls, it fails the trial cleanly and kit queues it again. Outside the main thread
    (where signals cannot be handled) the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, Any]] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending and callable(previous):
        previous(*pending[0])  # Python's default handler raises KeyboardInterrupt
    elif pending and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


def default_storage_url(out: str | Path, study: str) -> str:
    return f"sqlite:///{(Path(out) / f'{study}.db').resolve()}"


def redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _connect(url: str, **kwargs: Any) -> RDBStorage:
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(4):
        try:
            return RDBStorage(url, **kwargs)
        except (IntegrityError, ProgrammingError, OperationalError):
            # workers started together on a fresh database race to create its tables (PostgreSQL: duplicate key,
            # SQLite: table already exists); the loser finds them made. A server that is down fails after ~5 s.
            time.sleep(0.5 * (attempt + 1))
    return RDBStorage(url, **kwargs)


def open_storage(url: str, heartbeat: int | None = 60, grace: int | None = None, max_retry: int = 1) -> RDBStorage:
    """An RDB storage; with ``heartbeat`` (seconds), trials of dead workers are failed and retried ``max_retry`` times.

    A running trial beats every ``heartbeat`` seconds; one silent for longer than ``grace`` (default 2x heartbeat)
    is failed by the next worker that looks, and the storage's stale-trial callback queues a copy that inherits its
    parameters, user attributes (its folder) and intermediate values.
    """
    from sqlalchemy.exc import ArgumentError, OperationalError

    sqlite = url.startswith("sqlite")
    if sqlite and url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # SQLite: wait for a lock held by another worker; servers: drop connections that died between trials
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    retry = (RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
             if heartbeat else None)
    try:
        return _connect(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=grace,
                        heartbeat_stale_trial_callback=retry)
    except ImportError as e:  # optuna wraps the missing driver module in a plain ImportError
        cause = e.__cause__ or e
        raise ConfigError(f"storage {redact_url(url)}: its database driver is not installed ({cause}); for "
                          f"PostgreSQL install kit[tune] (psycopg 3) and use postgresql+psycopg://user@host/db") from e
    except (ArgumentError, OperationalError, ValueError) as e:
        raise ConfigError(f"cannot open storage {redact_url(url)}: {str(e).splitlines()[0]}") from e
