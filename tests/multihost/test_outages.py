"""The database or Redis restarted while requests flow through the load balancer: during the outage, requests that
need it get a 503 naming it (with Retry-After; never a 500, never a hang), the others go on; afterwards everything
works again without restarting thinktank."""

from __future__ import annotations

import asyncio

import httpx
from deploy.multihost.fleet import Fleet

from .helpers import chat, make_key, wait_usage
from .load import Load, Outcome


def _unavailable(o: Outcome, code: str) -> bool:
    return (o.status == 503 and isinstance(o.body, dict) and o.body["error"]["type"] == "service_unavailable"
            and o.body["error"]["code"] == code and int(o.headers["retry-after"]) >= 1)


async def _all_down(f: Fleet) -> None:
    """Until HAProxy has taken every checked host out (their /ready fails): requests go to the unchecked backups."""
    for host in f.hosts:
        await asyncio.to_thread(f.lb.wait_state, host.name, "DOWN", 30)


async def test_a_database_restart_answers_503_meanwhile_and_recovers_without_restarting_thinktank(
        hosts: Fleet) -> None:
    key_id, key = await make_key(hosts)
    pids = [h.proc.pid for h in hosts.hosts if h.proc is not None]
    auth = {"Authorization": f"Bearer {key}"}

    async def chat_request(c: httpx.AsyncClient) -> httpx.Response:
        # Needs the database only to look its key up (cached for THINKTANK_AUTH_CACHE_TTL, 5 s); usage rows wait.
        return await c.post(hosts.url + "/v1/chat/completions", json=chat("free"), headers=auth)

    async def listing(c: httpx.AsyncClient) -> httpx.Response:
        return await c.get(hosts.url + "/api/v1/keys", headers=hosts.admin_headers)  # a query every time

    load = Load({"chat": chat_request, "keys": listing})
    load.start()
    try:
        await load.until(lambda: len(load.of("before", "chat")) >= 5 and len(load.of("before", "keys")) >= 5,
                         "requests before the outage")
        load.phase = "down"
        await asyncio.to_thread(hosts.db.stop, "fast")  # every session ended; new connections refused
        await _all_down(hosts)
        # Long enough for the cached keys to run out: chat requests then need the database too.
        await load.until(lambda: any(_unavailable(o, "database_unavailable") for o in load.of("down", "chat")),
                         "a chat request refused for the database")
        load.phase = "restarting"
        await asyncio.to_thread(hosts.db.start)
        load.phase = "after"
        await asyncio.to_thread(hosts.wait_all_up)
        load.phase = "recovered"
        await load.until(lambda: len(load.of("recovered", "chat")) >= 10 and len(load.of("recovered", "keys")) >= 10,
                         "requests after the recovery")
    finally:
        if not hosts.db.running:
            await asyncio.to_thread(hosts.db.start)
        await load.stop()
    summary = load.summary()
    # Never a 500, a hang or a broken connection: an answer, 200 or 503.
    assert all(o.status in (200, 503) for o in load.outcomes), summary
    assert all(_unavailable(o, "database_unavailable") for o in load.outcomes if o.status == 503), summary
    assert all(o.status == 200 for o in load.of("before")), summary
    assert any(_unavailable(o, "database_unavailable") for o in load.of("down", "keys")), summary
    assert all(o.status == 200 for o in load.of("recovered")), summary
    # The same processes throughout: their pools reconnected on their own.
    assert [h.proc.pid for h in hosts.hosts if h.proc is not None and h.alive] == pids
    # Requests answered during the outage were recorded once the database was back: late, not lost.
    answered = sum(o.status == 200 for o in load.of(kind="chat"))
    rows = await wait_usage(hosts, key_id, answered)
    assert len(rows) == answered, summary
    assert {r["status"] for r in rows} == {200}


async def test_a_redis_restart_answers_503_meanwhile_and_recovers_without_restarting_thinktank(
        hosts: Fleet) -> None:
    # A rate limit under 1000 a minute is counted in Redis on every request (larger ones in leases).
    _, key = await make_key(hosts, rpm=900)
    pids = [h.proc.pid for h in hosts.hosts if h.proc is not None]
    auth = {"Authorization": f"Bearer {key}"}

    async def chat_request(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post(hosts.url + "/v1/chat/completions", json=chat("free"), headers=auth)

    load = Load({"chat": chat_request})
    load.start()
    try:
        await load.until(lambda: len(load.of("before")) >= 5, "requests before the outage")
        load.phase = "down"
        await asyncio.to_thread(hosts.redis.stop)
        await _all_down(hosts)
        await load.until(lambda: any(_unavailable(o, "redis_unavailable") for o in load.of("down")),
                         "a request refused for Redis")
        load.phase = "restarting"
        await asyncio.to_thread(hosts.redis.start)  # empty: the counters of the current minute are gone
        load.phase = "after"
        await asyncio.to_thread(hosts.wait_all_up)
        load.phase = "recovered"
        await load.until(lambda: len(load.of("recovered")) >= 20, "requests after the recovery")
    finally:
        if not hosts.redis.running:
            await asyncio.to_thread(hosts.redis.start)
        await load.stop()
    summary = load.summary()
    assert all(o.status in (200, 503) for o in load.outcomes), summary
    assert all(_unavailable(o, "redis_unavailable") for o in load.outcomes if o.status == 503), summary
    assert all(o.status == 200 for o in load.of("before")), summary
    assert all(o.status == 200 for o in load.of("recovered")), summary
    assert [h.proc.pid for h in hosts.hosts if h.proc is not None and h.alive] == pids
