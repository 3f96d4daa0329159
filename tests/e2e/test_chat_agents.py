"""Agents in a real browser against ``thinktank serve --demo`` with the clock agent (tests/web/agent_config.py):
in the chat, the agent's steps as they happen and its approval card; JSON that is not an object refused in the
card; approved with edited arguments, the rest of the steps and the answer follow; denied with a reason (by
Enter in the reason field), the model reads it; the same card on the run's page; screenshots."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Locator, Page, Route, expect

from ..web.agent_config import AGENT, HOSTILE_ZONE, agent_section
from .harness import E2EServer, login, screenshot, start_server
from .test_pages_a11y import LOW_CONTRAST, OVERFLOW, UNNAMED_CONTROLS

AT_THREAD = re.compile(r"/chat/thr_[0-9a-f]+$")
ARGS_LABEL = "Arguments (JSON; edit them to change the call)"
REASON_LABEL = "Reason, if you deny it (the agent reads it)"
RUN_MS = 30_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EServer]:
    """This module's own server: the demo and the clock agent (its config file beside the demo)."""
    root = Path(tmp_path_factory.mktemp("e2e-agents"))
    config = root / "agents.yaml"
    config.write_text(yaml.safe_dump(agent_section()), encoding="utf-8")
    running = start_server(root, config)
    try:
        yield running
    finally:
        running.stop()


def _api(page: Page, method: str, path: str, data: Any = None) -> Any:
    csrf = str(page.locator('meta[name="csrf-token"]').get_attribute("content"))
    r = page.request.fetch(path, method=method, data=data, headers={"x-csrf-token": csrf})
    assert r.ok, f"{method} {path}: {r.status} {r.text()}"
    return r.json()


def _start_chat(page: Page, message: str) -> str:
    page.goto("/chat")
    page.get_by_label("Model").select_option(AGENT)
    page.get_by_label("Message").fill(message)
    page.get_by_role("button", name="Start chat").click()
    page.wait_for_url(AT_THREAD)
    return page.url.rsplit("/", 1)[1]


def _last_message(page: Page, thread_id: str) -> dict[str, Any]:
    return dict(_api(page, "GET", f"/api/v1/threads/{thread_id}/messages")["data"][-1])


def _tool_step(scope: Locator | Page) -> Locator:
    return scope.locator("details.agent-steps li.step-tool")


def _open_steps(article: Locator) -> None:
    steps = article.locator("details.agent-steps")
    if steps.get_attribute("open") is None:
        steps.locator("summary").click()
    expect(steps).to_have_attribute("open", "")


def test_an_agent_asks_first_and_the_answer_follows_the_approval(page: Page, server: E2EServer) -> None:
    login(page, server, server.admin_email, server.admin_password)
    thread_id = _start_chat(page, "What time is it?")
    answer = page.locator("article.msg-assistant").last
    steps = answer.locator("details.agent-steps")
    expect(steps).to_be_visible(timeout=RUN_MS)
    expect(steps).not_to_have_attribute("open", "")  # collapsed until asked
    card = answer.locator("section.approval")
    expect(card).to_be_visible(timeout=RUN_MS)
    expect(card.get_by_role("heading")).to_have_text("Approve this tool call?")
    expect(card).to_contain_text("current_time")
    arguments = card.get_by_label(ARGS_LABEL)
    expect(arguments).to_have_value('{\n  "timezone": "UTC"\n}')
    expect(page.get_by_role("status")).to_contain_text("waits for your decision")
    assert page.evaluate(UNNAMED_CONTROLS) == []
    screenshot(page, "chat-agent-approval")
    _open_steps(answer)
    expect(_tool_step(answer).locator(".step-state")).to_have_text("waiting for approval")
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        assert page.evaluate(LOW_CONTRAST) == [], scheme

    # The card is reached from the keyboard: its text box, the reason, then Approve and Deny.
    arguments.focus()
    page.keyboard.press("Tab")
    expect(card.get_by_label(REASON_LABEL)).to_be_focused()
    page.keyboard.press("Tab")
    expect(card.get_by_role("button", name="Approve")).to_be_focused()

    # Arguments that do not parse are refused in the card, and nothing is sent.
    arguments.fill('{"timezone": "Europe/Paris"')
    card.get_by_role("button", name="Approve").click()
    expect(card.get_by_role("alert")).to_contain_text("not valid JSON")
    run_id = str(_last_message(page, thread_id)["context"]["run_id"])
    assert _api(page, "GET", f"/api/v1/runs/{run_id}")["status"] == "awaiting_approval"

    arguments.fill('{"timezone": "Europe/Paris"}')
    card.get_by_role("button", name="Approve").click()
    expect(answer.locator("section.approval")).to_have_count(0)
    answer = page.locator("article.msg-assistant").last
    expect(answer.locator(".md.answer strong")).to_contain_text("(Europe/Paris, ", timeout=RUN_MS)
    expect(answer).to_have_attribute("data-finish", "stop")
    expect(page.get_by_role("status")).to_have_text("Answer complete.")
    _open_steps(answer)
    tool = _tool_step(answer)
    expect(tool.locator(".step-state")).to_have_text("approved, arguments edited · done")
    assert json.loads(tool.locator(".step-args").inner_text()) == {"timezone": "Europe/Paris"}
    expect(tool.locator(".step-result")).to_contain_text("Europe/Paris")
    expect(answer.locator("li.step-model")).to_have_count(2)
    screenshot(page, "chat-agent-answered")

    page.reload()
    answer = page.locator("article.msg-assistant").last
    expect(answer.locator(".md.answer strong")).to_contain_text("(Europe/Paris, ")
    expect(answer.locator("section.approval")).to_have_count(0)
    stored = _last_message(page, thread_id)
    assert stored["finish_reason"] == "stop" and "Europe/Paris" in stored["content"]


