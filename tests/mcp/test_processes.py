"""``/mcp`` is stateless: two ``thinktank serve`` processes sharing one database (and nothing in memory) answer
one client's messages in turns, the handshake on one and the calls on the other, a run started on one read
back on the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from ..fakes.process import Server
from .conftest import ADMIN, CONFIG

HEADERS = {"Authorization": f"Bearer {ADMIN}", "Accept": "application/json, text/event-stream",
           "Content-Type": "application/json"}


@pytest.fixture
def shared_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "thinktank.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    return {**env, "THINKTANK_CONFIG": str(config), "THINKTANK_ADMIN_KEY": ADMIN}


def post(client: httpx.Client, url: str, message: dict[str, Any], version: str | None) -> httpx.Response:
    headers = {**HEADERS, **({"MCP-Protocol-Version": version} if version else {})}
    return client.post(url + "/mcp", content=orjson.dumps(message), headers=headers)


def answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer a POST carries (the last event of its stream), and no session id."""
    assert response.status_code == 200, response.text
    assert "mcp-session-id" not in response.headers
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        message: dict[str, Any] = orjson.loads([d for d in data if d][-1])
        return message
    parsed: dict[str, Any] = response.json()
    return parsed


def test_two_processes_answer_one_client_in_turns(server: type[Server], shared_env: dict[str, str]) -> None:
    a = server([], shared_env)
    b = server([], shared_env)
    with httpx.Client(timeout=60) as c:
        init = answer(post(c, a.url, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}, None))
        version = init["result"]["protocolVersion"]
        assert version == "2025-06-18"
        note = post(c, b.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, version)
        assert note.status_code == 202
        tools = answer(post(c, b.url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, version))
        assert "run_debate" in {t["name"] for t in tools["result"]["tools"]}
        debate = answer(post(c, a.url, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "run_debate", "arguments": {"debate": "panel", "question": "Which database?", "plan": True}}},
            version))
        run_id = debate["result"]["structuredContent"]["id"]
        record = answer(post(c, b.url, {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
            "name": "get_run", "arguments": {"run_id": run_id}}}, version))
        assert record["result"]["structuredContent"]["status"] == "completed"
        plan = answer(post(c, b.url, {"jsonrpc": "2.0", "id": 5, "method": "resources/read", "params": {
            "uri": f"thinktank://runs/{run_id}/plan.md"}}, version))
        assert plan["result"]["contents"][0]["text"] == "# Plan\n## Goal\nShip v1 on PostgreSQL."
