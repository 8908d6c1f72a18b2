"""Kaggle uploads: submit a CSV with the official ``kaggle`` client, poll its score, log it to ``submissions/log.csv``.

``import kaggle`` authenticates at import time (and prints help, or exits, when it finds no credentials), so the
client is imported only inside :func:`upload_submission`, after :func:`credentials_source` has found credentials in
one of the client's own places. Credentials are never read into kit's messages or files: only where they came from.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from kit.competitions import get_competition
from kit.errors import DataError, KaggleError
from kit.io import sha256_file, write_text_atomic

__all__ = ["LOG_COLUMNS", "SubmissionResult", "api_errors", "append_log", "authenticated_client",
           "credentials_source", "submit_and_poll", "upload_submission"]

log = logging.getLogger(__name__)

DEFAULT_LOG = Path("submissions") / "log.csv"
LOG_COLUMNS = ("time", "competition", "file", "sha256", "message", "ref", "status", "public_score", "run", "cv")
_OLD_LOG_COLUMNS = LOG_COLUMNS[:-2]  # before the run and its CV were logged: upgraded when appended to
HOW_TO_AUTHENTICATE = ("create an API token at https://www.kaggle.com/settings/api, then either set KAGGLE_API_TOKEN "
                       "to it, or set KAGGLE_USERNAME and KAGGLE_KEY, or save the downloaded kaggle.json as {config} "
                       "(chmod 600); `kaggle auth login` also works")


@dataclass(frozen=True)
class SubmissionResult:
    """One submission as Kaggle reported it: ``status`` is complete, error, or pending (still scoring at timeout)."""

    competition: str
    file: Path
    sha256: str
    message: str
    ref: int
    status: str
    public_score: float | None = None
    error: str | None = None
    run: str = ""
    cv: float | None = None
    kernel: str = ""
    """A code competition's kernel, OWNER/SLUG/VERSION (``file`` is then its downloaded output)."""

    def summary(self) -> str:
        """One line for the terminal."""
        head = f"submission {self.ref} to {self.competition} ({self.kernel or self.file.name})"
        if self.status == "complete":
            score = "none yet" if self.public_score is None else f"{self.public_score:g}"
            return f"{head}: complete, public score {score}"
        if self.status == "error":
            return f"{head}: Kaggle could not score it: {self.error or 'no reason given'}"
        return f"{head}: still pending; see `kaggle competitions submissions {self.competition}` for its score"


def upload_submission(competition: str, path: str | os.PathLike, message: str, timeout: float = 600.0,
                      poll_every: float = 10.0, log_path: str | os.PathLike = DEFAULT_LOG, run: str = "",
                      cv: float | None = None) -> SubmissionResult:
    """Upload ``path`` to ``competition``, wait up to ``timeout`` s for its score, append it to ``log_path``."""
    slug = get_competition(competition).name  # resolves aliases; a Kaggle competition is registered under its slug
    path = Path(path)
    if not path.is_file():
        raise DataError(f"submission file {path} not found")
    made = SubmissionResult(competition=slug, file=path, sha256=sha256_file(path), message=message, ref=0,
                            status="pending", run=run, cv=cv)
    api, source = authenticated_client()
    return submit_and_poll(api, source, made, lambda: api.competition_submit(str(path), message, slug, quiet=True),
                           timeout, poll_every, log_path)


def submit_and_poll(api: Any, source: str, made: SubmissionResult, send: Callable[[], Any], timeout: float,
                    poll_every: float, log_path: str | os.PathLike = DEFAULT_LOG,
                    hints: Mapping[int, str] | None = None) -> SubmissionResult:
    """Make the submission ``made`` describes with ``send()`` (a client call answering a ``ref``), poll its score,
    log it. ``hints`` add messages for HTTP statuses of this call (``{said}`` where Kaggle's reason goes)."""
    slug, what = made.competition, made.kernel or made.file
    with _api_errors(slug, source, hints):
        response = send()
    ref = int(getattr(response, "ref", 0) or 0)
    if ref == 0:
        reply = getattr(response, "message", "") or "no reply"
        kind = "code submission" if made.kernel else "upload"
        raise KaggleError(f"{kind} of {what} to {slug} failed: the kaggle client answered '{reply}' and created no "
                          "submission (nothing counted against the daily limit); check the connection and retry")
    made = replace(made, ref=ref)
    try:
        submission = _wait_for_score(api, slug, ref, source, timeout, poll_every)
    except KaggleError as e:
        append_log(made, log_path)  # the submission exists and counts against the limit: never lose its row
        raise KaggleError(f"submission {ref} was made (logged in {log_path} as pending) but reading its score "
                          f"failed: {e}") from None
    result = replace(made, status=_status_name(submission), public_score=_score(submission),
                     error=getattr(submission, "error_description", None) or None)
    append_log(result, log_path)
    return result


