"""Code competitions: submit a kernel version, which Kaggle re-runs on the hidden test set (ISIC 2024).

A code competition takes no CSV upload: Kaggle re-runs a version of the competitor's kernel and scores the
``submission.csv`` it writes. Before spending a submission on it, :func:`fetch_submission` checks that the version
finished and downloads its ``submission.csv`` (and kit's note of the run or stack it was made from,
``kit-submission.json``) through the official client, for the caller to validate; :func:`submit_code` then makes the
submission with the client's code-submission call (``kaggle competitions submit -k OWNER/SLUG -v N``), polls its
score and logs it in ``submissions/log.csv`` like a CSV upload.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kit.competitions import Competition
from kit.errors import ConfigError, KaggleError
from kit.io import sha256_file
from kit.kaggle import DEFAULT_LOG, SubmissionResult, api_errors, authenticated_client, submit_and_poll
from kit.kernel import ORIGIN, check_kernel_ref, kernel_status, read_origin
from kit.kernel_train import RUNNING

__all__ = ["OUTPUT_FILE", "check_code_competition", "fetch_submission", "kernel_version_ref", "submit_code"]

OUTPUT_FILE = "submission.csv"  # what Kaggle scores in a code competition's kernel output


def check_code_competition(spec: Competition) -> None:
    """Stop with one line when ``spec`` scores uploaded CSVs: a kernel cannot be submitted to it."""
    if not spec.code_competition:
        raise ConfigError(f"{spec.name} takes a CSV upload, not a kernel: download the kernel's output, then "
                          f"kit submit -c {spec.name} --data DIR OUTPUT/submission.csv -m MESSAGE")


def kernel_version_ref(kernel: str, version: int | None) -> str:
    """OWNER/SLUG/VERSION as the client writes a kernel version (OWNER/SLUG: its latest version)."""
    check_kernel_ref(kernel)
    if version is not None and version < 1:
        raise ConfigError(f"--version {version}: kernel versions are numbered from 1")
    return kernel if version is None else f"{kernel}/{version}"


def _check_finished(kernel: str, version: int | None) -> None:
    """One line unless the version ran to completion: still running, failed, or not there (a 404 from the client)."""
    which = kernel_version_ref(kernel, version)
    status, failure = kernel_status(kernel, version)
    if status in RUNNING:
        raise KaggleError(f"kernel {which} is still {status}: wait for it (kit kernel status {kernel} --wait 3600), "
                          "then submit")
    if status != "complete":
        raise KaggleError(f"kernel {which} did not finish ({status}: {failure or 'no message from Kaggle'}): fix it, "
                          "push a new version and submit that one")


def fetch_submission(spec: Competition, kernel: str, version: int | None,
                     into: str | os.PathLike) -> tuple[Path, str]:
    """(the finished version's ``submission.csv`` downloaded into ``into``, the run or stack it was made from,
    "" if its output does not say); one line when the version is not finished or wrote no ``submission.csv``."""
    check_code_competition(spec)
    which = kernel_version_ref(kernel, version)
    _check_finished(kernel, version)
    into = Path(into)
    api, source = authenticated_client()
    hints = {404: f"Kaggle has no output of kernel {which} visible to this account{{said}}"}
    with api_errors(f"kernel {which}", source, hints):
        api.kernels_output(which, str(into), file_pattern=f"^({re.escape(OUTPUT_FILE)}|{re.escape(ORIGIN)})$",
                           force=True, quiet=True)
    path = into / OUTPUT_FILE
    if not path.is_file():
        raise KaggleError(f"the output of kernel {which} holds no {OUTPUT_FILE}: Kaggle scores only that file; "
                          "does the kernel write it to /kaggle/working/? (kit kernel build's kernels do)")
    return path, read_origin(into / ORIGIN)


def submit_code(spec: Competition, kernel: str, version: int | None, path: Path, message: str,
                timeout: float = 600.0, poll_every: float = 10.0, log_path: str | os.PathLike = DEFAULT_LOG,
                run: str = "", cv: float | None = None) -> SubmissionResult:
    """Submit the kernel version whose output ``path`` is (validated by the caller), poll its score, log it."""
    check_code_competition(spec)
    which = kernel_version_ref(kernel, version)
    made = SubmissionResult(competition=spec.name, file=path, sha256=sha256_file(path), message=message, ref=0,
                            status="pending", run=run, cv=cv, kernel=which)
    api, source = authenticated_client()
    hints = {404: f"Kaggle found no competition {spec.name} open to this account or no kernel {which}{{said}}",
             400: f"Kaggle refused kernel {which} for {spec.name}{{said}}: is the kernel attached to the "
                  "competition's data, with the internet off?"}
    return submit_and_poll(api, source, made, lambda: api.competition_submit_code(
        OUTPUT_FILE, message, spec.name, kernel, version, quiet=True), timeout, poll_every, log_path, hints)
