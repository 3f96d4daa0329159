"""``kill -9`` of one of three hosts while it executes ensembles, debates, ingestions and streamed thread turns
(issue 17).

Runs are streamed through HAProxy, so round robin spreads them over the hosts; the host executing the most of
them is chosen, six thread turns are streamed through HAProxy too (two a host), and the host is killed once each
turn has streamed a few words. Then:

- every run finishes (``completed``) on another host, from where it was (resumption through the job queue);
- every client whose stream was cut reconnects through the load balancer with ``Last-Event-ID`` and gets the
  rest: each event once, seqs going on from the last one it had, ending with ``done``;
- every thread turn that host was streaming is finished by another: its client reconnects through the load
  balancer with ``Last-Event-ID`` and gets what the dead host stored after its last event, one ``restart``, the
  whole answer and the stored message, each event once; every thread holds exactly one answer;
- every ingestion job (a few hundred documents in all, on whichever workers took them) ends ``succeeded`` with
  each document exactly once;
- the runs' costs are the sums of their calls, and the dead host's budget leases come back within the bound.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from deploy.multihost.fleet import Fleet, Host

from .helpers import make_key

QUESTION = "Where should the bridge cross the river? slow:3"
"""Each member, expert and judge takes 3 s: the runs are still going when the host dies."""
TURN = "Tell me about the valley. slow:8"
"""A turn's answer ("priced"): ten words over 8 s."""
TURN_ANSWER = "".join(f"w{i} " for i in range(10))
DOCS_PER_JOB = 100


@dataclass
class Streamed:
    kind: str
    run_id: str = ""
    host: Host | None = None
    seqs: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cut: bool = False
    started: asyncio.Event = field(default_factory=asyncio.Event)
    enough: asyncio.Event = field(default_factory=asyncio.Event)


def _sse(lines: list[str]) -> dict[str, Any] | None:
    """One SSE event (id and data) from its lines, or None."""
    seq = next((int(line[4:]) for line in lines if line.startswith("id: ")), None)
    data = "".join(line[6:] for line in lines if line.startswith("data: "))
    if seq is None or not data:
        return None
    return {"seq": seq, **json.loads(data)}


async def _read(response: httpx.Response, out: Streamed) -> None:
    lines: list[str] = []
    async for line in response.aiter_lines():
        if line:
            lines.append(line)
            continue
        event = _sse(lines)
        lines = []
        if event is None:
            continue
        out.seqs.append(event["seq"])
        out.types.append(event["type"])
        if event["type"] == "error":
            out.errors.append(str(event.get("message")))
        if event["type"] == "run_started":
            out.run_id = event["run_id"]
            out.started.set()
        if len(out.seqs) >= 4:
            out.enough.set()


async def _start(c: httpx.AsyncClient, f: Fleet, auth: dict[str, str], out: Streamed) -> None:
    body: dict[str, Any] = {"question": QUESTION, "stream": True, "max_tokens": 50}
    body[out.kind] = "council" if out.kind == "ensemble" else "panel"
    try:
        async with c.stream("POST", f"{f.url}/api/v1/{out.kind}s", json=body, headers=auth) as r:
            assert r.status_code == 200, await r.aread()
            out.host = f.served_by(r)
            await _read(r, out)
    except httpx.TransportError:
        out.cut = True
    finally:
        out.started.set()
        out.enough.set()


