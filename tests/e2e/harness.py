"""The pieces of the browser tests: the real ``thinktank serve`` process, the watch kept on every page
(nothing fetched off loopback, no console errors, no uncaught exceptions) and the helpers page tests share.

Fixtures live in ``conftest.py``; tests import the helpers from here::

    from .harness import E2EServer, login, screenshot
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import ConsoleMessage, Page, Route, ViewportSize, WebError

from ..fakes.process import clean_env, free_port

__all__ = [
    "ADMIN_EMAIL",
    "ADMIN_KEY",
    "ADMIN_PASSWORD",
    "CHROMIUM_ARGS",
    "DESKTOP",
    "MEMBER_PASSWORD",
    "PHONE",
    "E2EServer",
    "PageWatch",
    "chromium_path",
    "login",
    "screenshot",
    "screenshot_dir",
    "start_server",
]

ADMIN_KEY = "tt-e2e-admin-key-0123456789"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "e2e admin password, long enough"
MEMBER_PASSWORD = "correct horse battery staple"

DESKTOP = ViewportSize(width=1280, height=800)
PHONE = ViewportSize(width=390, height=844)
PHONE_MAX_WIDTH = 600
"""A page at most this wide is screenshotted as ``-phone``."""

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
LOCAL_SCHEMES = frozenset({"data", "blob", "about"})

CLIENT_ERROR_LOAD = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d\b")

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0


@dataclass
class E2EServer:
    """A running ``thinktank serve --demo`` with a known admin (key, and a user who can sign in)."""

    url: str
    admin_key: str
    admin_email: str
    admin_password: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def make_member(self, email: str, password: str = MEMBER_PASSWORD) -> str:
        """A member user made through the JSON API with the admin key; returns their id."""
        r = httpx.post(self.url + "/api/v1/users", headers={"Authorization": f"Bearer {self.admin_key}"},
                       json={"email": email, "password": password}, timeout=30)
        assert r.status_code == 201, f"POST /api/v1/users: {r.status_code} {r.text}"
        return str(r.json()["id"])

    def log(self) -> str:
        """What the server has written to stderr and stdout so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the server and anything it started (it leads its own process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        # No worker it started outlives it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _launch(root: Path, attempt: int, config: Path | None = None) -> E2EServer:
    port = free_port()
    env = {
        **clean_env(root),
        "THINKTANK_ADMIN_KEY": ADMIN_KEY,
        "THINKTANK_ADMIN_EMAIL": ADMIN_EMAIL,
        "THINKTANK_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    log_path = root / f"server-{attempt}.log"
    with log_path.open("wb") as log:  # a file, not a pipe: a chatty server never blocks on a full pipe
        proc = subprocess.Popen(
            [sys.executable, "-m", "thinktank", "serve", "--demo", "--host", "127.0.0.1", "--port", str(port),
             *(["--config", str(config)] if config is not None else [])],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return E2EServer(url=f"http://127.0.0.1:{port}", admin_key=ADMIN_KEY, admin_email=ADMIN_EMAIL,
                     admin_password=ADMIN_PASSWORD, proc=proc, log_path=log_path)


def _wait_ready(server: E2EServer) -> str | None:
    """None once ``/ready`` says ready; otherwise why not (the process exited, or the time ran out)."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        code = server.proc.poll()
        if code is not None:
            return f"exited with status {code}"
        try:
            r = httpx.get(server.url + "/ready", timeout=2)
            if r.status_code == 200 and r.json().get("status") == "ready":
                return None
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    return f"not ready after {READY_TIMEOUT:.0f}s (last answer from /ready: {last})"


def start_server(root: Path, config: Path | None = None) -> E2EServer:
    """Start ``python -m thinktank serve --demo`` (with ``config`` beside the demo, if given) on a free loopback
    port with its data under ``root`` and wait until ``/ready`` says ready. A port taken between choosing and
    binding is retried."""
    for attempt in range(3):
        server = _launch(root, attempt, config)
        why = _wait_ready(server)
        if why is None:
            return server
        server.stop()
        log = server.log()
        if "already in use" in log and attempt < 2:
            continue
        raise AssertionError(f"`thinktank serve --demo` did not start at {server.url}: {why}\n--- server output ---\n"
                             f"{log[-8000:]}")
    raise AssertionError("unreachable")


def chromium_path() -> str:
    return os.environ.get("THINKTANK_CHROMIUM") or "/usr/bin/chromium"


def screenshot_dir() -> Path:
    configured = os.environ.get("THINKTANK_SCREENSHOTS")
    return Path(configured) if configured else REPO_ROOT / "build" / "screenshots"


def _is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    return (parts.hostname or "") in LOOPBACK


@dataclass
class PageWatch:
    """What the pages of one browser context did that a test must not allow: requests off loopback
    (aborted, and recorded), console errors (CSP violations among them) and uncaught exceptions.

    The fixture fails the test at teardown when any list is not empty. A test that expects one of
    these takes it with the ``take_*`` methods, which return the list and empty it."""

    off_loopback: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    documents: set[str] = field(default_factory=set)
    """The URLs the pages navigated to (their 4xx answers are the app's to give, e.g. a refused sign-in)."""

    def route(self, route: Route) -> None:
        url = route.request.url
        if _is_loopback(url):
            if route.request.is_navigation_request():
                self.documents.add(url)
            route.fallback()
        else:
            self.off_loopback.append(url)
            route.abort("blockedbyclient")

    def console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        where = message.location.get("url", "")
        status = CLIENT_ERROR_LOAD.match(message.text)
        if status is not None and where in self.documents:
            return  # a page answered 4xx on purpose (Chromium logs it as an error); a 4xx asset is still caught
        self.console_errors.append(f"{message.text} ({where})" if where else message.text)

    def web_error(self, error: WebError) -> None:
        self.page_errors.append(str(error.error))

    def take_off_loopback(self) -> list[str]:
        taken, self.off_loopback = self.off_loopback, []
        return taken

    def take_console_errors(self) -> list[str]:
        taken, self.console_errors = self.console_errors, []
        return taken

    def take_page_errors(self) -> list[str]:
        taken, self.page_errors = self.page_errors, []
        return taken

    def problems(self) -> list[str]:
        return ([f"fetched off loopback (the app must work with no internet): {u}" for u in self.off_loopback]
                + [f"console error: {m}" for m in self.console_errors]
                + [f"uncaught exception in the page: {e}" for e in self.page_errors])


def login(page: Page, server: E2EServer, email: str, password: str) -> None:
    """Sign in through the login form and wait to land on ``/chat``."""
    page.goto(server.url + "/login")
    page.locator("form[action='/login'] input[name='email']").fill(email)
    page.locator("form[action='/login'] input[name='password']").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/chat(?:[?#].*)?$"))


def screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot, ``<name>-desktop.png`` or ``<name>-phone.png`` by the viewport's width,
    in ``$THINKTANK_SCREENSHOTS`` (default ``build/screenshots`` in the repository)."""
    viewport = page.viewport_size
    kind = "phone" if viewport is not None and viewport["width"] <= PHONE_MAX_WIDTH else "desktop"
    path = screenshot_dir() / f"{name}-{kind}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path
