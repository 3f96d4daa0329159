"""The Debate page in a real browser: a debate started from the page is followed live (no reload) through its
rounds to its plan, which downloads; a running debate is cancelled with its button; the page fits a phone."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from .harness import E2EServer, login, screenshot
from .test_pages_a11y import OVERFLOW

AT_RUN = re.compile(r"/debate/run[^/?#]+$")
RUN_TIMEOUT_MS = 60_000
"""How long a whole demo debate may take on a busy machine before the test fails."""


def _start(page: Page, server: E2EServer, email: str, question: str, *, rounds: str = "3") -> None:
    server.make_member(email)
    login(page, server, email, "correct horse battery staple")
    page.get_by_role("navigation").first.get_by_role("link", name="Debate", exact=True).click()
    page.wait_for_url(re.compile(r"/debate$"))
    page.get_by_label("Panel", exact=True).select_option("demo-panel")
    page.get_by_label("Question", exact=True).fill(question)
    page.get_by_label("Rounds at most").fill(rounds)
    expect(page.get_by_label("Write plan.md and tasks.md")).to_be_checked()
    page.get_by_role("button", name="Start the debate").click()
    page.wait_for_url(AT_RUN)


def test_a_debate_started_on_the_page_is_followed_live_to_its_plan(page: Page, server: E2EServer) -> None:
    _start(page, server, "e2e-debater@example.com", "Which database should our <b>first</b> version use?")
    # The page came from the server while the debate was running; from here on only its script updates it.
    page.evaluate("() => { window.notReloaded = true; }")
    timeline = page.locator("#debate-live .timeline")
    expect(timeline).to_have_attribute("data-status", "running")
    expect(page.get_by_role("button", name="Cancel debate")).to_be_visible()

    expect(timeline).to_have_attribute("data-status", "completed", timeout=RUN_TIMEOUT_MS)
    assert page.evaluate("() => window.notReloaded === true")
    expect(page.locator("#debate-announce")).to_have_text("The debate completed.")  # said to screen readers
    expect(page.locator("#debate-status")).to_have_text("completed")
    expect(page.get_by_role("button", name="Cancel debate")).to_have_count(0)
    expect(page.locator(".question .pre")).to_have_text("Which database should our <b>first</b> version use?")
    expect(page.locator(".panel .persona")).to_have_count(3)
    expect(page.locator(".rounds > li.round")).to_have_count(2)
    expect(page.locator("#round-2 .diff ins").first).to_be_visible()
    expect(page.locator("#round-2 .follow-up")).to_contain_text("What would make you change your recommendation?")
    expect(page.locator(".agreement-chart svg.chart")).to_be_visible()
    expect(page.locator("#stop-reason")).to_contain_text("converged")
    expect(page.locator(".synthesis .md h2").first).to_have_text("Answer")
    expect(page.locator("#doc-plan-md .md h1")).to_have_text("Plan")
    expect(page.locator("#doc-tasks-md .md h1")).to_have_text("Tasks")
    screenshot(page, "debate-run")

    with page.expect_download() as info:
        page.get_by_role("link", name="Download plan.md").click()
    download = info.value
    assert download.suggested_filename == "plan.md"
    assert download.path().read_text().startswith("# Plan")

    # The page renders the same from the stored run after a reload (and so without its script).
    page.reload()
    expect(page.locator(".rounds > li.round")).to_have_count(2)
    expect(page.locator("#doc-plan-md .md h1")).to_have_text("Plan")

    page.goto("/debate")
    expect(page.locator(".debate-runs tbody tr")).to_have_count(1)
    expect(page.locator(".debate-runs tbody .badge")).to_have_text("completed")
    screenshot(page, "debate")


def test_a_running_debate_is_cancelled_with_its_button(page: Page, server: E2EServer) -> None:
    _start(page, server, "e2e-canceller@example.com", "Should we rewrite the billing service?", rounds="10")
    page.evaluate("() => { window.notReloaded = true; }")
    page.get_by_role("button", name="Cancel debate").click()
    expect(page.locator("#debate-status")).to_have_text("cancelled", timeout=RUN_TIMEOUT_MS)
    assert page.evaluate("() => window.notReloaded === true")  # the script cancelled it through the API
    expect(page.get_by_role("button", name="Cancel debate")).to_have_count(0)
    expect(page.locator(".status-line .run-error")).to_contain_text("cancelled")


def test_the_debate_pages_fit_a_phone(phone_page: Page, server: E2EServer) -> None:
    page = phone_page
    page.set_default_timeout(RUN_TIMEOUT_MS)
    _start(page, server, "e2e-phone-debater@example.com", "Monolith or services for a team of four?")
    expect(page.locator("#debate-live .timeline")).to_have_attribute("data-status", "completed",
                                                                      timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#doc-plan-md .md h1")).to_have_text("Plan")
    assert page.evaluate(OVERFLOW) == []
    screenshot(page, "debate-run")
    page.goto("/debate")
    assert page.evaluate(OVERFLOW) == []
    screenshot(page, "debate")
