"""Compare, an ensemble run, the blind arena and the leaderboard in Chromium against ``thinktank serve --demo``."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from .harness import MEMBER_PASSWORD, E2EServer, login, screenshot

PANEL = ("demo/alpha", "demo/beta", "demo/gamma")
AT_RUN = re.compile(r"/runs/run_[0-9a-f]+(?:\?.*)?$")


def _member(page: Page, server: E2EServer, email: str) -> None:
    server.make_member(email)
    login(page, server, email, MEMBER_PASSWORD)


def test_compare_streams_three_columns_to_the_end_and_refuses_one_model(page: Page, server: E2EServer) -> None:
    _member(page, server, "compare-e2e@example.com")
    page.goto("/compare")
    form = page.locator("#compare-form")
    form.get_by_label("Question").fill("Say hello *in Markdown*")
    form.locator('input[value="demo/echo"]').check()
    form.get_by_role("button", name="Ask").click()
    expect(page.locator("#compare-error")).to_have_text("Pick between 2 and 6 models (you picked 1).")
    expect(page.locator(".compare-col")).to_have_count(0)

    for model in ("demo/fast", "demo/slow"):
        form.locator(f'input[value="{model}"]').check()
    form.get_by_role("button", name="Ask").click()
    columns = page.locator(".compare-col")
    expect(columns).to_have_count(3)
    expect(page.locator("#compare-error")).to_have_text("")
    for model in ("demo/echo", "demo/fast", "demo/slow"):
        col = page.locator(f'.compare-col[data-model="{model}"]')
        expect(col.locator(".col-status")).to_have_text("done")
        expect(col.locator(".ttft")).to_have_text(re.compile(r"first token \d"))
        expect(col.locator(".total")).to_have_text(re.compile(r"total \d"))
        expect(col.locator(".tokens")).to_have_text(re.compile(r"\d+ \+ \d+ tokens"))
        expect(col.locator(".cost")).to_have_text(re.compile(r"cost \$"))
    # Each answer, once ended, is the server's Markdown: the echo's emphasis is an <em>.
    echo = page.locator('.compare-col[data-model="demo/echo"] .md')
    expect(echo.locator("em")).to_have_text("in Markdown")
    expect(page.locator('.compare-col[data-model="demo/fast"] .md')).to_have_text(
        "This is a scripted demo answer from demo/fast.")
    screenshot(page, "compare")


def test_an_ensemble_run_shows_members_ranking_and_synthesis_and_takes_a_vote(page: Page, server: E2EServer) -> None:
    _member(page, server, "ensemble-e2e@example.com")
    page.goto("/compare")
    ensemble = page.locator("#ensemble-form")
    ensemble.get_by_label("Question").fill("Which database should we start with?")
    ensemble.get_by_role("button", name="Run the ensemble").click()
    page.wait_for_url(AT_RUN)
    # Live while it runs; when it ends the server-rendered result is swapped in.
    synthesis = page.locator("#synthesis")
    expect(synthesis).to_contain_text("Start with a managed PostgreSQL database")
    expect(page.locator("#run-status")).to_have_text("completed")
    cards = page.locator("article.answer-card")
    expect(cards).to_have_count(3)
    expect(page.locator("#ranking-table tbody tr")).to_have_count(3)
    expect(page.locator("#ranking")).to_contain_text("Judge agreement")
    screenshot(page, "ensemble-run")
    first = page.locator("#ranking-table tbody tr").first.locator("td").nth(1).inner_text()
    page.get_by_role("button", name=f"Vote {first} up").click()
    expect(page.locator("#voted")).to_contain_text("your vote was recorded")
    # Reloaded, the finished run is rendered by the server alone.
    page.reload()
    expect(page.locator("article.answer-card")).to_have_count(3)
    expect(page.locator("#live")).to_have_count(0)


def test_an_arena_vote_reveals_the_models_and_the_leaderboard_shows_them(page: Page, server: E2EServer) -> None:
    _member(page, server, "arena-e2e@example.com")
    page.goto("/arena")
    page.get_by_label("Question").fill("Which database for a small team?")
    page.get_by_label("Tags").fill("e2e-arena")
    page.get_by_role("button", name="Ask both").click()
    page.wait_for_url(AT_RUN)
    vote = page.locator("#arena-vote")
    expect(vote).to_be_visible()
    expect(page.locator("article.answer-card h3")).to_have_text(["Answer A", "Answer B"])
    html = page.content()
    assert [m for m in PANEL if m in html] == []  # not in the text, the attributes or anything the page holds
    screenshot(page, "arena")

    vote.get_by_role("button", name="A is better").click()
    reveal = page.locator("#reveal")
    expect(reveal).to_contain_text("You picked A.")
    names = page.locator("article.answer-card .model-name").all_inner_texts()
    assert len(names) == 2 and set(names) <= set(PANEL)
    expect(page.locator("article.answer-card").first.locator(".winner")).to_have_text("winner")
    screenshot(page, "arena-revealed")

    page.get_by_role("link", name="Leaderboard").first.click()
    page.get_by_label("Tag").fill("e2e-arena")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"/leaderboard\?tag=e2e-arena$"))
    rows = page.locator("#board tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first.locator("td").nth(1)).to_have_text(names[0])  # the winner leads
    expect(page.locator("#rating-chart svg")).to_be_visible()
    screenshot(page, "leaderboard")


def test_the_pages_fit_a_phone(phone_page: Page, server: E2EServer) -> None:
    page = phone_page
    _member(page, server, "phone-compare-e2e@example.com")
    page.goto("/compare")
    form = page.locator("#compare-form")
    form.get_by_label("Question").fill("hello from a phone")
    for model in ("demo/echo", "demo/fast"):
        form.locator(f'input[value="{model}"]').check()
    form.get_by_role("button", name="Ask").click()
    for model in ("demo/echo", "demo/fast"):
        expect(page.locator(f'.compare-col[data-model="{model}"] .col-status')).to_have_text("done")
    screenshot(page, "compare")

    page.goto("/arena")
    page.get_by_label("Question").fill("A question asked on a phone")
    page.get_by_role("button", name="Ask both").click()
    page.wait_for_url(AT_RUN)
    expect(page.locator("#arena-vote")).to_be_visible()
    screenshot(page, "arena")
    page.get_by_role("button", name="Tie").click()
    expect(page.locator("#reveal")).to_contain_text("You called it a tie.")
    screenshot(page, "arena-revealed")

    page.goto("/leaderboard")
    expect(page.locator("#rating-chart svg")).to_be_visible()
    screenshot(page, "leaderboard")
    for path in ("/compare", "/arena", "/leaderboard"):
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px on a phone"
