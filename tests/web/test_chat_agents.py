"""Agents on the pages, over real HTTP with a real app: the picker's Agents group, a thread turn paused for an
approval (its steps, collapsed, and the approval card), the card's form without the page script (approve
with edited arguments, deny with a reason the model reads, JSON that is not an object refused with nothing
decided), the run's page, escaping of what the model and the tool wrote, and another user's run."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from thinktank.knowledge.embeddings import LocalEmbedder

from .agent_config import AGENT, HOSTILE_ZONE, agent_config
from .conftest import Browser, Page, WebEnv, web_env

WAIT_ROUNDS = 200
"""How many times (0.05 s apart) a test looks again for what a run that ended has just written."""


@pytest.fixture
async def web(tmp_path: Path, local_embedder: LocalEmbedder) -> AsyncIterator[WebEnv]:
    """The pages with the offline demo and the clock agent."""
    async with web_env(tmp_path, local_embedder, agent_config()) as env:
        yield env


async def _ask(b: Browser, question: str) -> tuple[str, dict[str, Any]]:
    """A thread on the agent, asked ``question`` (the turn ends when the run pauses): (thread id, its answer)."""
    r = await b.api("POST", "/api/v1/threads", json={"model": AGENT})
    assert r.status_code == 201, r.text
    thread_id = r.json()["id"]
    r = await b.api("POST", f"/api/v1/threads/{thread_id}/messages", json={"content": question})
    assert r.status_code == 200, r.text
    return thread_id, dict(r.json()["message"])


async def _answer(b: Browser, thread_id: str) -> dict[str, Any]:
    """The thread's last message once the agent's run has written its answer into it."""
    for _ in range(WAIT_ROUNDS):
        r = await b.api("GET", f"/api/v1/threads/{thread_id}/messages")
        last = dict(r.json()["data"][-1])
        if last["finish_reason"] != "awaiting_approval":
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"the agent's answer never reached thread {thread_id}")


async def _events(b: Browser, run_id: str) -> list[dict[str, Any]]:
    r = await b.api("GET", f"/api/v1/runs/{run_id}/events?format=json")
    assert r.status_code == 200, r.text
    return [{"type": e["type"], **e["data"]} for e in r.json()["data"]]


async def _decide(b: Browser, run_id: str, back: str, **fields: str) -> Any:
    return await b.http.post(f"/runs/{run_id}/decide", data={"csrf": b.csrf, "back": back, **fields})


def _said(page: Page, css: str) -> list[str]:
    """The text of each match, its whitespace as a reader sees it."""
    return [" ".join(n.text().split()) for n in page.all(css)]


def _no_active_content(page: Page, root: str = "main") -> None:
    main = page.one(root)
    assert main.css("script, iframe, img, object, embed") == []
    for node in main.css("*"):
        for name, value in node.attributes.items():
            assert not name.startswith("on"), (node.tag, name)
            assert not (value or "").strip().lower().startswith("javascript:"), (node.tag, name, value)


async def test_the_picker_groups_the_agents(web: WebEnv) -> None:
    page = await web.admin.get("/chat")
    groups = {g.attributes["label"]: [o.attributes["value"] for o in g.css("option")]
              for g in page.all("#new-model optgroup")}
    assert AGENT in groups["Agents"] and all((m or "").startswith("agent/") for m in groups["Agents"])
    labels = [g.attributes["label"] for g in page.all("#new-model optgroup")]
    assert labels.index("Debates") < labels.index("Agents")


async def test_a_paused_turn_shows_its_steps_and_an_approval_card(web: WebEnv) -> None:
    b = web.admin
    thread_id, message = await _ask(b, "What time is it?")
    assert message["finish_reason"] == "awaiting_approval"
    run_id = message["context"]["run_id"]
    page = await b.get(f"/chat/{thread_id}")
    assert page.status == 200
    article = page.one(f'article[id="{message["id"]}"]')
    assert article.attributes["data-finish"] == "awaiting_approval"
    steps = page.one("article.msg-assistant details.agent-steps")
    assert "open" not in steps.attributes  # collapsed by default
    assert steps.attributes["data-run"] == run_id and steps.attributes["data-status"] == "awaiting_approval"
    assert int(steps.attributes["data-seq"] or 0) == len(await _events(b, run_id))
    assert _said(page, ".agent-steps summary") == ["Agent steps (1 model call, 1 tool call)"]
    model = page.one(".agent-steps li.step-model")
    assert "Step 1: model demo/clockwork" in model.text() and "tokens" in model.text()
    tool = page.one(".agent-steps li.step-tool")
    assert tool.attributes["data-state"] == "waiting"
    assert page.one(".step-tool .step-state").text(strip=True) == "waiting for approval"
    assert json.loads(page.one(".step-tool .step-args").text()) == {"timezone": "UTC"}

    card = page.one("article.msg-assistant section.approval")
    assert card.attributes["data-run"] == run_id
    heading = page.one("section.approval h3")
    assert card.attributes["aria-labelledby"] == heading.attributes["id"]
    assert "current_time" in page.one("section.approval .approval-what").text()
    form = page.one("section.approval form")
    assert form.attributes["action"] == f"/runs/{run_id}/decide"
    area = page.one("section.approval textarea")
    assert area.text() == '{\n  "timezone": "UTC"\n}'
    for control in (area, page.one("section.approval input.approval-reason")):
        assert page.one(f'label[for="{control.attributes["id"]}"]').text(strip=True)
    buttons = {b.text(strip=True): b.attributes.get("value") for b in page.all("section.approval button")}
    assert buttons == {"Approve": "approve", "Deny": "deny"}
    assert page.form_value("back", "section.approval form") == f"/chat/{thread_id}#{message['id']}"

    fragment = Page(await b.http.get(f"/chat/{thread_id}/messages/{message['id']}"))  # what the script swaps in
    assert fragment.one("section.approval input[name=csrf]").attributes["value"] == b.csrf
    assert fragment.one("details.agent-steps").attributes["data-seq"] == steps.attributes["data-seq"]


async def test_approving_edited_arguments_with_the_form_runs_the_call_with_them(web: WebEnv) -> None:
    b = web.admin
    thread_id, message = await _ask(b, "What time is it?")
    run_id = message["context"]["run_id"]
    back = f"/chat/{thread_id}#{message['id']}"
    r = await _decide(b, run_id, back, decision="approve", arguments='{"timezone": "Europe/Paris"}')
    assert r.status_code == 303 and r.headers["location"] == back
    answer = await _answer(b, thread_id)
    assert answer["finish_reason"] == "stop" and "(Europe/Paris, " in answer["content"]
    calls = [e for e in await _events(b, run_id) if e["type"] == "tool_call"]
    assert [c["arguments"] for c in calls] == [{"timezone": "Europe/Paris"}]

    page = await b.get(f"/chat/{thread_id}")
    assert page.all("section.approval") == []
    article = page.one(f'article[id="{message["id"]}"]')
    assert article.attributes["data-finish"] == "stop"
    assert "Europe/Paris" in page.one(f'article[id="{message["id"]}"] .md.answer strong').text()
    tool = page.one(".agent-steps li.step-tool")
    assert tool.attributes["data-state"] == "ok" and tool.attributes["data-edited"] == "1"
    assert page.one(".step-tool .step-state").text(strip=True) == "approved, arguments edited · done"
    assert json.loads(page.one(".step-tool .step-args").text()) == {"timezone": "Europe/Paris"}
    assert "Europe/Paris" in page.one(".step-tool .step-result").text()
    assert _said(page, ".agent-steps li.step-model .step-title") == ["Step 1: model demo/clockwork",
                                                                    "Step 2: model demo/clockwork"]


async def test_the_proposed_arguments_unchanged_are_approved_as_they_are(web: WebEnv) -> None:
    b = web.admin
    thread_id, message = await _ask(b, "What time is it?")
    run_id = message["context"]["run_id"]
    r = await _decide(b, run_id, "", decision="approve", arguments='{\n "timezone":  "UTC"}')
    assert r.status_code == 303 and r.headers["location"] == f"/runs/{run_id}"  # no back: the run's page
    await _answer(b, thread_id)
    decided = next(e for e in await _events(b, run_id) if e["type"] == "approval_decided")
    assert decided["decision"] == "approved" and "edited" not in decided
    page = await b.get(f"/chat/{thread_id}")
    assert page.one(".step-tool .step-state").text(strip=True) == "approved · done"


async def test_arguments_that_are_not_a_json_object_are_refused_and_nothing_is_decided(web: WebEnv) -> None:
    b = web.admin
    thread_id, message = await _ask(b, "What time is it?")
    run_id = message["context"]["run_id"]
    for raw, says in (('{"timezone": "UTC"', "not valid JSON"), ('["UTC"]', "must be a JSON object"),
                      ('{"timezone": 5}', "arguments:"), ("x" * 100_001, "at most")):
        r = await _decide(b, run_id, f"/chat/{thread_id}", decision="approve", arguments=raw)
        assert r.status_code == 400, (raw[:20], r.text)
        assert says in Page(r).one("main").text(), raw[:20]
    r = await _decide(b, run_id, f"/chat/{thread_id}", decision="approve", arguments='{"timezone": "UTC"}',
                      reason="not now")  # Enter in the reason field submits with Approve: refused
    assert r.status_code == 400 and "press Deny" in Page(r).one("main").text()
    r = await _decide(b, run_id, f"/chat/{thread_id}", decision="maybe")
    assert r.status_code == 400
    record = (await b.api("GET", f"/api/v1/runs/{run_id}")).json()
    assert record["status"] == "awaiting_approval"
    assert [e["type"] for e in await _events(b, run_id)].count("approval_decided") == 0
    page = await b.get(f"/chat/{thread_id}")
    assert page.one("section.approval textarea").text() == '{\n  "timezone": "UTC"\n}'


async def test_a_denial_with_a_reason_reaches_the_model(web: WebEnv) -> None:
    b = web.admin
    thread_id, message = await _ask(b, "What time is it?")
    run_id = message["context"]["run_id"]
    r = await _decide(b, run_id, f"/chat/{thread_id}", decision="deny", reason="not now, thanks")
    assert r.status_code == 303
    answer = await _answer(b, thread_id)
    assert 'because you said: "not now, thanks".' in answer["content"]
    assert not [e for e in await _events(b, run_id) if e["type"] == "tool_call"]  # the tool never ran
    page = await b.get(f"/chat/{thread_id}")
    tool = page.one(".agent-steps li.step-tool")
    assert tool.attributes["data-state"] == "denied" and tool.attributes["data-decision"] == "denied"
    assert page.one(".step-tool .step-state").text(strip=True) == "denied"
    assert page.one(".step-tool .step-reason").text(strip=True) == "not now, thanks"
    assert "The user denied this call" in page.one(".step-tool .step-result").text()
    r = await _decide(b, run_id, f"/chat/{thread_id}", decision="deny")
    assert r.status_code == 409  # it waits for nothing now


async def test_the_run_page_shows_the_steps_the_card_and_then_the_answer(web: WebEnv) -> None:
    b = web.admin
    thread_id, message = await _ask(b, "What time is it?")
    run_id = message["context"]["run_id"]
    page = await b.get(f"/runs/{run_id}")
    assert page.status == 200
    assert _said(page, "h1") == ["Agent run clock"]
    assert page.one("#agent-run").attributes["data-status"] == "awaiting_approval"
    assert "open" in page.one("details.agent-steps").attributes
    assert page.form_value("back", "section.approval form") == f"/runs/{run_id}"
    assert page.one('script[src^="/static/js/agent_run.js"]')
    r = await _decide(b, run_id, f"/runs/{run_id}", decision="approve", arguments='{"timezone": "Asia/Tokyo"}')
    assert r.status_code == 303 and r.headers["location"] == f"/runs/{run_id}"
    await _answer(b, thread_id)
    page = await b.get(f"/runs/{run_id}")
    assert page.one("#run-status").text(strip=True) == "completed"
    assert page.all("section.approval") == []
    assert "Asia/Tokyo" in page.one("#agent-run .md.answer strong").text()
    latency = r"(?:<1|[0-9]+) ms|[0-9]+\.[0-9]{2} s"
    assert re.fullmatch(f"(?:{latency}) · \\$0", _said(page, ".agent-steps li.step-tool .step-stats")[0])
    for stats in _said(page, ".agent-steps li.step-model .step-stats"):
        assert re.fullmatch(f"(?:{latency}) · [0-9]+ tokens · \\$0", stats), stats
    fragment = Page(await b.http.get(f"/runs/{run_id}/fragment"))
    assert fragment.one("#agent-run").attributes["data-status"] == "completed"


async def test_what_the_model_and_the_tool_wrote_is_shown_as_text(web: WebEnv) -> None:
    b = web.admin
    thread_id, message = await _ask(b, "Something hostile, please")
    run_id = message["context"]["run_id"]
    for path in (f"/chat/{thread_id}", f"/runs/{run_id}", f"/chat/{thread_id}/messages/{message['id']}"):
        page = await b.get(path)
        assert HOSTILE_ZONE in page.one("section.approval textarea").text()
        assert HOSTILE_ZONE in page.one(".step-tool .step-args").text()
        _no_active_content(page, "body" if "/messages/" in path else "main")
    await _decide(b, run_id, f"/chat/{thread_id}", decision="approve",
                  arguments=orjson.dumps({"timezone": HOSTILE_ZONE}).decode())
    await _answer(b, thread_id)
    for path in (f"/chat/{thread_id}", f"/runs/{run_id}"):
        page = await b.get(path)
        assert page.one(".agent-steps li.step-tool").attributes["data-state"] == "error"
        assert HOSTILE_ZONE in page.one(".step-tool .step-result").text()  # the tool's error quotes it
        _no_active_content(page)


async def test_another_users_agent_run_is_not_theirs_to_see_or_decide(web: WebEnv) -> None:
    thread_id, message = await _ask(web.admin, "What time is it?")
    run_id = message["context"]["run_id"]
    other = await web.member("other@example.com")
    assert (await other.get(f"/runs/{run_id}")).status == 404
    assert (await other.get(f"/runs/{run_id}/fragment")).status == 404
    r = await _decide(other, run_id, f"/runs/{run_id}", decision="approve", arguments="{}")
    assert r.status_code == 404
    r = await other.api("POST", f"/api/v1/runs/{run_id}/deny", json={"reason": "mine now"})
    assert r.status_code == 404
    assert (await web.admin.api("GET", f"/api/v1/runs/{run_id}")).json()["status"] == "awaiting_approval"

    # A thread imported with the admin's run in its context shows no steps and no card to the importer.
    export = (await web.admin.api("GET", f"/api/v1/threads/{thread_id}/export?format=json")).json()
    r = await other.http.post("/chat/import", data={"csrf": other.csrf},
                              files={"file": ("t.json", orjson.dumps(export), "application/json")})
    assert r.status_code == 303, r.text
    page = await other.get(r.headers["location"])
    assert page.status == 200
    assert page.all("details.agent-steps") == [] and page.all("section.approval") == []


async def test_a_streamed_turn_and_the_runs_event_stream_end_when_the_run_pauses(web: WebEnv) -> None:
    """What the page script reads: the turn's stream names the run, then ends with the stored message; the
    run's own event stream ends too once the run waits (a paused run emits no event of its own)."""
    b = web.admin
    thread_id = (await b.api("POST", "/api/v1/threads", json={"model": AGENT})).json()["id"]
    events: list[tuple[str, dict[str, Any]]] = []
    async with b.http.stream("POST", f"/api/v1/threads/{thread_id}/messages", headers={"x-csrf-token": b.csrf},
                             json={"content": "What time is it?", "stream": True}) as r:
        assert r.status_code == 200
        name = ""
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    assert events[0][0] == "progress" and events[0][1]["text"].startswith("run run_")
    assert events[-1][0] == "message" and events[-1][1]["message"]["finish_reason"] == "awaiting_approval"
    run_id = events[0][1]["text"].removeprefix("run ")
    seen: list[str] = []
    async with b.http.stream("GET", f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": "0"}) as r:
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                seen.append(line[7:])
    assert seen[-1] == "approval_requested" and "step" in seen and "done" not in seen


async def test_a_second_approval_in_the_same_run_gets_its_own_card(web: WebEnv) -> None:
    b = web.admin
    thread_id, message = await _ask(b, "Read two clocks")
    run_id = message["context"]["run_id"]
    first = (await b.get(f"/chat/{thread_id}")).one("section.approval").attributes["data-call"]
    r = await _decide(b, run_id, f"/chat/{thread_id}", decision="approve", arguments='{"timezone": "UTC"}')
    assert r.status_code == 303
    for _ in range(WAIT_ROUNDS):  # the run goes on, then waits again
        if (await b.api("GET", f"/api/v1/runs/{run_id}")).json()["status"] == "awaiting_approval":
            break
        await asyncio.sleep(0.05)
    page = await b.get(f"/chat/{thread_id}")
    card = page.one("section.approval")
    assert card.attributes["data-call"] != first
    assert json.loads(page.one("section.approval textarea").text()) == {"timezone": "Asia/Tokyo"}
    assert [n.attributes["data-state"] for n in page.all(".agent-steps li.step-tool")] == ["ok", "waiting"]
    assert page.one(f'article[id="{message["id"]}"]').attributes["data-finish"] == "awaiting_approval"
    r = await _decide(b, run_id, f"/chat/{thread_id}", decision="approve", arguments='{"timezone": "Asia/Tokyo"}')
    answer = await _answer(b, thread_id)
    assert answer["finish_reason"] == "stop" and "(UTC, " in answer["content"]
    page = await b.get(f"/chat/{thread_id}")
    assert page.all("section.approval") == []
    assert [n.attributes["data-state"] for n in page.all(".agent-steps li.step-tool")] == ["ok", "ok"]
