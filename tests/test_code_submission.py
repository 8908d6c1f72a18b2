"""`kit submit --kernel` (a code competition: ISIC 2024) with the real kaggle client against the loopback fake of the
Kaggle API (tests/fake_kaggle_server.py): the kernel version is checked, its output downloaded and validated, then
submitted with the client's code-submission call, its score polled and logged."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fake_kaggle_server import FakeKaggle, Kernel
from test_kaggle_submit import DRIVER, LIST, Run, assert_clean_failure, base_env, key_env

I24 = "isic-2024-challenge"
KERNEL = "kit-test-user/kit-isic-2024-challenge"
STATUS, OUTPUT, CODE = ("kernels.KernelsApiService/GetKernelSessionStatus",
                        "kernels.KernelsApiService/ListKernelSessionOutput",
                        "competitions.CompetitionApiService/CreateCodeSubmission")


@pytest.fixture
def isic24(demo_data) -> Path:
    return demo_data(I24, n=20)


@pytest.fixture
def output(isic24) -> dict[str, bytes]:
    """A finished kit kernel's output: a valid submission.csv and kit's note of the stack it was made from."""
    ids = [row["isic_id"] for row in csv.DictReader(open(isic24 / "test-metadata.csv"))]
    csv_bytes = ("isic_id,target\n" + "".join(f"{i},{k / 10:.1f}\n" for k, i in enumerate(ids))).encode()
    note = json.dumps({"run": "isic24-stack", "bundle": "kit-test-user/kit-isic-2024-challenge-weights"}).encode()
    return {"submission.csv": csv_bytes, "kit-submission.json": note}


def fake_with_kernel(output: dict[str, bytes], versions: int = 2, **kw) -> FakeKaggle:
    fake = FakeKaggle(kernel_output=output, **kw)
    fake.kernels[KERNEL] = Kernel(KERNEL, versions=[{} for _ in range(versions)])
    return fake


def submit_kernel(tmp_path: Path, fake: FakeKaggle, *args: str) -> Run:
    cmd = [sys.executable, "-c", DRIVER, "submit", *args, "-m", "stack v2", "--wait", "5", "--poll-every", "0.05"]
    env = {**base_env(tmp_path, fake), **key_env(fake)}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return Run(p.returncode, p.stdout, p.stderr, tmp_path / "submissions" / "log.csv")


def test_a_finished_version_is_downloaded_validated_submitted_and_logged(tmp_path, isic24, output):
    with fake_with_kernel(output, pending_polls=1, public_score="0.1612") as fake:
        run = submit_kernel(tmp_path, fake, "-c", "isic-2024", "--kernel", KERNEL, "--version", "2",
                            "--data", str(isic24))
    assert run.rc == 0, run.err
    assert "public score 0.1612" in run.out and f"{KERNEL}/2" in run.out
    calls = [e for e in fake.endpoints() if not e.startswith("GET ")]
    assert calls == [STATUS, OUTPUT, CODE, LIST, LIST]
    status, listing = (r for r in fake.requests if r.endpoint in (STATUS, OUTPUT))
    assert status.body["versionLabel"] == listing.body["versionLabel"] == "v2"  # the version asked for, not the latest
    create = next(r for r in fake.requests if r.endpoint == CODE)
    assert create.body == {"competitionName": I24, "kernelOwner": "kit-test-user",
                           "kernelSlug": "kit-isic-2024-challenge", "kernelVersion": 2, "fileName": "submission.csv",
                           "submissionDescription": "stack v2"}
    [row] = run.rows()
    assert (row["competition"], row["file"], row["status"], row["public_score"]) == (I24, f"{KERNEL}/2", "complete",
                                                                                      "0.1612")
    assert row["run"] == "isic24-stack"  # from the kernel's output: the stack its bundle was built from
    assert row["sha256"] == hashlib.sha256(output["submission.csv"]).hexdigest()
    assert fake.key not in run.text()


def test_without_a_version_the_latest_is_checked_and_submitted(tmp_path, isic24, output):
    with fake_with_kernel(output) as fake:
        run = submit_kernel(tmp_path, fake, "-c", I24, "--kernel", KERNEL)
    assert run.rc == 0, run.err
    create = next(r for r in fake.requests if r.endpoint == CODE)
    assert "kernelVersion" not in create.body
    assert "versionLabel" not in next(r for r in fake.requests if r.endpoint == STATUS).body
    assert run.rows()[0]["file"] == KERNEL


@pytest.mark.parametrize("case, said", [
    ("failed", f"kernel {KERNEL}/2 did not finish (error: CUDA out of memory)"),
    ("running", f"kernel {KERNEL}/2 is still running"),
    ("no csv", f"the output of kernel {KERNEL}/2 holds no submission.csv"),
    ("no version", f"Kaggle has no version 5 of kernel {KERNEL}"),
    ("invalid", "is not a valid isic-2024-challenge submission"),
])
def test_what_cannot_be_submitted_stops_in_one_line_before_the_submission(tmp_path, isic24, output, case, said):
    if case == "no csv":
        output = {"kit-submission.json": output["kit-submission.json"]}
    if case == "invalid":
        output = {**output, "submission.csv": output["submission.csv"].replace(b",0.1\n", b",nan\n")}
    statuses = {"failed": {2: "ERROR"}, "running": {2: "RUNNING"}}.get(case, {})
    fake = fake_with_kernel(output, version_statuses=statuses,
                            kernel_failure="CUDA out of memory" if case == "failed" else "")
    with fake:
        run = submit_kernel(tmp_path, fake, "-c", I24, "--kernel", KERNEL, "--version",
                            "5" if case == "no version" else "2", "--data", str(isic24))
    assert_clean_failure(run, fake)
    assert said in run.err
    assert CODE not in fake.endpoints() and not run.log.exists()


def test_a_competition_that_takes_csvs_refuses_a_kernel_before_the_client_is_imported(tmp_path, output):
    with fake_with_kernel(output) as fake:
        run = submit_kernel(tmp_path, fake, "-c", "hcd", "--kernel", KERNEL, "--version", "2")
    assert_clean_failure(run, fake)
    assert "histopathologic-cancer-detection takes a CSV upload, not a kernel" in run.err
    assert not run.kaggle_imported and fake.requests == []


def test_a_csv_upload_to_a_code_competition_says_to_submit_the_kernel(tmp_path, isic24, output):
    path = tmp_path / "sub.csv"
    path.write_bytes(output["submission.csv"])
    with fake_with_kernel(output) as fake:
        run = submit_kernel(tmp_path, fake, "-c", I24, "--data", str(isic24), str(path))
    assert_clean_failure(run, fake)
    assert "isic-2024-challenge is a code competition" in run.err and "--kernel OWNER/SLUG" in run.err
    assert fake.requests == []


def test_the_fake_refuses_what_kaggle_refuses(tmp_path, isic24, output):
    """The imitation itself: no CSV upload to a code competition, no code submission of an unknown version."""
    with fake_with_kernel(output) as fake:
        assert fake._create({"competitionName": I24, "blobFileTokens": "t"})[0] == 400
        assert fake._create_code({"competitionName": "histopathologic-cancer-detection", "kernelOwner": "kit-test-user",
                                  "kernelSlug": "kit-isic-2024-challenge"})[0] == 400
        assert fake._create_code({"competitionName": I24, "kernelOwner": "kit-test-user",
                                  "kernelSlug": "kit-isic-2024-challenge", "kernelVersion": 3})[0] == 404
