"""A real headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no port, no
websocket library), for tests that must see a page the way a browser does: what it renders, which images decode,
what it logs as an error, which URLs it asks for.

    with HeadlessChromium(executable, tmp_path) as browser:
        page = browser.open(path)          # a PageReport
    assert page.errors == [] and all(w > 0 for w in page.image_widths)

Chromium reads the protocol's JSON messages, each ended by a NUL byte, on its fd 3 and writes its own on fd 4.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["HeadlessChromium", "PageReport", "find_chromium"]

PROBE = """JSON.stringify({
  title: document.title,
  text: document.body ? document.body.innerText : "",
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
  links: [...document.querySelectorAll("[src],[href]")].map(e => e.getAttribute("src") || e.getAttribute("href")),
})"""


def find_chromium() -> str | None:
    """$KIT_TEST_CHROMIUM (set by .ci/run), else chromium or google-chrome on the PATH."""
    return os.environ.get("KIT_TEST_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@dataclass
class PageReport:
    title: str
    text: str
    images: list[dict]
    links: list[str]
    requested: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""

    @property
    def image_widths(self) -> list[int]:
        return [i["width"] for i in self.images]


class HeadlessChromium:
    def __init__(self, executable: str, workdir: Path, timeout_s: float = 60.0):
        self.executable, self.workdir, self.timeout_s = executable, Path(workdir), timeout_s
        self._next_id, self._buffer, self.events = 0, b"", []

    # ------------------------------------------------------------------------------------------------ process
    def __enter__(self) -> HeadlessChromium:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-extensions", "--remote-debugging-pipe", f"--user-data-dir={self.workdir / 'profile'}",
                "about:blank"]
        self.log = open(self.workdir / "chromium.log", "wb")
        # the shell puts our pipe ends on the fds 3 and 4 that --remote-debugging-pipe expects
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-',
             self.executable, *args], pass_fds=(to_chrome_r, from_chrome_w), stdout=self.log, stderr=self.log)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.send("Browser.close")
        except (OSError, TimeoutError, RuntimeError):
            pass  # already gone: the kill below makes sure
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        self.log.close()

    # ----------------------------------------------------------------------------------------------- protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError(f"chromium said nothing for {self.timeout_s}s; see {self.workdir / 'chromium.log'}")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited; see {self.workdir / 'chromium.log'}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Send a command and wait for its answer, keeping the events that arrive meanwhile."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout_s
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    # ---------------------------------------------------------------------------------------------------- page
    def open(self, path: Path) -> PageReport:
        """Load a file in a fresh tab, wait for its load event, and report what the browser saw."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session)
        self.events.clear()
        self.send("Page.navigate", session, url=Path(path).resolve().as_uri())
        self.wait_for("Page.loadEventFired")
        probe = json.loads(self.send("Runtime.evaluate", session, expression=PROBE, returnByValue=True)
                           ["result"]["value"])
        shot = self.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
        report = PageReport(**probe, screenshot=base64.b64decode(shot["data"]))
        for e in self.events:
            report.requested += _requested(e)
            report.errors += _error(e)
        return report


def _requested(event: dict) -> list[str]:
    if event.get("method") == "Network.requestWillBeSent":
        return [event["params"]["request"]["url"][:120]]
    return []


def _error(event: dict) -> list[str]:
    """The event as an error line, if the browser reports one: a script exception, console.error, a failed load."""
    method, p = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        return [p["exceptionDetails"].get("text", "exception")]
    if method == "Runtime.consoleAPICalled" and p.get("type") == "error":
        return [" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))]
    if method == "Log.entryAdded" and p["entry"].get("level") == "error":
        return [f"{p['entry'].get('text')} ({p['entry'].get('url', '')[:120]})"]
    if method == "Network.loadingFailed":
        return [f"failed to load: {p.get('errorText')}"]
    return []