def test_the_steps_and_the_card_are_drawn_as_the_events_arrive(page: Page, server: E2EServer) -> None:
    """The stored message is never swapped in here, so what shows is what the page script drew from the run's
    events: the step block, the tool call waiting, and a card that works."""
    login(page, server, server.admin_email, server.admin_password)
    thread = _api(page, "POST", "/api/v1/threads", {"model": AGENT})

    def no_swap(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body="")

    page.route(f"**/chat/{thread['id']}/messages/*", no_swap)
    page.goto(f"/chat/{thread['id']}")
    page.get_by_label("Message").fill("What time is it now?")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.msg-assistant.pending")
    card = answer.locator("section.approval")
    expect(card).to_be_visible(timeout=RUN_MS)
    steps = answer.locator("details.agent-steps")
    expect(steps).not_to_have_attribute("open", "")
    expect(steps.locator("summary")).to_have_text("Agent steps (1 model call, 1 tool call)")
    _open_steps(answer)
    expect(answer.locator("li.step-model .step-title")).to_have_text("Step 1: model demo/clockwork")
    expect(_tool_step(answer).locator(".step-state")).to_have_text("waiting for approval")
    expect(answer.locator(".streaming")).to_contain_text("[Waiting for approval")
    arguments = card.get_by_label(ARGS_LABEL)
    expect(arguments).to_have_value('{\n  "timezone": "UTC"\n}')
    assert page.evaluate(UNNAMED_CONTROLS) == []
    arguments.fill('["Asia/Tokyo"]')
    card.get_by_role("button", name="Approve").click()
    expect(card.get_by_role("alert")).to_contain_text("must be a JSON object")
    arguments.fill('{"timezone": "Asia/Tokyo"}')
    card.get_by_role("button", name="Approve").click()
    expect(card).to_have_count(0)
    page.unroute(f"**/chat/{thread['id']}/messages/*")
    page.reload()
    last = page.locator("article.msg-assistant").last
    expect(last.locator(".md.answer strong")).to_contain_text("(Asia/Tokyo, ", timeout=RUN_MS)


def test_a_denial_with_a_reason_is_what_the_model_answers_from(page: Page, server: E2EServer) -> None:
    login(page, server, server.admin_email, server.admin_password)
    thread_id = _start_chat(page, "What time is it?")
    card = page.locator("section.approval")
    expect(card).to_be_visible(timeout=RUN_MS)
    reason = card.get_by_label(REASON_LABEL)
    reason.fill("not today")
    reason.press("Enter")  # denies: Enter here never approves
    answer = page.locator("article.msg-assistant").last
    expect(answer.locator(".md.answer")).to_contain_text('because you said: "not today"', timeout=RUN_MS)
    _open_steps(answer)
    tool = _tool_step(answer)
    expect(tool.locator(".step-state")).to_have_text("denied")
    expect(tool.locator(".step-reason")).to_have_text("not today")
    run_id = str(_last_message(page, thread_id)["context"]["run_id"])
    events = _api(page, "GET", f"/api/v1/runs/{run_id}/events?format=json")["data"]
    assert not [e for e in events if e["type"] == "tool_call"]


