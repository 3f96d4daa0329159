"""The event bus on real PostgreSQL (LISTEN/NOTIFY) and real Redis (pub/sub): order, many subscribers on
one connection, the size limit, and a listening connection killed from outside."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import pytest

from thinktank.events.bus import MAYBE_LOST, EventBus, LocalBus, Subscription
from thinktank.events.pg_bus import APPLICATION_NAME, PostgresBus, asyncpg_dsn
from thinktank.events.redis_bus import RedisBus

DEADLINE = 20.0


@pytest.fixture(params=["postgres", "redis", "local"])
def bus(request: pytest.FixtureRequest) -> EventBus:
    if request.param == "local":
        return LocalBus()
    fixture: EventBus = request.getfixturevalue("pg_bus" if request.param == "postgres" else "redis_bus")
    return fixture


async def take(sub: Subscription, n: int) -> list[bytes]:
    """The next ``n`` messages (markers included), within the deadline."""
    out: list[bytes] = []
    async with asyncio.timeout(DEADLINE):
        while len(out) < n:
            item = await sub.get()
            if item is not None:
                out.append(item)
    return out


async def test_messages_arrive_in_the_order_published(bus: EventBus) -> None:
    async with bus.subscribe("order") as sub:
        await bus.publish_many([("order", b"%d" % i) for i in range(300)])
        for i in range(300, 400):
            await bus.publish("order", b"%d" % i)
        got = await take(sub, 400)
    assert got == [b"%d" % i for i in range(400)]


async def test_many_subscribers_each_get_their_channels_messages_once(bus: EventBus) -> None:
    async with contextlib.AsyncExitStack() as stack:
        red = [await stack.enter_async_context(bus.subscribe("red")) for _ in range(40)]
        blue = [await stack.enter_async_context(bus.subscribe("blue")) for _ in range(10)]
        await bus.publish_many([(("red", "blue")[i % 2], b"%d" % i) for i in range(50)])
        red_got = await asyncio.gather(*(take(s, 25) for s in red))
        blue_got = await asyncio.gather(*(take(s, 25) for s in blue))
        await bus.publish("red", b"last")
        assert [await take(s, 1) for s in red] == [[b"last"]] * 40
    assert all(got == [b"%d" % i for i in range(0, 50, 2)] for got in red_got)
    assert all(got == [b"%d" % i for i in range(1, 50, 2)] for got in blue_got)
    assert all(not s._items for s in blue)  # nothing else came


async def test_a_message_published_before_subscribing_is_not_received(bus: EventBus) -> None:
    await bus.publish("late", b"before")
    async with bus.subscribe("late") as sub:
        await bus.publish("late", b"after")
        assert await take(sub, 1) == [b"after"]


async def test_postgres_listens_on_one_connection_for_every_subscriber(pg_bus: PostgresBus, pg_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        async with contextlib.AsyncExitStack() as stack:
            for i in range(30):
                await stack.enter_async_context(pg_bus.subscribe(f"c{i % 5}"))
            listeners = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
                APPLICATION_NAME)
            assert listeners == 1
            assert sorted(pg_bus.channels) == [f"c{i}" for i in range(5)]
        assert pg_bus.channels == []
    finally:
        await conn.close()


async def test_postgres_refuses_a_message_over_its_limit_and_sends_one_at_it(pg_bus: PostgresBus) -> None:
    limit = pg_bus.limit
    async with pg_bus.subscribe("big") as sub:
        with pytest.raises(ValueError, match="over the bus's limit"):
            await pg_bus.publish("big", b"x" * (limit + 1))
        await pg_bus.publish("big", b"y" * limit)
        assert await take(sub, 1) == [b"y" * limit]


async def test_redis_carries_big_messages(redis_bus: RedisBus) -> None:
    async with redis_bus.subscribe("big") as sub:
        await redis_bus.publish("big", b"z" * 1_000_000)
        assert await take(sub, 1) == [b"z" * 1_000_000]


async def _wait_for(check: Any) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_postgres_listens_again_after_its_connection_is_killed(pg_bus: PostgresBus, pg_url: str) -> None:
    admin = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        async with pg_bus.subscribe("k") as sub, pg_bus.subscribe("k") as other:
            await pg_bus.publish("k", b"one")
            assert await take(sub, 1) == [b"one"]
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = $1", APPLICATION_NAME)
            assert killed == 1
            # Both subscribers are told that messages may have been lost, once it listens again ...
            assert await take(sub, 1) == [MAYBE_LOST]
            assert await take(other, 2) == [b"one", MAYBE_LOST]
            assert pg_bus.reconnects == 1

            async def listening() -> bool:
                return bool(await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = $1", APPLICATION_NAME))

            await _wait_for(listening)
            # ... and what is published from then on arrives.
            await pg_bus.publish("k", b"two")
            assert await take(sub, 1) == [b"two"]
            assert await take(other, 1) == [b"two"]
    finally:
        await admin.close()


async def test_redis_subscribes_again_after_its_connection_is_killed(redis_bus: RedisBus, redis_url: str) -> None:
    import redis.asyncio as aioredis

    admin = aioredis.from_url(redis_url)
    try:
        async with redis_bus.subscribe("k") as sub, redis_bus.subscribe("k2") as other:
            await redis_bus.publish("k", b"one")
            assert await take(sub, 1) == [b"one"]
            clients = await admin.client_list()
            ids = [c["id"] for c in clients if c.get("name") == redis_bus.client_name]
            assert len(ids) == 1
            assert await admin.client_kill_filter(_id=ids[0]) == 1
            assert await take(sub, 1) == [MAYBE_LOST]
            assert await take(other, 1) == [MAYBE_LOST]
            assert redis_bus.reconnects == 1
            await redis_bus.publish("k", b"two")
            await redis_bus.publish("k2", b"three")
            assert await take(sub, 1) == [b"two"]
            assert await take(other, 1) == [b"three"]
    finally:
        await admin.aclose()


async def test_a_slow_subscriber_is_told_what_it_dropped() -> None:
    sub = Subscription("slow", limit=3)
    for i in range(6):
        sub.put(b"%d" % i)
    assert await take(sub, 4) == [b"0", b"1", b"2", MAYBE_LOST]
    sub.put(b"6")
    assert await take(sub, 1) == [b"6"]
