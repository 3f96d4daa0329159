"""An agent run survives its server: killed (``kill -9``) in the middle of a step, the run goes on in the
next server from its last checkpoint, on SQLite and on PostgreSQL, without repeating a finished tool call
(``memory_remember`` stores one memory, not two) or paying twice for a finished model call."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..fakes.process import Server

ADMIN = "tt-restart-admin-0123456789"
H = {"Authorization": f"Bearer {ADMIN}"}

CONFIG = """
models:
  - name: brain
    provider: mock
    input_price: 1
    output_price: 2
    options:
      latency: 1.5
      rules:
        - match: '^(?!.*tool_result tool=).*remember that'
          tool_calls: [{name: memory_remember, arguments: {text: "The user's favourite colour is teal."}}]
        - match: 'tool_result tool="memory_remember"'
          reply: "Noted: your favourite colour is teal."
agents:
  - name: keeper
    model: brain
    tools: [memory_remember]
"""


def _wait(url: str, run_id: str, until: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/api/v1/runs/{run_id}", headers=H, timeout=5)
        if r.status_code == 200:
            record = r.json()
            if until(record):
                return record
        time.sleep(0.1)
    raise AssertionError(f"the run did not get there in {timeout} s: {record.get('status')} {record.get('error')}")


def _events(url: str, run_id: str) -> list[str]:
    r = httpx.get(f"{url}/api/v1/runs/{run_id}/events", params={"format": "json"}, headers=H, timeout=5)
    return [e["type"] for e in r.json()["data"]]


def test_a_killed_server_s_agent_run_resumes_in_the_next_one_from_its_checkpoint(
    server: type[Server], env: dict[str, str], db_url: str, tmp_path: Path,
) -> None:
    cfg = tmp_path / "agents.yaml"
    cfg.write_text(CONFIG)
    run_env = {**env, "THINKTANK_CONFIG": str(cfg), "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATABASE_URL": db_url,
               "THINKTANK_RUN_STALE_AFTER": "2"}
    first = server([], run_env)
    with httpx.stream("POST", f"{first.url}/api/v1/agents", headers=H, timeout=10,
                      json={"agent": "keeper", "question": "Please remember that my favourite colour is teal.",
                            "stream": True}) as r:
        run_id = r.headers["x-thinktank-run-id"]
        # The tool call has run and its result is checkpointed; the second model call (1.5 s) is under way.
        _wait(first.url, run_id, lambda rec: any(c["stage"] == "tool" for c in rec["calls"]))
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)

    second = server([], run_env)
    record = _wait(second.url, run_id, lambda rec: rec["status"] != "running")
    assert record["status"] == "completed", record["error"]
    assert record["result"]["answer"] == "Noted: your favourite colour is teal."
    stages = [c["stage"] for c in record["calls"]]
    assert stages == ["step", "tool", "step"], stages  # the finished step and tool call were not done again
    assert record["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in record["calls"]))
    assert "resumed" in _events(second.url, run_id)
    memories = httpx.get(f"{second.url}/api/v1/me/memory", headers=H, timeout=5).json()["data"]
    assert [m["text"] for m in memories] == ["The user's favourite colour is teal."]  # remembered once


def test_an_interrupted_run_resumes_when_asked(server: type[Server], env: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "agents.yaml"
    cfg.write_text(CONFIG)
    run_env = {**env, "THINKTANK_CONFIG": str(cfg), "THINKTANK_ADMIN_KEY": ADMIN,
               "THINKTANK_RUN_STALE_AFTER": "3600"}  # never by itself within this test
    first = server([], run_env)
    with httpx.stream("POST", f"{first.url}/api/v1/agents", headers=H, timeout=10,
                      json={"agent": "keeper", "question": "Please remember that my favourite colour is teal.",
                            "stream": True}) as r:
        run_id = r.headers["x-thinktank-run-id"]
        _wait(first.url, run_id, lambda rec: any(c["stage"] == "tool" for c in rec["calls"]))
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
    second = server([], run_env)
    assert httpx.get(f"{second.url}/api/v1/runs/{run_id}", headers=H, timeout=5).json()["status"] == "running"
    deadline = time.monotonic() + 30
    while True:  # refused (409) while the run's last save is younger than the silence that proves it stopped
        r = httpx.post(f"{second.url}/api/v1/runs/{run_id}/resume", headers=H, timeout=5)
        if r.status_code == 202 or time.monotonic() > deadline:
            break
        assert r.status_code == 409, r.text
        time.sleep(0.5)
    assert r.status_code == 202, r.text
    record = _wait(second.url, run_id, lambda rec: rec["status"] != "running")
    assert record["status"] == "completed" and [c["stage"] for c in record["calls"]] == ["step", "tool", "step"]
    again = httpx.post(f"{second.url}/api/v1/runs/{run_id}/resume", headers=H, timeout=5)
    assert again.status_code == 409
