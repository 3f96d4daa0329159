"""``thinktank agent`` against ``thinktank serve --demo``: the steps as they come, an approval asked in the
terminal (approved, edited, denied) or left waiting with ``--no-input``."""

from __future__ import annotations

import json
from typing import Any

from ..fakes.process import Server
from .helpers import cli, client_env, ok

QUESTION = "What does http://127.0.0.1:9/pricing say?"  # a page nobody serves: the fetch fails when approved


def _json(out: str) -> Any:
    """The record printed last (the test runner echoes what was typed at the prompts before it)."""
    return json.loads(out[out.index("\n{") + 1:] if not out.startswith("{") else out)


def test_no_input_leaves_the_approval_waiting_and_says_how_to_decide(demo_server: Server) -> None:
    r = cli("agent", QUESTION, "--no-input", "--json", env=client_env(demo_server))
    record = _json(ok(r))
    assert record["status"] == "awaiting_approval"
    assert "knowledge_search" in r.stderr and "waits for your approval of fetch_url" in r.stderr
    assert f"/api/v1/runs/{record['id']}/approve" in r.stderr


def test_an_approval_given_in_the_terminal_runs_the_call_and_the_agent_answers(demo_server: Server) -> None:
    r = cli("agent", QUESTION, "--json", env=client_env(demo_server), stdin="y\n")
    record = _json(ok(r))
    assert record["status"] == "completed"
    assert [c["model"] for c in record["calls"]] == ["demo/researcher", "knowledge_search", "fetch_url",
                                                     "demo/researcher"]
    assert "refused" in str(record["calls"][2]["error"])  # loopback: the fetcher says no
    assert "calls fetch_url" in r.stderr


def test_edited_arguments_and_a_denial_from_the_terminal(demo_server: Server) -> None:
    r = cli("agent", QUESTION, "--json", env=client_env(demo_server),
            stdin='e\n{"url": "http://127.0.0.1:9/other"}\n')
    record = _json(ok(r))
    assert record["calls"][2]["prompt"] == [{"arguments": {"url": "http://127.0.0.1:9/other"}}]
    r = cli("agent", QUESTION, "--json", env=client_env(demo_server), stdin="n\nnot today\n")
    record = _json(ok(r))
    assert record["status"] == "completed" and "not today" in str(record["result"])
    assert "fetch_url" not in [c["model"] for c in record["calls"]]
