"""New runs are jobs any worker executes: a server that runs no jobs (``THINKTANK_WORKER=false``) creates the run,
queues it on the PostgreSQL queue and follows it; a worker executes it. With no worker up nothing is asked of the
upstream; a worker started later executes it, and the request's client (streamed, waiting, or through the chat
endpoint) gets the whole run as if it had run where it asked. The request is recorded once, by the worker, under
its own request id, with everything the run cost; a cancel asked through the server stops it; a worker killed in
the middle hands it on to the next without asking finished members again."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from ..fakes.process import Server
from .resume_upstream import PanelUpstream, config

ADMIN = "tt-dispatch-admin-0123456789"
H = {"Authorization": f"Bearer {ADMIN}"}
QUESTION = "Where does the river cross the valley?"
COUNCIL = "The council agrees: the river crosses the valley."


@pytest.fixture
async def pg_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    from ..fakes.databases import clone_pg, drop_pg

    name, url = await clone_pg(request.getfixturevalue("pg_template"))
    try:
        yield url
    finally:
        await drop_pg(name)


@pytest.fixture
def run_env(env: dict[str, str], pg_url: str, tmp_path: Path, upstream: PanelUpstream) -> dict[str, str]:
    cfg = tmp_path / "runs.yaml"
    cfg.write_text(config(upstream.url))
    return {**env, "THINKTANK_CONFIG": str(cfg), "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATABASE_URL": pg_url,
            "THINKTANK_RUN_STALE_AFTER": "2"}


def _api_node(server: type[Server], run_env: dict[str, str], tmp_path: Path) -> Server:
    return server([], {**run_env, "THINKTANK_WORKER": "false", "THINKTANK_DATA_DIR": str(tmp_path / "api")})


def _worker(server: type[Server], run_env: dict[str, str], tmp_path: Path, name: str) -> Server:
    return server([], {**run_env, "THINKTANK_DATA_DIR": str(tmp_path / name)})


def _wait(what: str, until: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = until()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout} s for {what}")


def _record(url: str, run_id: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/api/v1/runs/{run_id}", headers=H, timeout=5)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _usage(pg_url: str, request_id: str) -> list[tuple[str, int, float]]:
    async def read() -> list[tuple[str, int, float]]:
        conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
        try:
            rows = await conn.fetch("SELECT model, status, cost_usd FROM usage WHERE request_id = $1", request_id)
        finally:
            await conn.close()
        return [(r["model"], r["status"], float(r["cost_usd"])) for r in rows]

    return asyncio.run(read())


def _sse(response: httpx.Response) -> Iterator[tuple[int, str]]:
    seq = 0
    for line in response.iter_lines():
        if line.startswith("id: "):
            seq = int(line[4:])
        elif line.startswith("event: "):
            yield seq, line[7:]


def test_an_api_node_queues_new_runs_and_a_worker_executes_them(
    server: type[Server], run_env: dict[str, str], upstream: PanelUpstream, tmp_path: Path, pg_url: str,
) -> None:
    api = _api_node(server, run_env, tmp_path)
    body = {"ensemble": "council", "question": QUESTION, "stream": True}
    with httpx.stream("POST", f"{api.url}/api/v1/ensembles", headers=H, json=body, timeout=60) as r:
        assert r.status_code == 200
        run_id, request_id = r.headers["x-thinktank-run-id"], r.headers["x-request-id"]
        events = _sse(r)
        assert next(events) == (1, "run_started")
        time.sleep(1.5)
        assert upstream.asked == []  # nobody runs jobs: the server that took the request does not execute it
        worker = _worker(server, run_env, tmp_path, "w1")
        rest = list(events)
    assert [seq for seq, _ in rest] == list(range(2, len(rest) + 2))  # each event once, in order
    assert rest[-1][1] == "done" and "resumed" not in [t for _, t in rest]
    record = _record(api.url, run_id)
    assert record["status"] == "completed" and record["result"]["answer"] == COUNCIL
    assert [upstream.count(m) for m in ("alpha", "beta", "gamma", "judge", "chair")] == [1, 1, 1, 3, 1]
    assert record["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in record["calls"])) and record["cost_usd"] > 0
    # Recorded once, by the worker, under the request's own id, with everything the run cost.
    rows = _wait("the request's usage row", lambda: _usage(pg_url, request_id))
    time.sleep(1.0)
    assert _usage(pg_url, request_id) == rows
    assert rows == [("ensemble/council", 200, pytest.approx(record["cost_usd"]))]

    # Waiting for the answer, and through the chat endpoint: the same, executed by the worker.
    r2 = httpx.post(f"{api.url}/api/v1/debates", headers=H, json={"debate": "panel", "question": QUESTION},
                    timeout=60)
    assert r2.status_code == 200, r2.text
    debate = r2.json()
    assert debate["status"] == "completed" and debate["result"]["answer"].startswith("## Answer\nBuild the bridge")
    assert debate["calls"] and debate["cost_usd"] > 0
    r3 = httpx.post(f"{api.url}/v1/chat/completions", headers=H, timeout=60,
                    json={"model": "ensemble/council", "messages": [{"role": "user", "content": "Which bend?"}]})
    assert r3.status_code == 200, r3.text
    assert r3.json()["choices"][0]["message"]["content"] == COUNCIL
    assert r3.json()["usage"]["total_tokens"] > 0
    chat_rows = _wait("the chat request's usage row", lambda: _usage(pg_url, r3.headers["x-request-id"]))
    assert [(m, s) for m, s, _ in chat_rows] == [("ensemble/council", 200)]
    assert worker.proc.poll() is None


def test_a_run_queued_by_an_api_node_is_cancelled_through_it_and_handed_on_when_its_worker_dies(
    server: type[Server], run_env: dict[str, str], upstream: PanelUpstream, tmp_path: Path,
) -> None:
    api = _api_node(server, run_env, tmp_path)
    first = _worker(server, run_env, tmp_path, "w1")
    upstream.hold = lambda model, _prompt: model == "gamma"  # its first answer never comes
    with httpx.stream("POST", f"{api.url}/api/v1/ensembles", headers=H, timeout=60,
                      json={"ensemble": "council", "question": QUESTION, "stream": True}) as r:
        run_id = r.headers["x-thinktank-run-id"]
        _wait("two members answered, the third held", lambda: len(upstream.held) == 1 and len(
            [c for c in _record(api.url, run_id)["calls"] if c["stage"] == "answer" and c["answer"]]) == 2)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        second = _worker(server, run_env, tmp_path, "w2")
        followed = list(_sse(r))  # the client's stream from the API node goes on, through the take-up
    assert [seq for seq, _ in followed] == list(range(1, len(followed) + 1)) and followed[-1][1] == "done"
    assert [t for _, t in followed].count("resumed") == 1
    record = _record(api.url, run_id)
    assert record["status"] == "completed" and record["result"]["answer"] == COUNCIL
    # The finished members were asked once; the one held twice (its first answer died with its worker).
    assert [upstream.count(m) for m in ("alpha", "beta", "gamma")] == [1, 1, 2]

    # A cancel asked through the API node reaches the worker executing the run.
    upstream.held.clear()
    upstream.hold = lambda model, _prompt: model == "gamma"
    with httpx.stream("POST", f"{api.url}/api/v1/ensembles", headers=H, timeout=60,
                      json={"ensemble": "council", "question": "And the second river?", "stream": True}) as r:
        run_id = r.headers["x-thinktank-run-id"]
        _wait("the third member held", lambda: len(upstream.held) == 1)
        cancelled = httpx.post(f"{api.url}/api/v1/runs/{run_id}/cancel", headers=H, timeout=10)
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelling"
        assert list(_sse(r))[-1][1] == "done"
    record = _record(api.url, run_id)
    assert record["status"] == "cancelled"
    assert second.proc.poll() is None