# --- credentials: the client's own sources, in its order (kaggle 2.2.4 authenticate()) -----------------------------

def _config_dir() -> Path:
    """The folder the client reads kaggle.json from (KaggleApi.config_dir)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    legacy = Path(os.path.expanduser("~")) / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path(os.path.expanduser("~")) / ".config") / "kaggle"
    return legacy


def _nonempty_file(path: str | os.PathLike | None) -> bool:
    return bool(path) and Path(path).is_file() and bool(Path(path).read_text().strip())


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text() or "{}")
    except json.JSONDecodeError as e:
        # The client would silently ignore the file; say so instead of a baffling "no credentials".
        raise KaggleError(f"{path} is not valid JSON (line {e.lineno}); download a fresh kaggle.json from "
                          "https://www.kaggle.com/settings/api") from None
    return data if isinstance(data, dict) else {}


def credentials_source() -> str:
    """Name where the kaggle client will find credentials, never their value; raise KaggleError when it finds none."""
    env = os.environ
    if env.get("KAGGLE_KERNEL_RUN_TYPE") and env.get("KAGGLE_DATA_PROXY_URL") \
            and _nonempty_file(env.get("KAGGLE_API_V1_TOKEN")):
        return "the Kaggle notebook's token"
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    home_kaggle = Path(os.path.expanduser("~")) / ".kaggle"
    for name in ("access_token", "access_token.txt"):
        if _nonempty_file(home_kaggle / name):
            return str(home_kaggle / name)
    config = _config_dir() / "kaggle.json"
    stored = _read_json(config)
    user = "KAGGLE_USERNAME" if env.get("KAGGLE_USERNAME") else (str(config) if stored.get("username") else None)
    key = "KAGGLE_KEY" if env.get("KAGGLE_KEY") else (str(config) if stored.get("key") else None)
    if user and key:
        return user if user == key else f"{user} and {key}"
    oauth = _read_json(home_kaggle / "credentials.json")
    if oauth.get("refresh_token"):
        return str(home_kaggle / "credentials.json")
    half = f" (found a username in {user} but no key)" if user else (f" (found a key in {key} but no username)"
                                                                      if key else "")
    raise KaggleError("no Kaggle credentials found" + half + ": " + HOW_TO_AUTHENTICATE.format(config=config))


def _client(source: str) -> Any:
    """Import the kaggle client (it authenticates on import) and return its authenticated ``kaggle.api``."""
    printed = io.StringIO()
    # The client prints its generic login help when authentication fails; kit says what went wrong instead.
    with contextlib.redirect_stdout(printed):
        import kaggle
    # kaggle/__init__.py swallows authenticate()'s SystemExit; `_authenticated` is how it records success (2.2.4).
    if not getattr(kaggle.api, "_authenticated", True):
        raise KaggleError(f"the kaggle client could not authenticate with the credentials from {source} "
                          "(an access token is checked online: is it expired or revoked?); "
                          + HOW_TO_AUTHENTICATE.format(config=_config_dir() / "kaggle.json"))
    if printed.getvalue().strip():
        log.warning(printed.getvalue().rstrip())  # for example its warning about kaggle.json permissions
    return kaggle.api


def authenticated_client() -> tuple[Any, str]:
    """The kaggle client's ``kaggle.api``, authenticated, and where its credentials came from (for messages)."""
    source = credentials_source()  # raises before `import kaggle` can print its help or exit
    return _client(source), source


# --- HTTP errors -> one clear line ------------------------------------------------------------------------------------

