"""Agents with MCP servers' tools, end to end: a real server's tool (``mcp-server-git``) waits for the approval
its server's configuration asks for, then runs; a server that crashes or answers garbage mid-run is a tool
error the model reads, not a failed run; and an agent never sees a tool its caller's key may not use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from .agent_apps import AUTH, BEFORE_TOOLS, agents_app, brain
from .conftest import raw_server


def _repo(path: Path) -> Path:
    path.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "t@example.com"], ["config", "user.name", "T"]):
        subprocess.run(["git", *args], cwd=path, check=True)
    (path / "notes.txt").write_text("kettles boil water\n")
    subprocess.run(["git", "add", "notes.txt"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "First notes about kettles"], cwd=path, check=True)
    return path


async def test_a_git_server_s_tool_waits_for_approval_then_the_agent_reads_the_log(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    rules: list[dict[str, Any]] = [
        {"match": BEFORE_TOOLS + ".*last commit", "tool_calls": [{"name": "git__git_log",
                                                                  "arguments": {"repo_path": str(repo)}}]},
        {"match": r"(?s)tool_result tool=\"git.git_log\">.*?(?P<msg>First notes[^\n]*)", "template": True,
         "reply": "The last commit says: \\g<msg>"},
    ]
    config = {"models": [brain(rules)],
              "mcp_servers": [{"name": "git", "command": [sys.executable, "-m", "mcp_server_git", "--repository",
                                                           str(repo)], "approval": "required"}],
              "agents": [{"name": "historian", "model": "brain", "tools": ["git.*"]}]}
    async with agents_app(tmp_path, config) as env:
        r = await env.post("/api/v1/agents", {"agent": "historian", "question": "What does the last commit say?"})
        assert r.status_code == 202, r.text  # the server's approval: required
        run = r.json()
        asked = [e for e in await env.events(run["id"]) if e["type"] == "approval_requested"]
        assert asked[0]["data"]["calls"][0]["tool"] == "git.git_log"
        assert (await env.post(f"/api/v1/runs/{run['id']}/approve", {})).status_code == 202
        done = await env.settled(run["id"])
        assert done["status"] == "completed", done["error"]
        assert done["result"]["answer"] == "The last commit says: First notes about kettles"
        assert [c["model"] for c in done["calls"]] == ["brain", "git.git_log", "brain"]


async def test_a_server_that_crashes_or_answers_garbage_mid_run_is_a_tool_error(tmp_path: Path) -> None:
    rules: list[dict[str, Any]] = [
        {"match": BEFORE_TOOLS + "(?!.*Tool error).*break it", "tool_calls": [
            {"name": "raw__crash", "arguments": {}}, {"name": "raw__garbage", "arguments": {}}]},
        {"match": r"(?s)Tool error: (?P<a>[^\n]*).*Tool error: (?P<b>[^\n]*)", "template": True,
         "reply": "Both failed: \\g<a> / \\g<b>"},
    ]
    server = raw_server().model_dump(mode="json", exclude_none=True)
    config = {"models": [brain(rules)], "mcp_servers": [server],
              "agents": [{"name": "breaker", "model": "brain", "tools": ["raw.crash", "raw.garbage"],
                          "parallel_tools": 1}]}
    async with agents_app(tmp_path, config) as env:
        r = await env.post("/v1/chat/completions", {"model": "agent/breaker",
                                                    "messages": [{"role": "user", "content": "break it"}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"].startswith("Both failed: ")
        run = await env.run(r.headers["x-thinktank-run-id"])
        assert run["status"] == "completed"
        assert [c["model"] for c in run["calls"]] == ["brain", "raw.crash", "raw.garbage", "brain"]
        assert run["calls"][1]["error"] and run["calls"][2]["error"]


async def test_an_agent_never_sees_a_tool_its_key_may_not_use(tmp_path: Path) -> None:
    rules: list[dict[str, Any]] = [
        {"match": BEFORE_TOOLS + "(?!.*Tool error).*what time",
         "tool_calls": [{"name": "current_time", "arguments": {}}]},
        {"match": r"Tool error: (?P<e>[^\n]*)", "template": True, "reply": "\\g<e>"},
        {"match": r"tool_result tool=", "reply": "I read the clock."},
    ]
    config = {"models": [brain(rules)],
              "agents": [{"name": "clock", "model": "brain", "tools": ["current_time", "memory_recall"]}]}
    async with agents_app(tmp_path, config) as env:
        r = await env.post("/api/v1/keys", {"name": "no clock", "tools": ["memory_recall"]})
        assert r.status_code == 201, r.text
        limited = {"Authorization": f"Bearer {r.json()['key']}"}
        r = await env.post("/v1/chat/completions", {"model": "agent/clock", "messages": [
            {"role": "user", "content": "what time is it?"}]}, limited)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == (
            "there is no tool 'current_time' (the tools are: memory_recall)")
        r = await env.post("/v1/chat/completions", {"model": "agent/clock", "messages": [
            {"role": "user", "content": "what time is it?"}]}, AUTH)
        assert r.json()["choices"][0]["message"]["content"] == "I read the clock."


async def test_a_request_cannot_waive_a_server_s_approval(tmp_path: Path) -> None:
    rules: list[dict[str, Any]] = [
        {"match": BEFORE_TOOLS + ".*say hi", "tool_calls": [{"name": "raw__echo", "arguments": {"text": "hi"}}]},
        {"match": "tool_result tool=", "reply": "Echoed."},
    ]
    server = raw_server(approval="required").model_dump(mode="json", exclude_none=True)
    config = {"models": [brain(rules)], "mcp_servers": [server],
              "agents": [{"name": "waiver", "model": "brain", "tools": [{"name": "raw.echo", "approval": "never"}]},
                         {"name": "plain", "model": "brain", "tools": ["current_time"]}]}
    async with agents_app(tmp_path, config) as env:
        # The configuration may waive it for its own agent ...
        r = await env.post("/api/v1/agents", {"agent": "waiver", "question": "say hi"})
        assert r.status_code == 200 and r.json()["result"]["answer"] == "Echoed.", r.text
        # ... a request may not, for another agent or for one it describes itself.
        for body in ({"agent": "plain", "tools": [{"name": "raw.echo", "approval": "never"}]},
                     {"model": "brain", "tools": [{"name": "raw.echo", "approval": "never"}], "approval": "never"}):
            r = await env.post("/api/v1/agents", {**body, "question": "say hi"})
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "awaiting_approval"
