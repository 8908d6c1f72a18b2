"""`kit submit` with the real kaggle client against a loopback fake of the Kaggle API (tests/fake_kaggle_server.py).

Each upload runs in a subprocess with a throwaway HOME, KAGGLE_CONFIG_DIR and TMPDIR and a from-scratch environment:
the client reads its configuration when it is imported, and no real credential may leak into a test.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_kaggle_server import FakeKaggle

from kit.errors import DataError
from kit.kaggle import LOG_COLUMNS, SubmissionResult, append_log

REPO = Path(__file__).resolve().parents[1]
HCD = "histopathologic-cancer-detection"
START, CREATE, LIST = (f"competitions.CompetitionApiService/{m}"
                       for m in ("StartSubmissionUpload", "CreateSubmission", "ListSubmissions"))
# kit.cli.main, then one line saying whether the kaggle client was imported (it must not be when kit stops early)
DRIVER = ("import sys\nfrom kit.cli import main\nrc = main(sys.argv[1:])\n"
          "print('kaggle imported:', 'kaggle' in sys.modules, file=sys.stderr)\nsys.exit(rc)")


@dataclass
class Run:
    rc: int
    out: str
    err: str
    log: Path

    @property
    def kaggle_imported(self) -> bool:
        return "kaggle imported: True" in self.err

    def rows(self) -> list[dict[str, str]]:
        with open(self.log, newline="") as f:
            return list(csv.DictReader(f))

    def text(self) -> str:
        """Everything kit showed or wrote, where no credential may appear."""
        return self.out + self.err + (self.log.read_text() if self.log.exists() else "")


@pytest.fixture
def hcd(demo_data) -> Path:
    return demo_data(HCD, n=20)


@pytest.fixture
def good_csv(hcd, tmp_path) -> Path:
    ids = [row["id"] for row in csv.DictReader(open(hcd / "sample_submission.csv"))]
    path = tmp_path / "sub.csv"
    path.write_text("id,label\n" + "".join(f"{i},{k / 10:.1f}\n" for k, i in enumerate(ids)))
    return path


def base_env(tmp_path: Path, fake: FakeKaggle) -> dict[str, str]:
    """A from-scratch environment: throwaway home, config and temp folders, calls routed to the fake."""
    for name in ("home", "kaggle-config", "tmp"):
        (tmp_path / name).mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HOME": str(tmp_path / "home"),
            "KAGGLE_CONFIG_DIR": str(tmp_path / "kaggle-config"), "TMPDIR": str(tmp_path / "tmp"), **fake.env()}


def key_env(fake: FakeKaggle, key: str | None = None) -> dict[str, str]:
    return {"KAGGLE_USERNAME": fake.username, "KAGGLE_KEY": key or fake.key}


def kit_submit(tmp_path: Path, hcd: Path, path: Path, env: dict[str, str], *extra: str) -> Run:
    cmd = [sys.executable, "-c", DRIVER, "submit", "--competition", "hcd", "--data", str(hcd), str(path),
           "-m", "fold ensemble, 8 TTA", "--wait", "5", "--poll-every", "0.05", *extra]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return Run(p.returncode, p.stdout, p.stderr, tmp_path / "submissions" / "log.csv")


def assert_clean_failure(run: Run, fake: FakeKaggle) -> None:
    assert run.rc == 1, run.err
    assert "Traceback" not in run.err
    assert fake.key not in run.text() and fake.token not in run.text()


def test_submit_uploads_the_validated_bytes_polls_the_score_and_logs_it(tmp_path, hcd, good_csv):
    with FakeKaggle(pending_polls=2, public_score="0.9731") as fake:
        run = kit_submit(tmp_path, hcd, good_csv, {**base_env(tmp_path, fake), **key_env(fake)})
    assert run.rc == 0, run.err
    assert "public score 0.9731" in run.out
    assert fake.endpoints() == [START, f"PUT /upload/{next(iter(fake.uploads))}", CREATE, LIST, LIST, LIST]
    start, put, create = fake.requests[:3]
    assert start.body == {"competitionName": HCD, "fileName": "sub.csv", "contentLength": good_csv.stat().st_size,
                          "lastModifiedEpochSeconds": int(good_csv.stat().st_mtime)}
    assert put.data == good_csv.read_bytes()
    assert create.body == {"competitionName": HCD, "blobFileTokens": put.path.rsplit("/", 1)[-1],
                           "submissionDescription": "fold ensemble, 8 TTA"}
    assert fake.requests[3].body["competitionName"] == HCD
    # legacy KAGGLE_USERNAME / KAGGLE_KEY: HTTP basic auth on every API call, no token check over the network
    assert all(r.headers["Authorization"].startswith("Basic ") for r in fake.requests if r.method == "POST")
    [row] = run.rows()
    assert tuple(row) == LOG_COLUMNS
    assert row["competition"] == HCD and row["file"] == str(good_csv) and row["message"] == "fold ensemble, 8 TTA"
    assert row["sha256"] == hashlib.sha256(good_csv.read_bytes()).hexdigest()
    assert (row["ref"], row["status"], row["public_score"]) == (str(fake.submissions[0].ref), "complete", "0.9731")
    assert fake.key not in run.text() and fake.username not in run.text()


def test_kaggle_json_in_the_config_dir_is_used(tmp_path, hcd, good_csv):
    with FakeKaggle() as fake:
        env = base_env(tmp_path, fake)
        config = Path(env["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
        config.write_text(json.dumps({"username": fake.username, "key": fake.key}))
        config.chmod(0o600)
        run = kit_submit(tmp_path, hcd, good_csv, env)
    assert run.rc == 0, run.err
    assert [r["status"] for r in run.rows()] == ["complete"]
    assert fake.key not in run.text()


def test_access_token_is_checked_then_sent_as_bearer(tmp_path, hcd, good_csv):
    with FakeKaggle() as fake:
        run = kit_submit(tmp_path, hcd, good_csv, {**base_env(tmp_path, fake), "KAGGLE_API_TOKEN": fake.token})
    assert run.rc == 0, run.err
    assert fake.endpoints()[0] == "security.OAuthService/IntrospectToken"
    assert fake.requests[1].headers["Authorization"] == f"Bearer {fake.token}"
    assert fake.token not in run.text()


def test_a_token_the_client_rejects_is_reported_without_its_help_text(tmp_path, hcd, good_csv):
    with FakeKaggle() as fake:
        run = kit_submit(tmp_path, hcd, good_csv, {**base_env(tmp_path, fake), "KAGGLE_API_TOKEN": "KGAT_revoked"})
    assert_clean_failure(run, fake)
    assert "could not authenticate with the credentials from KAGGLE_API_TOKEN" in run.err
    assert "KGAT_revoked" not in run.text() and "Authentication required" not in run.out
    assert fake.endpoints() == ["security.OAuthService/IntrospectToken"]  # nothing was uploaded


def test_failed_file_upload_is_an_error_not_a_silent_success(tmp_path, hcd, good_csv):
    # the client's competition_submit does not raise here: it returns "Could not submit to competition", ref 0
    with FakeKaggle(fail={"PUT": 403}) as fake:
        run = kit_submit(tmp_path, hcd, good_csv, {**base_env(tmp_path, fake), **key_env(fake)})
    assert_clean_failure(run, fake)
    assert f"upload of {good_csv} to {HCD} failed" in run.err and "Could not submit to competition" in run.err
    assert CREATE not in fake.endpoints()
    assert not run.log.exists()


@pytest.mark.parametrize("step", ["StartSubmissionUpload", "CreateSubmission"])
def test_rules_not_accepted_says_where_to_accept_them(tmp_path, hcd, good_csv, step):
    with FakeKaggle(fail={step: 403}) as fake:
        run = kit_submit(tmp_path, hcd, good_csv, {**base_env(tmp_path, fake), **key_env(fake)})
    assert_clean_failure(run, fake)
    assert "HTTP 403: You must accept this competition's rules" in run.err
    assert f"accept them at https://www.kaggle.com/competitions/{HCD}/rules" in run.err
    assert LIST not in fake.endpoints() and not run.log.exists()


def test_daily_limit(tmp_path, hcd, good_csv):
    with FakeKaggle(fail={"CreateSubmission": 429}) as fake:
        run = kit_submit(tmp_path, hcd, good_csv, {**base_env(tmp_path, fake), **key_env(fake)})
    assert_clean_failure(run, fake)
    assert f"daily submission limit for {HCD} reached (HTTP 429" in run.err and "00:00 UTC" in run.err
    assert not run.log.exists()


def test_wrong_key_is_reported_as_bad_credentials_without_echoing_it(tmp_path, hcd, good_csv):
    with FakeKaggle() as fake:
        run = kit_submit(tmp_path, hcd, good_csv, {**base_env(tmp_path, fake), **key_env(fake, key="wrong-key-42")})
    assert_clean_failure(run, fake)
    assert "Kaggle rejected the credentials from KAGGLE_USERNAME and KAGGLE_KEY (HTTP 401" in run.err
    assert "wrong-key-42" not in run.text()
    assert fake.endpoints() == [START]


@pytest.mark.parametrize("given, said", [({}, "no Kaggle credentials found: create an API token"),
                                         ({"KAGGLE_USERNAME": "someone"},
                                          "found a username in KAGGLE_USERNAME but no key")])
def test_missing_credentials_stop_before_the_client_is_imported(tmp_path, hcd, good_csv, given, said):
    with FakeKaggle() as fake:
        run = kit_submit(tmp_path, hcd, good_csv, {**base_env(tmp_path, fake), **given})
    assert_clean_failure(run, fake)
    assert said in run.err and "KAGGLE_API_TOKEN" in run.err
    assert str(tmp_path / "kaggle-config" / "kaggle.json") in run.err  # where a kaggle.json would be read
    assert not run.kaggle_imported  # its import-time authenticate() would print help and exit
    assert fake.requests == []


def test_invalid_csv_never_reaches_the_server(tmp_path, hcd, good_csv):
    bad = tmp_path / "bad.csv"
    bad.write_text("".join(good_csv.read_text().splitlines(keepends=True)[:-1]))  # one test id missing
    with FakeKaggle() as fake:
        run = kit_submit(tmp_path, hcd, bad, {**base_env(tmp_path, fake), **key_env(fake)})
    assert_clean_failure(run, fake)
    assert "1 test id missing" in run.err
    assert fake.requests == [] and not run.kaggle_imported and not run.log.exists()


def test_scoring_error_fails_and_is_logged(tmp_path, hcd, good_csv):
    with FakeKaggle(final_status="ERROR", error_description="Submission must have 20 rows") as fake:
        run = kit_submit(tmp_path, hcd, good_csv, {**base_env(tmp_path, fake), **key_env(fake)})
    assert_clean_failure(run, fake)
    assert "Kaggle could not score it: Submission must have 20 rows" in run.err
    assert [(r["status"], r["public_score"]) for r in run.rows()] == [("error", "")]


def test_still_pending_at_the_timeout_is_logged_as_pending(tmp_path, hcd, good_csv):
    with FakeKaggle(pending_polls=10**6) as fake:
        run = kit_submit(tmp_path, hcd, good_csv, {**base_env(tmp_path, fake), **key_env(fake)}, "--wait", "0.3")
    assert run.rc == 0, run.err
    assert "still pending" in run.out and f"kaggle competitions submissions {HCD}" in run.out
    assert [r["status"] for r in run.rows()] == ["pending"]
    assert fake.endpoints().count(LIST) >= 2


def test_a_made_submission_is_logged_even_when_polling_fails(tmp_path, hcd, good_csv):
    with FakeKaggle(fail={"ListSubmissions": 500}) as fake:
        run = kit_submit(tmp_path, hcd, good_csv, {**base_env(tmp_path, fake), **key_env(fake)})
    assert_clean_failure(run, fake)
    assert f"submission {fake.submissions[0].ref} was made" in run.err and "HTTP 500" in run.err
    assert [(r["ref"], r["status"]) for r in run.rows()] == [(str(fake.submissions[0].ref), "pending")]


def _result(ref: int, message: str) -> SubmissionResult:
    return SubmissionResult(HCD, Path("submissions/a.csv"), "ab" * 32, message, ref, "complete", 0.5)


def test_log_rows_are_appended_and_quoted(tmp_path):
    log = tmp_path / "submissions" / "log.csv"
    append_log(_result(1, "first"), log)
    append_log(_result(2, 'with, a comma and "quotes"\nand a newline'), log)
    rows = list(csv.DictReader(open(log, newline="")))
    assert [(r["ref"], r["message"]) for r in rows] == [("1", "first"), ("2", 'with, a comma and "quotes"\nand a newline')]
    assert [p.name for p in log.parent.iterdir()] == ["log.csv"]  # no temporary file left behind


def test_log_with_other_columns_is_not_touched(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("when,score\n2024-01-01,0.9\n")
    with pytest.raises(DataError, match=r"log.csv has columns \['when', 'score'\]"):
        append_log(_result(1, "x"), log)
    assert log.read_text() == "when,score\n2024-01-01,0.9\n"
