"""Browser tests: the real ``thinktank serve --demo`` (one per session) driven by Debian's Chromium
(one per session) through Playwright's sync API, a new browser context per test.

Fixtures: ``server`` (:class:`~tests.e2e.harness.E2EServer`), ``browser``, ``page`` (1280x800),
``phone_page`` (390x844) and ``watch`` (the :class:`~tests.e2e.harness.PageWatch` of the test's pages).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Error, Page, Playwright, ViewportSize, sync_playwright

from .harness import (
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    E2EServer,
    PageWatch,
    chromium_path,
    screenshot,
    start_server,
)

ACTION_TIMEOUT_MS = 10_000
"""How long a Playwright action or navigation may wait before the test fails (its default is 30 s)."""


FAILED_CALL = pytest.StashKey[bool]()
SERVER_LOG_TAIL = 6000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                           pytest.TestReport]:
    """A failed test's report carries the end of the server's log; its pages are screenshotted at teardown."""
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED_CALL] = True
        running = getattr(item, "funcargs", {}).get("server")
        if isinstance(running, E2EServer):
            report.sections.append(("thinktank serve (end of its log)", running.log()[-SERVER_LOG_TAIL:]))
    return report


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EServer]:
    running = start_server(Path(tmp_path_factory.mktemp("e2e-server")))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    executable = chromium_path()
    if not Path(executable).is_file():
        pytest.fail(f"no Chromium at {executable} (set THINKTANK_CHROMIUM to another path): the browser tests "
                    "need Debian's chromium: apt-get install -y chromium", pytrace=False)
    launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def watch() -> PageWatch:
    return PageWatch()


@contextmanager
def _watched_page(request: pytest.FixtureRequest, browser: Browser, server: E2EServer, watch: PageWatch,
                  viewport: ViewportSize, *, phone: bool) -> Iterator[Page]:
    context = browser.new_context(base_url=server.url, viewport=viewport, is_mobile=phone, has_touch=phone)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.route("**/*", watch.route)
    context.on("console", watch.console)
    context.on("weberror", watch.web_error)
    page = context.new_page()
    try:
        yield page
        if request.node.stash.get(FAILED_CALL, False):
            with contextlib.suppress(Error):  # the page as the failure left it, for whoever reads the report
                screenshot(page, "failed/" + re.sub(r"[^\w.-]+", "_", request.node.nodeid))
    finally:
        context.close()
    problems = watch.problems()
    if problems:
        pytest.fail("the page did what no page may:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def page(request: pytest.FixtureRequest, browser: Browser, server: E2EServer, watch: PageWatch) -> Iterator[Page]:
    """A desktop page (1280x800) in a fresh context whose base URL is the server's."""
    with _watched_page(request, browser, server, watch, DESKTOP, phone=False) as p:
        yield p


@pytest.fixture
def phone_page(request: pytest.FixtureRequest, browser: Browser, server: E2EServer,
               watch: PageWatch) -> Iterator[Page]:
    """A phone-sized page (390x844, touch) in a fresh context whose base URL is the server's."""
    with _watched_page(request, browser, server, watch, PHONE, phone=True) as p:
        yield p