def _reply_detail(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return (getattr(response, "reason", "") or "").strip()
    return str(body.get("message", "")).strip() if isinstance(body, dict) else ""


@contextlib.contextmanager
def api_errors(subject: str, source: str, hints: Mapping[int, str] | None = None) -> Iterator[None]:
    """Turn the client's HTTP, connection and input errors in a call about ``subject`` into one-line KaggleErrors.

    ``hints`` maps an HTTP status to its message, with ``{said}`` where the status and Kaggle's reason go.
    """
    import requests

    try:
        yield
    except requests.HTTPError as e:
        response = e.response
        code = getattr(response, "status_code", None)
        detail = (_reply_detail(response) if response is not None else "") or str(e)
        said = f" (HTTP {code}: {detail})"
        if code == 401:
            raise KaggleError(f"Kaggle rejected the credentials from {source}{said}: check the username and key "
                              "or token, or create a new token at https://www.kaggle.com/settings/api") from None
        if hints and code in hints:
            raise KaggleError(hints[code].format(said=said)) from None
        raise KaggleError(f"Kaggle API call for {subject} failed{said}") from None
    except requests.RequestException as e:
        raise KaggleError(f"could not reach Kaggle for {subject}: {type(e).__name__}: {e}") from None
    except ValueError as e:  # the client checks its inputs (slugs, metadata files) with ValueError
        raise KaggleError(f"the kaggle client refused the call for {subject}: {e}") from None


def _api_errors(slug: str, source: str,
                hints: Mapping[int, str] | None = None) -> contextlib.AbstractContextManager[None]:
    """:func:`api_errors` with what to do when a competition refuses a submission (``hints`` override these)."""
    return api_errors(slug, source, {
        403: f"Kaggle refused the submission to {slug}{{said}}: if you have not accepted the competition rules, "
             f"accept them at https://www.kaggle.com/competitions/{slug}/rules while signed in with this account; "
             "otherwise this account may not submit to it",
        404: f"Kaggle has no competition '{slug}' open to this account{{said}}",
        429: f"daily submission limit for {slug} reached{{said}}: the count resets at 00:00 UTC; nothing was "
             "submitted",
        **(hints or {}),
    })


# --- polling ----------------------------------------------------------------------------------------------------------

def _status_name(submission: Any) -> str:
    status = getattr(submission, "status", None)
    name = getattr(status, "name", "PENDING")
    return {"COMPLETE": "complete", "ERROR": "error"}.get(name, "pending")


def _score(submission: Any) -> float | None:
    raw = getattr(submission, "public_score", None)
    try:
        return float(raw) if raw not in (None, "") else None
    except ValueError:
        return None


def _wait_for_score(api: Any, slug: str, ref: int, source: str, timeout: float, poll_every: float) -> Any:
    """Poll the submission list until submission ``ref`` is complete or errored; None or pending at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with _api_errors(slug, source):
            submissions = api.competition_submissions(slug) or []
        found = next((s for s in submissions if s is not None and s.ref == ref), None)
        left = deadline - time.monotonic()
        if (found is not None and _status_name(found) != "pending") or left <= 0:
            return found
        time.sleep(min(poll_every, left))


# --- the log ----------------------------------------------------------------------------------------------------------

def append_log(result: SubmissionResult, log_path: str | os.PathLike = DEFAULT_LOG) -> Path:
    """Append one row to the submissions log, rewriting it atomically (a reader never sees half a row)."""
    log_path = Path(log_path)
    old = log_path.read_text() if log_path.is_file() else ""
    if old:
        header = next(csv.reader(io.StringIO(old)), [])
        if tuple(header) == _OLD_LOG_COLUMNS:  # every old row gains empty run and cv cells
            rows = list(csv.reader(io.StringIO(old)))
            upgraded = io.StringIO()
            csv.writer(upgraded, lineterminator="\n").writerows([LOG_COLUMNS] + [r + ["", ""] for r in rows[1:]])
            old, header = upgraded.getvalue(), list(LOG_COLUMNS)
        if tuple(header) != LOG_COLUMNS:
            raise DataError(f"{log_path} has columns {header}, expected {list(LOG_COLUMNS)}; move it aside")
        if not old.endswith("\n"):
            old += "\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if not old:
        writer.writerow(LOG_COLUMNS)
    writer.writerow([datetime.now(timezone.utc).isoformat(timespec="seconds"), result.competition,
                     result.kernel or str(result.file),
                     result.sha256, result.message, result.ref, result.status,
                     "" if result.public_score is None else repr(result.public_score), result.run,
                     "" if result.cv is None else repr(result.cv)])
    return write_text_atomic(log_path, old + out.getvalue())
