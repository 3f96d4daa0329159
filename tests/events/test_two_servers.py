"""Two real ``thinktank serve`` processes sharing PostgreSQL (the bus: its LISTEN/NOTIFY, or Redis): a run
started on A is followed live on B, every event once and in order; a thread turn streamed on A is resumed
on B with ``Last-Event-ID``, getting exactly the rest."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..fakes.process import Server, run

WORDS = " ".join(f"w{i}" for i in range(80))
CONFIG = f"""
models:
  - {{name: m1, provider: mock, options: {{replies: ["answer one"], latency: 0.05}}}}
  - {{name: m2, provider: mock, options: {{replies: ["answer two"], latency: 0.05}}}}
  - {{name: writer, provider: mock, options: {{replies: ["{WORDS}"], chunk_delay: 0.02}}}}
ensembles:
  - {{name: panel, members: [m1, m2], strategy: heuristic, chairman: writer}}
"""
DEADLINE = 60.0


@pytest.fixture
async def pg_database(pg_template: str) -> AsyncIterator[str]:
    from ..fakes.databases import clone_pg, drop_pg

    name, url = await clone_pg(pg_template)
    try:
        yield url
    finally:
        await drop_pg(name)


@pytest.fixture(params=["postgres", "redis"])
def pair(request: pytest.FixtureRequest, server: type[Server], env: dict[str, str], tmp_path: Path,
         pg_database: str) -> tuple[Server, Server, str]:
    """Servers A and B and a key of a user of theirs."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    shared = {**env, "THINKTANK_CONFIG": str(cfg), "THINKTANK_DATABASE_URL": pg_database,
              "THINKTANK_EVENT_BUS": request.param}
    if request.param == "redis":
        shared["THINKTANK_REDIS_URL"] = request.getfixturevalue("redis_url")
    key = run(["keys", "create", "--name", "events"], shared).stdout.strip()
    assert key.startswith("tt-")
    return server([], shared), server([], shared), key


async def sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The events of an SSE response: id, event and the JSON data."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif line.startswith("id: "):
            event["id"] = int(line[4:])
        elif line.startswith("event: "):
            event["event"] = line[7:]
        elif line.startswith("data: "):
            event["data"] = json.loads(line[6:])


async def test_a_run_started_on_a_is_followed_live_on_b(pair: tuple[Server, Server, str]) -> None:
    a, b, key = pair
    headers = {"Authorization": f"Bearer {key}"}
    on_a: list[dict[str, Any]] = []
    on_b: list[dict[str, Any]] = []
    b_while_running: list[str] = []
    async with httpx.AsyncClient(timeout=DEADLINE, headers=headers) as client, asyncio.timeout(DEADLINE):
        async with client.stream("POST", a.url + "/api/v1/ensembles",
                                 json={"ensemble": "panel", "question": "q", "stream": True}) as started:
            assert started.status_code == 200
            run_id = started.headers["x-thinktank-run-id"]
            events = sse(started)
            on_a.append(await anext(events))

            async def follow_on_b() -> None:
                async with client.stream("GET", f"{b.url}/api/v1/runs/{run_id}/events") as followed:
                    assert followed.status_code == 200
                    async for event in sse(followed):
                        if on_a[-1]["event"] != "done":
                            b_while_running.append(event["event"])
                        on_b.append(event)

            follower = asyncio.create_task(follow_on_b())
            async for event in events:
                on_a.append(event)
            await follower
        # Resumed on B after the run: exactly the rest.
        async with client.stream("GET", f"{b.url}/api/v1/runs/{run_id}/events",
                                 headers={"Last-Event-ID": "5"}) as resumed:
            rest = [e async for e in sse(resumed)]
    assert on_a[-1]["event"] == "done" and on_a[-1]["data"]["status"] == "completed"
    assert [e["id"] for e in on_b] == list(range(1, len(on_a) + 1))  # every event once, in order
    assert [(e["event"], e["data"]) for e in on_b] == [(e["event"], e["data"]) for e in on_a]
    assert sum(e["event"] == "synthesis_token" for e in on_b) == 80
    assert "synthesis_token" in b_while_running  # B followed it live, while it ran
    assert [e["id"] for e in rest] == list(range(6, len(on_a) + 1))


async def test_a_turn_streamed_on_a_is_resumed_on_b(pair: tuple[Server, Server, str]) -> None:
    a, b, key = pair
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=DEADLINE, headers=headers) as client, asyncio.timeout(DEADLINE):
        thread = (await client.post(a.url + "/api/v1/threads", json={"model": "writer"})).json()
        seen: list[dict[str, Any]] = []
        async with client.stream("POST", f"{a.url}/api/v1/threads/{thread['id']}/messages",
                                 json={"content": "hello", "stream": True}) as streamed:
            assert streamed.status_code == 200
            async for event in sse(streamed):
                seen.append(event)
                if len(seen) == 5:
                    break  # the client's connection breaks; the turn goes on
        async with client.stream("GET", f"{b.url}/api/v1/threads/{thread['id']}/turn/events",
                                 headers={"Last-Event-ID": "5"}) as resumed:
            assert resumed.status_code == 200
            rest = [e async for e in sse(resumed)]
        # After the turn, from the start, on either server: the same events.
        replays = []
        for server in (a, b):
            async with client.stream("GET", f"{server.url}/api/v1/threads/{thread['id']}/turn/events") as again:
                replays.append([e async for e in sse(again)])
    assert [e["id"] for e in seen] == [1, 2, 3, 4, 5]
    assert [e["id"] for e in rest] == list(range(6, len(rest) + 6))
    assert rest[-1]["event"] == "message"
    assert rest[-1]["data"]["message"]["content"] == WORDS
    whole = seen + rest
    assert "".join(e["data"]["content"] for e in whole if e["event"] == "delta") == WORDS
    assert replays[0] == replays[1] == whole
