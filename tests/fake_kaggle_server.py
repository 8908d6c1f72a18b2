"""A loopback imitation of the Kaggle API endpoints that kit's uploads call (kaggle 2.2.4): competition submissions
(a CSV upload, or a kernel version in a code competition), datasets (create, version, status, with blob uploads) and
kernels (push, status, output and log, of the latest version or of version vN, with the output's files downloaded
by GET).

The real client has no endpoint setting, but ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` (read when ``kaggle`` is imported)
makes it POST to ``http://localhost/api/v1/<Service>/<Method>``, and ``requests`` sends plain-http calls through
``HTTP_PROXY``; so ``FakeKaggle.env()`` points both at this server, which then sees absolute-form request lines
(``POST http://localhost/api/v1/... HTTP/1.1``). Every request is recorded (method, path, JSON body, uploaded bytes,
headers) for tests to assert on; ``fail`` makes one step answer an HTTP error the way Kaggle does (a JSON body
``{"code": N, "message": ...}``).
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

SERVICE = "competitions.CompetitionApiService"
ERROR_MESSAGES = {
    401: "Unauthenticated",
    403: "You must accept this competition's rules before you'll be able to submit.",
    404: "Competition not found",
    429: "Your team has used its daily Submission allowance (5) today, please try again tomorrow UTC",
}


@dataclass
class Request:
    method: str
    path: str
    body: dict | None
    data: bytes
    headers: dict[str, str]

    @property
    def endpoint(self) -> str:
        """``Service/Method`` for API calls, ``PUT /upload/...`` for the file upload."""
        prefix = "/api/v1/"
        return self.path[len(prefix):] if self.path.startswith(prefix) else f"{self.method} {self.path}"


@dataclass
class Submission:
    ref: int
    competition: str
    description: str
    file_name: str
    polls_left: int
    listed: int = 0


@dataclass
class Dataset:
    """A dataset as the fake holds it: one ``{file name: bytes}`` per version, as uploaded."""

    ref: str
    title: str
    license_name: str
    is_private: bool
    versions: list[dict[str, bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Kernel:
    """A pushed kernel: the SaveKernel request body of each version."""

    ref: str
    versions: list[dict] = field(default_factory=list)


@dataclass
class FakeKaggle:
    """The fake API: construct with the behaviour wanted, use as a context manager, then read ``requests``."""

    username: str = "kit-test-user"
    key: str = "kit-test-key-0123456789abcdef"
    token: str = "KGAT_kit-test-token-0123456789"
    fail: dict[str, int] = field(default_factory=dict)
    """``{"StartSubmissionUpload": 403, "PUT": 403, "CreateSubmission": 429, ...}``: answer that step with the code."""
    pending_polls: int = 0
    """ListSubmissions reports a new submission PENDING this many times before its final status."""
    final_status: str = "COMPLETE"
    public_score: str = "0.9731"
    error_description: str = "Submission must have 20 rows"
    kernel_status: str = "COMPLETE"
    """What GetKernelSessionStatus answers for a pushed kernel (QUEUED, RUNNING, COMPLETE, ERROR, ...)."""
    kernel_failure: str = ""
    kernel_output: dict[str, bytes] = field(default_factory=dict)
    """The files ListKernelSessionOutput lists (relative path -> bytes), each downloaded from /output/<n>."""
    kernel_log: str = ""
    """The log ListKernelSessionOutput returns (Kaggle's: a JSON list of {stream_name, time, data})."""
    statuses: list[str] = field(default_factory=list)
    """GetKernelSessionStatus answers these first, one per call, then kernel_status."""
    on_save: Callable[[FakeKaggle, dict], None] | None = None
    """Called with each SaveKernel body: a test's stand-in for Kaggle running the pushed script."""
    unknown_competitions: tuple[str, ...] = ()
    """Competition slugs SaveKernel reports as invalid sources (datasets are invalid unless created here)."""
    code_competitions: tuple[str, ...] = ("isic-2024-challenge",)
    """Competitions scored by re-running a kernel: CreateCodeSubmission only, no CSV upload (CreateSubmission)."""
    version_statuses: dict[int, str] = field(default_factory=dict)
    """GetKernelSessionStatus for a version label vN: this status, else kernel_status."""
    requests: list[Request] = field(default_factory=list)
    submissions: list[Submission] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    blob_names: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, Dataset] = field(default_factory=dict)
    kernels: dict[str, Kernel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def env(self) -> dict[str, str]:
        """Environment variables that send the real client's calls here (set both cases: lowercase wins)."""
        proxy = f"http://127.0.0.1:{self.port}"
        return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": proxy, "http_proxy": proxy,
                "NO_PROXY": "", "no_proxy": ""}

    def endpoints(self) -> list[str]:
        return [r.endpoint for r in self.requests]

    def __enter__(self) -> FakeKaggle:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- behaviour ---------------------------------------------------------------------------------------------------

    def authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("Authorization", "")
        basic = base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
        return auth in (f"Basic {basic}", f"Bearer {self.token}")

    def answer(self, request: Request) -> tuple[int, dict]:
        """(HTTP status, JSON reply) for one recorded request."""
        method = request.endpoint.rsplit("/", 1)[-1]
        step = "PUT" if request.method == "PUT" else method
        if step in self.fail:
            code = self.fail[step]
            return code, {"code": code, "message": ERROR_MESSAGES.get(code, "error")}
        if request.method == "PUT":
            self.uploads[request.path.rsplit("/", 1)[-1]] = request.data
            return 200, {}
        if request.method == "GET":  # an output file's download URL, as listed by ListKernelSessionOutput
            return 200, {}
        body = request.body or {}
        if method == "IntrospectToken":  # the access-token flow checks the token before any call
            ok = body.get("token") == self.token
            return 200, {"active": ok, "username": self.username if ok else ""}
        if not self.authorized(request.headers):
            return 401, {"code": 401, "message": ERROR_MESSAGES[401]}
        if method == "StartSubmissionUpload":
            token = f"blob-token-{len(self.requests)}"
            return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}
        if method == "CreateSubmission":
            return self._create(body)
        if method == "CreateCodeSubmission":
            return self._create_code(body)
        if method == "ListSubmissions":
            return 200, {"submissions": [self._listing(s) for s in reversed(self.submissions)
                                         if s.competition == body.get("competitionName")]}
        if method == "StartBlobUpload":
            token = f"blob-token-{len(self.requests)}"
            self.blob_names[token] = body.get("name", "")
            return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}
        if method in DATASET_METHODS:
            return DATASET_METHODS[method](self, body)
        if method in KERNEL_METHODS:
            return KERNEL_METHODS[method](self, body)
        return 404, {"code": 404, "message": f"no fake for {request.endpoint}"}

    # --- datasets ----------------------------------------------------------------------------------------------------

    def _files(self, files: list[dict]) -> tuple[dict[str, bytes], str | None]:
        """The uploaded files a create request names by token, or the first token never uploaded."""
        tokens = [f.get("token", "") for f in files]
        missing = next((t for t in tokens if t not in self.uploads), None)
        return {self.blob_names[t]: self.uploads[t] for t in tokens if t in self.uploads}, missing

    def _dataset_status(self, body: dict) -> tuple[int, dict]:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.datasets:
            return 404, {"code": 404, "message": f"Dataset {ref} not found"}
        return 200, {"status": "READY"}

    def _create_dataset(self, body: dict) -> tuple[int, dict]:
        ref = f"{body.get('ownerSlug')}/{body.get('slug')}"
        if ref in self.datasets:
            return 200, {"status": "Error", "error": f"dataset {ref} already exists"}
        files, missing = self._files(body.get("files", []))
        if missing:
            return 400, {"code": 400, "message": f"blob token {missing!r} was never uploaded"}
        self.datasets[ref] = Dataset(ref, body.get("title", ""), body.get("licenseName", ""),
                                     bool(body.get("isPrivate", False)), [files], [""])
        return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "Ok"}

    def _create_version(self, body: dict) -> tuple[int, dict]:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.datasets:
            return 404, {"code": 404, "message": f"Dataset {ref} not found"}
        version = body.get("body") or {}
        files, missing = self._files(version.get("files", []))
        if missing:
            return 400, {"code": 400, "message": f"blob token {missing!r} was never uploaded"}
        self.datasets[ref].versions.append(files)
        self.datasets[ref].notes.append(version.get("versionNotes", ""))
        return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "Ok"}

    # --- kernels -----------------------------------------------------------------------------------------------------

    def _save_kernel(self, body: dict) -> tuple[int, dict]:
        ref = body.get("slug", "")
        kernel = self.kernels.setdefault(ref, Kernel(ref))
        kernel.versions.append(body)
        if self.on_save is not None:
            self.on_save(self, body)
        return 200, {
            "ref": f"/code/{ref}", "url": f"https://www.kaggle.com/code/{ref}", "versionNumber": len(kernel.versions),
            "kernelId": 1000 + list(self.kernels).index(ref),
            "invalidDatasetSources": [d for d in body.get("datasetDataSources", []) if d not in self.datasets],
            "invalidCompetitionSources": [c for c in body.get("competitionDataSources", [])
                                          if c in self.unknown_competitions]}

    def _version(self, ref: str, label: str | None) -> tuple[int | None, tuple[int, dict] | None]:
        """(the version a versionLabel "vN" names, None for the latest; or the 404 Kaggle answers for a kernel or
        version it does not have)."""
        if ref not in self.kernels:
            return None, (404, {"code": 404, "message": f"Kernel {ref} not found"})
        if not label:
            return None, None
        number = int(label[1:]) if label[:1] == "v" and label[1:].isdigit() else 0
        if not 1 <= number <= len(self.kernels[ref].versions):
            return None, (404, {"code": 404, "message": f"Kernel version {label} of {ref} not found"})
        return number, None

    def _kernel_status(self, body: dict) -> tuple[int, dict]:
        ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
        version, refused = self._version(ref, body.get("versionLabel"))
        if refused:
            return refused
        if version in self.version_statuses:
            reply = {"status": self.version_statuses[version]}
        else:
            reply = {"status": self.statuses.pop(0) if self.statuses else self.kernel_status}
        if self.kernel_failure:
            reply["failureMessage"] = self.kernel_failure
        return 200, reply

    def _kernel_output(self, body: dict) -> tuple[int, dict]:
        ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
        _, refused = self._version(ref, body.get("versionLabel"))
        if refused:
            return refused
        files = [{"fileName": name, "url": f"http://localhost/output/{i}"} for i, name in enumerate(self.kernel_output)]
        return 200, {"files": files, "log": self.kernel_log}

    def output_file(self, path: str) -> bytes | None:
        """The bytes behind an output file's URL (/output/<n>), None for an unknown one."""
        names = list(self.kernel_output)
        n = path.rsplit("/", 1)[-1]
        return self.kernel_output[names[int(n)]] if path.startswith("/output/") and n.isdigit() and int(n) < len(
            names) else None

    def _create(self, body: dict) -> tuple[int, dict]:
        token = body.get("blobFileTokens", "")
        if body.get("competitionName", "") in self.code_competitions:
            return 400, {"code": 400, "message": "Submissions to this competition must be made from a notebook"}
        if token not in self.uploads:
            return 400, {"code": 400, "message": f"blob token {token!r} was never uploaded"}
        ref = 50_000_000 + len(self.submissions) + 1
        self.submissions.append(Submission(ref, body.get("competitionName", ""), body.get("submissionDescription", ""),
                                           token, self.pending_polls))
        return 200, {"message": "Successfully submitted to " + body.get("competitionName", ""), "ref": ref}

    def _create_code(self, body: dict) -> tuple[int, dict]:
        """A code submission names the kernel by owner, slug and (optionally) version, and its output file."""
        competition = body.get("competitionName", "")
        if competition not in self.code_competitions:
            return 400, {"code": 400, "message": f"Competition {competition} does not accept notebook submissions"}
        ref = f"{body.get('kernelOwner')}/{body.get('kernelSlug')}"
        version = body.get("kernelVersion")
        _, refused = self._version(ref, None if version is None else f"v{version}")
        if refused:
            return refused
        ref_number = 50_000_000 + len(self.submissions) + 1
        self.submissions.append(Submission(ref_number, competition, body.get("submissionDescription", ""),
                                           body.get("fileName", ""), self.pending_polls))
        return 200, {"message": "Your notebook was successfully submitted to " + competition, "ref": ref_number}

    def _listing(self, s: Submission) -> dict:
        s.listed += 1
        done = s.listed > s.polls_left
        item = {"ref": s.ref, "description": s.description, "fileName": "submission.csv",
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "status": self.final_status if done else "PENDING"}
        if done and self.final_status == "COMPLETE":
            item["publicScore"] = self.public_score
        if done and self.final_status == "ERROR":
            item["errorDescription"] = self.error_description
        return item


