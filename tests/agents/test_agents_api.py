"""Agents over the API: the loop with real built-in tools on mock models, every step on the run's record,
limits, bad tool calls, approvals (approve with edited arguments, deny with a reason, a deadline), and what a
request may not do."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from .agent_apps import AUTH, BEFORE_TOOLS, agents_app, brain

CLOCK_RULES: list[dict[str, Any]] = [
    {"match": BEFORE_TOOLS + "(?!.*denied this call)(?!.*Tool error).*what time",
     "tool_calls": [{"name": "current_time", "arguments": {"timezone": "Europe/Paris"}}]},
    {"match": r'tool_result tool="current_time">\s*(?P<iso>\S+)', "template": True, "reply": "It is \\g<iso>."},
    {"match": "denied this call: (?P<why>[^.]*)", "template": True, "reply": "I was told no: \\g<why>."},
    {"match": "Tool error: (?P<err>[^\n]*)", "template": True, "reply": "The tool failed: \\g<err>"},
]


def _config(**agent: Any) -> dict[str, Any]:
    return {"models": [brain(CLOCK_RULES)], "agents": [{"name": "clock", "model": "brain", "tools": ["current_time"],
                                                        **agent}]}


def _question(text: str = "what time is it?") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_an_agent_answers_on_chat_completions_with_a_tool_and_the_run_holds_every_step(tmp_path: Path) -> None:
    async with agents_app(tmp_path, _config()) as env:
        r = await env.post("/v1/chat/completions", {"model": "agent/clock", "messages": _question()})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"].startswith("It is ")
        assert "+01:00" in body["choices"][0]["message"]["content"] or "+02:00" in body["choices"][0]["message"][
            "content"]  # Paris time, from the tool
        run = await env.run(r.headers["x-thinktank-run-id"])
        assert [(c["stage"], c["model"]) for c in run["calls"]] == [("step", "brain"), ("tool", "current_time"),
                                                                     ("step", "brain")]
        tool = run["calls"][1]
        assert tool["prompt"] == [{"arguments": {"timezone": "Europe/Paris"}}] and tool["error"] is None
        assert tool["latency_ms"] >= 0
        # Every model call was routed and priced; the answer's usage is the run's cost.
        assert run["cost_usd"] > 0
        assert run["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in run["calls"]))
        assert body["usage"]["cost"] == pytest.approx(run["cost_usd"])
        # The tool result reached the model delimited as data.
        second = run["calls"][2]["prompt"]
        assert second[-1]["role"] == "tool" and second[-1]["content"].startswith('<tool_result tool="current_time">')
        types = [e["type"] for e in await env.events(run["id"])]
        assert types.index("tool_call") < types.index("tool_result") < types.index("synthesis_token")


async def test_a_streamed_agent_sends_progress_then_the_answer_tokens(tmp_path: Path) -> None:
    async with agents_app(tmp_path, _config()) as env:
        async with env.http.stream("POST", env.url + "/v1/chat/completions", headers=AUTH,
                                   json={"model": "agent/clock", "messages": _question(), "stream": True}) as r:
            text = "".join([line async for line in r.aiter_lines()])
        assert ": tool current_time" in text  # the step, as an SSE comment OpenAI clients skip
        assert '"finish_reason":"stop"' in text and text.rstrip().endswith("[DONE]")
        assert '"content":"It"' in text


async def test_the_native_endpoint_streams_every_step(tmp_path: Path) -> None:
    async with agents_app(tmp_path, _config()) as env:
        async with env.http.stream("POST", env.url + "/api/v1/agents", headers=AUTH,
                                   json={"agent": "clock", "question": "what time is it?", "stream": True}) as r:
            assert r.status_code == 200
            names = [line[len("event: "):] async for line in r.aiter_lines() if line.startswith("event: ")]
        assert names[0] == "run_started" and names[-1] == "done"
        assert {"step", "tool_call", "tool_result", "synthesis_token"} <= set(names)


async def test_arguments_that_do_not_match_the_schema_are_a_tool_error_and_the_run_goes_on(tmp_path: Path) -> None:
    rules: list[dict[str, Any]] = [{"match": BEFORE_TOOLS + "(?!.*Tool error).*what time",
              "tool_calls": [{"name": "current_time", "arguments": {"timezone": 42, "extra": True}}]},
             *CLOCK_RULES[3:]]
    config = {"models": [brain(rules)], "agents": [{"name": "clock", "model": "brain", "tools": ["current_time"]}]}
    async with agents_app(tmp_path, config) as env:
        r = await env.post("/v1/chat/completions", {"model": "agent/clock", "messages": _question()})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"].startswith("The tool failed:")
        run = await env.run(r.headers["x-thinktank-run-id"])
        assert run["status"] == "completed"
        assert [c["stage"] for c in run["calls"]] == ["step", "step"]  # the tool itself never ran


async def test_a_model_that_calls_tools_forever_ends_at_the_step_limit_with_what_it_had(tmp_path: Path) -> None:
    rules: list[dict[str, Any]] = [{"match": "what time", "reply": "Checking again.",
              "tool_calls": [{"name": "current_time", "arguments": {}}]}]
    config = {"models": [brain(rules)],
              "agents": [{"name": "loop", "model": "brain", "tools": ["current_time"], "max_steps": 3}]}
    async with agents_app(tmp_path, config) as env:
        r = await env.post("/v1/chat/completions", {"model": "agent/loop", "messages": _question()})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] == "length"
        run = await env.run(r.headers["x-thinktank-run-id"])
        assert run["status"] == "step_limit"
        assert [c["stage"] for c in run["calls"]].count("step") == 3
        assert run["result"]["answer"] == "Checking again." * 3


async def test_an_unknown_tool_name_is_a_tool_error(tmp_path: Path) -> None:
    rules: list[dict[str, Any]] = [{"match": BEFORE_TOOLS + "(?!.*Tool error).*what time",
              "tool_calls": [{"name": "rm_rf", "arguments": {}}]},
             *CLOCK_RULES[3:]]
    config = {"models": [brain(rules)], "agents": [{"name": "clock", "model": "brain", "tools": ["current_time"]}]}
    async with agents_app(tmp_path, config) as env:
        r = await env.post("/v1/chat/completions", {"model": "agent/clock", "messages": _question()})
        assert "there is no tool 'rm_rf'" in r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "x", "parameters": {}}}]}, "tools"),
    ({"mcp_servers": [{"url": "http://127.0.0.1:1/mcp"}]}, "mcp_servers"),
    ({"tools": [{"type": "mcp", "server_url": "http://127.0.0.1:1/mcp"}]}, "tools[0]"),
    ({"command": ["sh", "-c", "id"]}, "command"),
])
async def test_a_request_cannot_add_tools_servers_or_commands(tmp_path: Path, body: dict[str, Any],
                                                               param: str) -> None:
    async with agents_app(tmp_path, _config()) as env:
        r = await env.post("/v1/chat/completions", {"model": "agent/clock", "messages": _question(), **body})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
        assert (await env.get("/api/v1/runs")).json()["data"] == []  # nothing started
        r = await env.post("/api/v1/agents", {"agent": "clock", "question": "hi", "mcp_servers": [{"url": "x"}]})
        assert r.status_code in (400, 422)


# -- approvals ----------------------------------------------------------------------------------


async def _paused(env: Any) -> dict[str, Any]:
    r = await env.post("/api/v1/agents", {"agent": "clock", "question": "what time is it?"})
    assert r.status_code == 202, r.text
    run = r.json()
    assert run["status"] == "awaiting_approval"
    return dict(run)


async def test_a_tool_needing_approval_pauses_the_run_holding_nothing_and_an_approval_with_edited_arguments_goes_on(
    tmp_path: Path, db_url: str,
) -> None:
    async with agents_app(tmp_path, _config(approval="required"), database_url=db_url) as env:
        run = await _paused(env)
        deliberation = env.app.state.deliberation
        assert run["id"] not in deliberation.live and not deliberation._tasks
        events = await env.events(run["id"])
        asked = next(e for e in events if e["type"] == "approval_requested")
        call = asked["data"]["calls"][0]
        assert call["tool"] == "current_time" and call["arguments"] == {"timezone": "Europe/Paris"}
        assert [c["stage"] for c in run["calls"]] == ["step"]  # the tool has not run
        r = await env.post(f"/api/v1/runs/{run['id']}/approve", {"call_id": call["id"],
                                                                "arguments": {"timezone": "Asia/Tokyo"}})
        assert r.status_code == 202, r.text
        done = await env.settled(run["id"])
        assert done["status"] == "completed", done["error"]
        assert "+09:00" in done["result"]["answer"]  # Tokyo: the edited arguments ran
        assert [c["stage"] for c in done["calls"]] == ["step", "tool", "step"]
        assert done["calls"][1]["prompt"] == [{"arguments": {"timezone": "Asia/Tokyo"}}]
        types = [e["type"] for e in await env.events(run["id"])]
        assert types.count("done") == 1 and types.index("approval_decided") < types.index("tool_call")
        r = await env.post(f"/api/v1/runs/{run['id']}/approve", {})
        assert r.status_code == 409  # nothing waits any more


async def test_a_denial_s_reason_reaches_the_model(tmp_path: Path, db_url: str) -> None:
    async with agents_app(tmp_path, _config(approval="required"), database_url=db_url) as env:
        run = await _paused(env)
        r = await env.post(f"/api/v1/runs/{run['id']}/deny", {"reason": "no clocks today"})
        assert r.status_code == 202, r.text
        done = await env.settled(run["id"])
        assert done["result"]["answer"] == "I was told no: no clocks today."
        assert [c["stage"] for c in done["calls"]] == ["step", "step"]  # the tool never ran


async def test_an_approval_not_given_in_time_denies_the_call(tmp_path: Path) -> None:
    async with agents_app(tmp_path, _config(approval="required", approval_timeout=0.2)) as env:
        run = await _paused(env)
        for _ in range(200):
            done = await env.run(run["id"])
            if done["status"] == "completed":
                break
            await asyncio.sleep(0.05)
        assert done["result"]["answer"] == "I was told no: nobody approved it in time."


async def test_only_the_run_s_owner_decides(tmp_path: Path) -> None:
    async with agents_app(tmp_path, _config(approval="required")) as env:
        alice, bob = await env.user("alice@example.com"), await env.user("bob@example.com")
        r = await env.post("/api/v1/agents", {"agent": "clock", "question": "what time is it?"}, alice)
        run_id = r.json()["id"]
        for action in ("approve", "deny", "resume"):
            r = await env.post(f"/api/v1/runs/{run_id}/{action}", {}, bob)
            assert r.status_code == 404, (action, r.text)
        assert (await env.run(run_id, alice))["status"] == "awaiting_approval"
        r = await env.post(f"/api/v1/runs/{run_id}/approve", {"arguments": {"timezone": 7}}, alice)
        assert r.status_code == 400 and "timezone" in r.json()["error"]["message"]  # checked before anything runs
        assert (await env.run(run_id, alice))["status"] == "awaiting_approval"


async def test_a_paused_run_can_be_cancelled(tmp_path: Path) -> None:
    async with agents_app(tmp_path, _config(approval="required")) as env:
        run = await _paused(env)
        r = await env.post(f"/api/v1/runs/{run['id']}/cancel", {})
        assert r.status_code == 202 and r.json()["status"] == "cancelled"
        assert (await env.run(run["id"]))["status"] == "cancelled"
        assert (await env.post(f"/api/v1/runs/{run['id']}/approve", {})).status_code == 409


async def test_chat_completions_answer_a_notice_while_the_run_waits(tmp_path: Path) -> None:
    async with agents_app(tmp_path, _config(approval="required")) as env:
        r = await env.post("/v1/chat/completions", {"model": "agent/clock", "messages": _question()})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "awaiting_approval"
        run_id = r.headers["x-thinktank-run-id"]
        assert "current_time" in choice["message"]["content"] and run_id in choice["message"]["content"]


async def test_a_thread_turn_on_a_paused_agent_shows_the_answer_once_approved(tmp_path: Path) -> None:
    async with agents_app(tmp_path, _config(approval="required")) as env:
        thread = (await env.post("/api/v1/threads", {"model": "agent/clock"})).json()
        r = await env.post(f"/api/v1/threads/{thread['id']}/messages", {"content": "what time is it?"})
        assert r.status_code in (200, 201), r.text
        message = r.json()["message"]
        assert message["finish_reason"] == "awaiting_approval"
        run_id = message["context"]["run_id"]
        assert (await env.post(f"/api/v1/runs/{run_id}/approve", {})).status_code == 202
        await env.settled(run_id)
        for _ in range(100):
            messages = (await env.get(f"/api/v1/threads/{thread['id']}/messages")).json()["data"]
            if messages[-1]["finish_reason"] == "stop":
                break
            await asyncio.sleep(0.02)
        assert messages[-1]["content"].startswith("It is ") and messages[-1]["cost_usd"] > 0


async def test_a_streamed_run_that_pauses_ends_its_stream_and_the_rest_follows_after_the_decision(
    tmp_path: Path,
) -> None:
    async with agents_app(tmp_path, _config(approval="required")) as env:
        async with env.http.stream("POST", env.url + "/api/v1/agents", headers=AUTH,
                                   json={"agent": "clock", "question": "what time is it?", "stream": True}) as r:
            run_id = r.headers["x-thinktank-run-id"]
            lines = [line async for line in r.aiter_lines()]
        names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
        assert names[-1] == "approval_requested" and "done" not in names
        last = max(int(line[len("id: "):]) for line in lines if line.startswith("id: "))
        assert (await env.post(f"/api/v1/runs/{run_id}/approve", {})).status_code == 202
        async with env.http.stream("GET", env.url + f"/api/v1/runs/{run_id}/events",
                                   headers={**AUTH, "Last-Event-ID": str(last)}) as r:
            rest = [line[len("event: "):] async for line in r.aiter_lines() if line.startswith("event: ")]
        assert rest[0] == "approval_decided" and rest[-1] == "done" and "tool_result" in rest


async def test_the_time_limit_ends_a_slow_run_with_what_it_had(tmp_path: Path) -> None:
    rules = [{"match": "what time", "reply": "Still thinking.", "tool_calls": [{"name": "current_time",
                                                                               "arguments": {}}]}]
    config = {"models": [brain(rules, latency=0.3)],
              "agents": [{"name": "slow", "model": "brain", "tools": ["current_time"], "time_limit": 0.5}]}
    async with agents_app(tmp_path, config) as env:
        r = await env.post("/api/v1/agents", {"agent": "slow", "question": "what time is it?"})
        assert r.status_code == 200, r.text
        run = r.json()
        assert run["status"] == "time_limit"
        assert run["result"]["answer"].startswith("Still thinking.") and run["result"]["stopped"] == "time_limit"


async def test_a_thread_on_an_agent_starts_one_run_per_turn_and_a_cancelled_pause_shows_in_the_thread(
    tmp_path: Path,
) -> None:
    async with agents_app(tmp_path, _config(approval="required")) as env:
        thread = (await env.post("/api/v1/threads", {"model": "agent/clock"})).json()
        r = await env.post(f"/api/v1/threads/{thread['id']}/messages", {"content": "what time is it?"})
        run_id = r.json()["message"]["context"]["run_id"]
        await asyncio.sleep(0.3)  # memory extraction runs after the turn: on the agent's brain, not the agent
        runs = (await env.get("/api/v1/runs")).json()["data"]
        assert [x["id"] for x in runs] == [run_id]
        assert (await env.post(f"/api/v1/runs/{run_id}/cancel", {})).json()["status"] == "cancelled"
        messages = (await env.get(f"/api/v1/threads/{thread['id']}/messages")).json()["data"]
        assert messages[-1]["finish_reason"] == "cancelled" and "cancelled" in messages[-1]["content"]


async def test_a_run_whose_checkpoint_cannot_be_read_fails_once_saying_why(tmp_path: Path) -> None:
    from sqlalchemy import text

    async with agents_app(tmp_path, _config(approval="required")) as env:
        run = await _paused(env)
        async with env.app.state.db.engine.begin() as conn:  # a checkpoint from some other version, and overdue
            await conn.execute(text("UPDATE agent_states SET state = :s, deadline = 1 WHERE run_id = :r"),
                               {"s": '{"messages": [], "no_such_field": 1}', "r": run["id"]})
        for _ in range(200):
            done = await env.run(run["id"])
            if done["status"] == "failed":
                break
            await asyncio.sleep(0.02)
        assert done["status"] == "failed" and "could not be resumed" in done["error"]
