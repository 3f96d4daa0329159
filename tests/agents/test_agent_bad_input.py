"""Bad input on the agent endpoints: a clear 4xx, never a 500, and the run left as it was (still waiting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .agent_apps import AUTH, agents_app
from .test_agents_api import _config

RAW_BODIES = [
    b'{"arguments": {"timezone": 1000000000000000000000000000000}}',   # past 64 bits
    b'{"arguments": {"timezone": "\\ud800"}}',                        # a lone surrogate
    b'{"arguments": {"timezone": 1e400}}',                             # not a double
    b'{"arguments": ' + b'[' * 5000 + b']' * 5000 + b'}',                # deep nesting
    b'{"arguments": ["not", "an", "object"]}',
    b'{"call_id": 12}',
    b'{"call_id": "' + b'x' * 5000 + b'"}',
    b'{"reason": "' + b'r' * 5000 + b'"}',
    b'\xff\xfe not json',
    b'{"arguments": NaN}',
    b'{"unknown": 1}',
]


@pytest.mark.parametrize("body", RAW_BODIES, ids=range(len(RAW_BODIES)))
async def test_bad_decisions_are_client_errors_and_the_run_still_waits(tmp_path: Path, body: bytes) -> None:
    async with agents_app(tmp_path, _config(approval="required")) as env:
        r = await env.post("/api/v1/agents", {"agent": "clock", "question": "what time is it?"})
        run_id = r.json()["id"]
        for action in ("approve", "deny"):
            r = await env.http.post(f"{env.url}/api/v1/runs/{run_id}/{action}", content=body,
                                    headers={**AUTH, "content-type": "application/json"})
            assert 400 <= r.status_code < 500, (action, r.status_code, r.text)
            assert r.json()["error"]["message"]
        assert (await env.run(run_id))["status"] == "awaiting_approval"
        r = await env.post(f"/api/v1/runs/{run_id}/approve", {})
        assert r.status_code == 202  # and a good decision still works
        assert (await env.settled(run_id))["status"] == "completed"


@pytest.mark.parametrize("body", [
    {"agent": "nosuch", "question": "hi"},
    {"agent": "clock", "question": "hi", "max_steps": 10**30},
    {"agent": "clock", "question": "hi", "max_steps": 0},
    {"agent": "clock", "question": "hi", "tools": ["shell"]},
    {"agent": "clock", "question": "hi", "tools": ["nosuchserver.tool"]},
    {"agent": "clock", "question": "hi", "model": "nosuch-model"},
    {"agent": "clock", "question": "hi", "time_limit": -1},
    {"agent": "clock"},
    {"agent": "clock", "question": "hi", "tools": [{"name": "current_time", "approval": "sometimes"}]},
])
async def test_bad_agent_requests_are_refused_before_anything_runs(tmp_path: Path, body: dict[str, Any]) -> None:
    async with agents_app(tmp_path, _config()) as env:
        r = await env.post("/api/v1/agents", body)
        assert r.status_code in (400, 404, 422), r.text
        assert (await env.get("/api/v1/runs")).json()["data"] == []