DATASET_METHODS = {"GetDatasetStatus": FakeKaggle._dataset_status, "CreateDataset": FakeKaggle._create_dataset,
                   "CreateDatasetVersion": FakeKaggle._create_version}
KERNEL_METHODS = {"SaveKernel": FakeKaggle._save_kernel, "GetKernelSessionStatus": FakeKaggle._kernel_status,
                  "ListKernelSessionOutput": FakeKaggle._kernel_output}


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return out
            out += handler.rfile.read(size)
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _handler_for(fake: FakeKaggle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            data = _read_body(self)
            body = None
            if self.command == "POST" and data:
                body = json.loads(data)
            request = Request(self.command, urlsplit(self.path).path, body, data if self.command == "PUT" else b"",
                              dict(self.headers.items()))
            with fake._lock:
                fake.requests.append(request)
                status, reply = fake.answer(request)
                download = fake.output_file(request.path) if self.command == "GET" else None
            payload = json.dumps(reply).encode() if download is None else download
            if self.command == "GET" and download is None:
                status, payload = 404, b"no such output file"
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if download is None else "application/octet-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_POST = _serve
        do_PUT = _serve
        do_GET = _serve

        def log_message(self, format, *args) -> None:  # keep pytest output clean; the requests are recorded
            pass

    return Handler
