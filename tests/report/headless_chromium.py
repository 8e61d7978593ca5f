"""Headless Chromium driven over the Chrome DevTools Protocol on a pipe (``--remote-debugging-pipe``).

No Python dependency and no driver binary whose version must match the browser's: the browser
reads protocol messages (JSON, each ended by a NUL byte) on its file descriptor 3 and answers on
4. What a page logs comes from the protocol itself: ``Runtime.consoleAPICalled`` (console.error),
``Runtime.exceptionThrown`` (uncaught errors) and ``Log.entryAdded`` (the browser's own errors:
a resource that failed to load, a Content-Security-Policy violation, ...).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-pipe")


class BrowserError(RuntimeError):
    pass


class HeadlessChromium:
    """``with HeadlessChromium() as browser: page = browser.open(path)``."""

    def __init__(self, executable: Path = CHROMIUM, timeout: float = 60.0, window=(1400, 1000)) -> None:
        self.executable, self.timeout, self.window = executable, timeout, window
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict] = []

    def __enter__(self) -> "HeadlessChromium":
        self.profile = tempfile.mkdtemp(prefix="detkeeper-chromium-")
        to_browser_read, self._write = _high_pipe()
        self._read, from_browser_write = _high_pipe()
        self.log_path = Path(self.profile) / "chromium.log"
        argv = [str(self.executable), *FLAGS, f"--user-data-dir={self.profile}",
                f"--window-size={self.window[0]},{self.window[1]}", "about:blank"]
        actions = [(os.POSIX_SPAWN_DUP2, to_browser_read, 3), (os.POSIX_SPAWN_DUP2, from_browser_write, 4),
                   (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, str(self.log_path), os.O_WRONLY | os.O_CREAT, 0o600),
                   (os.POSIX_SPAWN_DUP2, 1, 2)]
        self.pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions, setpgroup=0)
        os.close(to_browser_read)
        os.close(from_browser_write)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call("Browser.close")
        except (BrowserError, OSError) as error:
            self.close_problem = str(error)  # it is killed below when it does not exit
        if not _exits_within(self.pid, 10.0):
            os.killpg(self.pid, signal.SIGKILL)  # its own process group, started above
            os.waitpid(self.pid, 0)
        for fd in (self._read, self._write):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    # -- protocol -----------------------------------------------------------------------------
    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str, session: str) -> dict:
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            event = self._receive()
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def _receive(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise BrowserError(f"no answer from Chromium in {self.timeout:.0f} s; its log: {self._log_tail()}")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed the pipe; its log: {self._log_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(none)"

    # -- pages --------------------------------------------------------------------------------
    def open(self, path: Path) -> "Page":
        """Load `path` in a new tab and wait for its load event (every image decoded or failed)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable", session=session)
        first_event = len(self.events)
        self.call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return Page(self, session, first_event)


class Page:
    def __init__(self, browser: HeadlessChromium, session: str, first_event: int) -> None:
        self.browser, self.session, self.first_event = browser, session, first_event

    def evaluate(self, expression: str):
        result = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and the browser's error log entries since the page opened."""
        found = []
        for event in self.browser.events[self.first_event:]:
            if event.get("sessionId") != self.session:
                continue
            params, method = event.get("params", {}), event.get("method")
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console." + params["type"] + ": " + " ".join(
                    str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                found.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        return found


def _exits_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return True
        time.sleep(0.1)
    return False


def _high_pipe() -> tuple[int, int]:
    """A pipe whose ends are numbered 10 or more, so duplicating them onto 3 and 4 in the child
    never overwrites one with the other."""
    read, write = os.pipe()
    high = fcntl.fcntl(read, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(write, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(read)
    os.close(write)
    return high


IMAGES = """Array.from(document.images).map(image => ({alt: image.alt, complete: image.complete,
  naturalWidth: image.naturalWidth, naturalHeight: image.naturalHeight, shownWidth: image.clientWidth}))"""


def page_problems(path: Path) -> tuple[list[str], list[dict]]:
    """Open `path` in headless Chromium: (console/browser errors and images that did not render, the images)."""
    with HeadlessChromium() as browser:
        page = browser.open(path)
        images = page.evaluate(IMAGES)
        problems = page.errors()
    problems += [f"image {image['alt']!r} did not render" for image in images
                 if not (image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0)]
    return problems, images


if __name__ == "__main__":  # python tests/report/headless_chromium.py PAGE.html (scripts/check_fresh_demo.sh)
    import sys

    found, rendered = page_problems(Path(sys.argv[1]))
    print(f"{sys.argv[1]}: {len(rendered)} images rendered, {len(found)} problem(s)")
    for problem in found:
        print(f"  {problem}")
    sys.exit(1 if found or not rendered else 0)