async def _rest(c: httpx.AsyncClient, f: Fleet, auth: dict[str, str], out: Streamed) -> None:
    """Reconnect through the load balancer after the last event the client had."""
    headers = {**auth, "Last-Event-ID": str(out.seqs[-1])}
    async with c.stream("GET", f"{f.url}/api/v1/runs/{out.run_id}/events", headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        await _read(r, out)


@dataclass
class Turn:
    thread_id: str
    host: Host | None = None
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    cut: bool = False
    enough: asyncio.Event = field(default_factory=asyncio.Event)


async def _read_turn(response: httpx.Response, out: Turn) -> None:
    seq, name = 0, ""
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            seq = int(line[4:])
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.events.append((seq, name, json.loads(line[6:])))
            if sum(e[1] == "delta" for e in out.events) >= 3:
                out.enough.set()


async def _turn(c: httpx.AsyncClient, f: Fleet, auth: dict[str, str], out: Turn) -> None:
    try:
        async with c.stream("POST", f"{f.url}/api/v1/threads/{out.thread_id}/messages", headers=auth,
                            json={"content": TURN, "stream": True}) as r:
            assert r.status_code == 200, await r.aread()
            out.host = f.served_by(r)
            await _read_turn(r, out)
    except httpx.TransportError:
        out.cut = True
    finally:
        out.enough.set()


async def _turn_rest(c: httpx.AsyncClient, f: Fleet, auth: dict[str, str], out: Turn) -> None:
    headers = {**auth, "Last-Event-ID": str(out.events[-1][0])}
    async with c.stream("GET", f"{f.url}/api/v1/threads/{out.thread_id}/turn/events", headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        await _read_turn(r, out)


def _check_turn(t: Turn, seen: int) -> None:
    """A turn's whole stream: seqs 1..n up to the cut (and what the dead host stored after it), then one
    ``restart`` past all of them and the new answer in order, ending with the stored message."""
    ids, kinds = [e[0] for e in t.events], [e[1] for e in t.events]
    assert kinds[-1] == "message", kinds
    assert t.events[-1][2]["message"]["content"].strip() == TURN_ANSWER.strip()
    if not t.cut:
        assert ids == list(range(1, len(ids) + 1)) and "restart" not in kinds, kinds
        return
    assert kinds.count("restart") == 1, kinds
    at = kinds.index("restart")
    assert ids[:at] == list(range(1, at + 1)) and at >= seen, ids  # the cut stream, then what was stored after it
    assert ids[at:] == list(range(ids[at], ids[at] + len(ids) - at)) and ids[at] > ids[at - 1], ids
    assert "".join(e[2]["content"] for e in t.events[at:] if e[1] == "delta") == TURN_ANSWER


async def _ingest(c: httpx.AsyncClient, f: Fleet, auth: dict[str, str], n: int) -> tuple[str, str]:
    kb = await c.post(f"{f.url}/api/v1/knowledge-bases", headers=auth, json={"name": f"kb-{n}"})
    assert kb.status_code == 201, kb.text
    docs = [{"name": f"d{n}-{i}.md", "text": f"# Note {n}.{i}\n\nItem {n}.{i} is kept in bin {i % 7} of row {n}."}
            for i in range(DOCS_PER_JOB)]
    r = await c.post(f"{f.url}/api/v1/knowledge-bases/{kb.json()['id']}/documents?async=true", headers=auth,
                     json={"documents": docs})
    assert r.status_code == 202, r.text
    return kb.json()["id"], r.headers["location"]


async def _until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.25)
    raise AssertionError(f"waited {timeout} s for {what}")


async def test_kill_9_of_a_host_mid_work_every_run_and_job_finishes_elsewhere(hosts: Fleet) -> None:
    _key_id, key = await make_key(hosts, budget_usd=1000, budget_period="day")
    auth = {"Authorization": f"Bearer {key}"}
    one_each = httpx.Limits(max_connections=100, max_keepalive_connections=0)  # a connection per request
    async with httpx.AsyncClient(timeout=120, limits=one_each) as c:
        jobs = [await _ingest(c, hosts, hosts.admin_headers, n) for n in range(3)]
        streams = [Streamed("ensemble") for _ in range(4)] + [Streamed("debate") for _ in range(4)]
        tasks = [asyncio.create_task(_start(c, hosts, auth, s)) for s in streams]
        await asyncio.wait_for(asyncio.gather(*(s.enough.wait() for s in streams)), 60)
        by_host: dict[str, list[Streamed]] = {}
        for s in streams:
            assert s.host is not None and s.run_id, (s, hosts.logs())
            by_host.setdefault(s.host.name, []).append(s)
        victim_name = max(by_host, key=lambda name: len(by_host[name]))
        victim = next(h for h in hosts.hosts if h.name == victim_name)
        index = hosts.hosts.index(victim)
        # Six thread turns through the load balancer: round robin gives each host two of them.
        threads = [await c.post(f"{hosts.url}/api/v1/threads", headers=auth, json={"model": "priced"})
                   for _ in range(6)]
        assert all(t.status_code == 201 for t in threads), [t.text for t in threads]
        turns = [Turn(t.json()["id"]) for t in threads]
        turn_tasks = [asyncio.create_task(_turn(c, hosts, auth, t)) for t in turns]
        await asyncio.wait_for(asyncio.gather(*(t.enough.wait() for t in turns)), 60)
        await asyncio.to_thread(hosts.kill, index, wait_lb=False)
        killed_at = time.monotonic()
        await asyncio.gather(*tasks, *turn_tasks)
        cut_turns = [t for t in turns if t.host is victim]
        assert cut_turns and all(t.cut for t in cut_turns), [(t.host, t.cut) for t in turns]
        assert all(not t.cut for t in turns if t.host is not victim)
        turn_seen = {id(t): len(t.events) for t in cut_turns}
        await asyncio.gather(*(_turn_rest(c, hosts, auth, t) for t in cut_turns))
        for t in turns:
            _check_turn(t, turn_seen.get(id(t), 0))
            messages = (await c.get(f"{hosts.url}/api/v1/threads/{t.thread_id}/messages", headers=auth)).json()
            assert [(m["role"], m["content"].strip()) for m in messages["data"]] == [
                ("user", TURN), ("assistant", TURN_ANSWER.strip())], messages

        assert not [s.errors for s in streams if s.errors], [s.errors for s in streams]
        cut = [s for s in streams if s.host is victim]
        assert cut and all(s.cut and "done" not in s.types for s in cut), [(s.kind, s.cut, s.types[-3:]) for s in cut]
        assert all("done" in s.types for s in streams if s.host is not victim)
        seen = {id(s): list(s.seqs) for s in cut}
        await asyncio.gather(*(_rest(c, hosts, auth, s) for s in cut))
        took_over = time.monotonic() - killed_at

        for s in streams:
            # Each event once, in order, the reconnected stream going on after the last event the client had.
            assert s.seqs == list(range(1, len(s.seqs) + 1)), (s.kind, s.seqs, seen.get(id(s)))
            assert s.types[-1] == "done", (s.kind, s.types)
            record = (await c.get(f"{hosts.url}/api/v1/runs/{s.run_id}", headers=auth)).json()
            assert record["status"] == "completed", (s.kind, record.get("error"), hosts.logs())
            paid = sum(call["cost_usd"] or 0 for call in record["calls"])  # each call paid once, counted once
            assert abs(paid - record["cost_usd"]) < 1e-9, (paid, record["cost_usd"])

        async def ended() -> list[dict[str, Any]] | None:
            got = [(await c.get(hosts.url + location, headers=hosts.admin_headers)).json() for _, location in jobs]
            return got if all(j["status"] in ("succeeded", "failed") for j in got) else None

        finished = await _until("the ingestions", ended, 180)
    assert [(j["status"], j["done"], j["total"]) for j in finished] == [("succeeded", DOCS_PER_JOB, DOCS_PER_JOB)] * 3
    conn = await asyncpg.connect(hosts.db_url, timeout=10)
    try:
        for kb_id, _ in jobs:
            rows = await conn.fetch("SELECT source, count(*) AS n FROM kb_documents WHERE kb_id = $1 GROUP BY source",
                                    kb_id)
            assert len(rows) == DOCS_PER_JOB and {r["n"] for r in rows} == {1}, kb_id
        # The dead host's budget leases are handed back within the bound (15 s after its last renewal).
        if await conn.fetchval("SELECT to_regclass('budget_leases') IS NOT NULL"):
            async def free() -> bool:
                holders = await conn.fetch("SELECT holder, expires_at FROM budget_leases")
                return len({r["holder"] for r in holders}) <= len(hosts.hosts) - 1

            await _until("the dead host's leases to come back", free, 40)
    finally:
        await conn.close()
    assert took_over < 60, took_over
    await asyncio.to_thread(hosts.start, index)
