"""A server following a run it handed over reads the run's final record when the worker says, on the event bus,
that it stopped (after its final save): the word the worker's feed publisher sends is the one the follower
listens for, across two connections to the real PostgreSQL bus, as between two processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from thinktank.deliberation.dispatch import _at_most, _watch_end
from thinktank.deliberation.run_feed import channel_of
from thinktank.events.feed import FeedPublisher
from thinktank.events.pg_bus import PostgresBus, asyncpg_dsn

from ..fakes.clock import FakeClock

WAIT = 10.0


@pytest.fixture
async def pg_url(pg_template: str) -> AsyncIterator[str]:
    from ..fakes.databases import clone_pg, drop_pg

    name, url = await clone_pg(pg_template)
    try:
        yield url
    finally:
        await drop_pg(name)


async def _nothing() -> None:
    return None


async def test_the_follower_hears_the_workers_end_and_nothing_else(pg_url: str) -> None:
    worker_bus = PostgresBus(asyncpg_dsn(pg_url), keepalive=1.0)
    server_bus = PostgresBus(asyncpg_dsn(pg_url), keepalive=1.0)
    publisher = FeedPublisher(worker_bus)
    await publisher.start()
    await server_bus.start()
    channel = channel_of("run_0123456789abcdef")
    ended = asyncio.Event()
    try:
        async with server_bus.subscribe(channel) as sub, server_bus.subscribe(channel) as seen:
            watch = asyncio.create_task(_watch_end(sub, ended))
            publisher.event(channel, 1, {"seq": 1, "ts": 1.0, "type": "done", "data": {}}, _nothing)
            async with asyncio.timeout(WAIT):
                assert b'"done"' in (await seen.get() or b"")  # the run's events reached the server...
            await asyncio.sleep(0.05)
            assert not ended.is_set()  # ...and are not taken for its end
            publisher.ended(channel, _nothing)  # the worker's final save is in
            async with asyncio.timeout(WAIT):
                await ended.wait()
            watch.cancel()
    finally:
        await publisher.close()
        await server_bus.close()


async def test_a_word_perhaps_lost_counts_as_heard(pg_url: str) -> None:
    """Messages lost while the bus's connection was down: the follower looks at the record (and polls for it)."""
    bus = PostgresBus(asyncpg_dsn(pg_url), keepalive=1.0)
    await bus.start()
    ended = asyncio.Event()
    try:
        async with bus.subscribe(channel_of("run_0123456789abcdef")) as sub:
            watch = asyncio.create_task(_watch_end(sub, ended))
            await asyncio.sleep(0)
            bus.lost()
            async with asyncio.timeout(WAIT):
                await ended.wait()
            watch.cancel()
    finally:
        await bus.close()


async def test_the_wait_for_the_word_is_bounded_by_the_clock() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    assert await _at_most(event, clock, 2.0) == 2.0  # never said: given up after 2 s of the clock
    assert clock.sleeps == [2.0]
    event.set()
    assert await _at_most(event, clock, 2.0) == 0.0  # said already: no wait
    assert clock.sleeps == [2.0]


async def test_the_wait_ends_when_the_word_comes() -> None:
    class Still(FakeClock):
        async def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            await asyncio.Event().wait()  # the clock never gets there

    clock, event = Still(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    async with asyncio.timeout(WAIT):
        assert await _at_most(event, clock, 2.0) == 0.0
    assert clock.sleeps == [2.0]