def test_the_run_page_shows_the_card_and_the_answer(page: Page, server: E2EServer) -> None:
    login(page, server, server.admin_email, server.admin_password)
    thread_id = _start_chat(page, "What time is it?")
    expect(page.locator("section.approval")).to_be_visible(timeout=RUN_MS)
    run_id = str(_last_message(page, thread_id)["context"]["run_id"])
    _open_steps(page.locator("article.msg-assistant").last)
    page.get_by_role("link", name="The run's page").click()
    page.wait_for_url(f"**/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_text("awaiting approval")
    expect(page.locator("details.agent-steps")).to_have_attribute("open", "")
    assert page.evaluate(UNNAMED_CONTROLS) == []
    card = page.locator("section.approval")
    card.get_by_label(ARGS_LABEL).fill('{"timezone": "America/New_York"}')
    card.get_by_role("button", name="Approve").click()
    expect(page.locator("#run-status")).to_have_text("completed", timeout=RUN_MS)
    expect(page.locator("#agent-run .md.answer strong")).to_contain_text("(America/New_York, ")
    expect(_tool_step(page).locator(".step-state")).to_have_text("approved, arguments edited · done")
    screenshot(page, "agent-run")


def test_a_second_approval_in_the_same_run_shows_a_new_card(page: Page, server: E2EServer) -> None:
    login(page, server, server.admin_email, server.admin_password)
    _start_chat(page, "Read two clocks")
    answer = page.locator("article.msg-assistant").last
    card = answer.locator("section.approval")
    expect(card.get_by_label(ARGS_LABEL)).to_have_value('{\n  "timezone": "UTC"\n}', timeout=RUN_MS)
    first = card.get_attribute("data-call")
    card.get_by_role("button", name="Approve").click()
    # The run goes on, then asks again: a card drawn from its events, for the other call.
    second = answer.locator("section.approval")
    expect(second.get_by_label(ARGS_LABEL)).to_have_value('{\n  "timezone": "Asia/Tokyo"\n}', timeout=RUN_MS)
    assert second.get_attribute("data-call") != first
    expect(page.get_by_role("status")).to_contain_text("asks to call current_time")
    assert page.evaluate(UNNAMED_CONTROLS) == []
    _open_steps(answer)
    expect(_tool_step(answer).locator(".step-state")).to_have_text(["approved · done", "waiting for approval"])
    second.get_by_role("button", name="Approve").click()
    answer = page.locator("article.msg-assistant").last
    expect(answer).to_have_attribute("data-finish", "stop", timeout=RUN_MS)
    expect(answer.locator("section.approval")).to_have_count(0)
    expect(_tool_step(answer).locator(".step-state")).to_have_text(["approved · done", "approved · done"])
    expect(answer.locator("details.agent-steps")).to_have_attribute("open", "")  # as the reader left it


def test_markup_in_what_the_model_proposed_and_the_tool_said_stays_text(page: Page, server: E2EServer) -> None:
    """Arguments holding an <img onerror> and a <script>: in the card, in the steps drawn live and in the
    stored message they are text; no element is made of them (the page watch also fails on any request or
    console error they would cause)."""
    login(page, server, server.admin_email, server.admin_password)
    _start_chat(page, "Something hostile, please")
    answer = page.locator("article.msg-assistant").last
    card = answer.locator("section.approval")
    expect(card.get_by_label(ARGS_LABEL)).to_have_value(re.compile(re.escape(HOSTILE_ZONE)), timeout=RUN_MS)
    card.get_by_role("button", name="Approve").click()
    _open_steps(answer)
    tool = _tool_step(answer)
    expect(tool.locator(".step-result")).to_contain_text(HOSTILE_ZONE, timeout=RUN_MS)
    expect(tool.locator(".step-state")).to_have_text("approved · failed")
    assert page.locator("main img, main script, main iframe").count() == 0


def test_the_card_and_the_steps_fit_a_phone(phone_page: Page, server: E2EServer) -> None:
    page = phone_page
    login(page, server, server.admin_email, server.admin_password)
    _start_chat(page, "What time is it on a phone?")
    answer = page.locator("article.msg-assistant").last
    expect(answer.locator("section.approval")).to_be_visible(timeout=RUN_MS)
    _open_steps(answer)
    wide: list[str] = page.evaluate(OVERFLOW)
    assert wide == [], wide
    screenshot(page, "chat-agent-approval")
