"""Feeds on the real buses: a producer that stores its events now and then and publishes each as emitted;
followers that start anywhere get every event once, in order, also when some are too big for the bus or
were published while the listening connection was down."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from thinktank.clock import SystemClock
from thinktank.events.bus import EventBus
from thinktank.events.feed import FeedPublisher, follow_feed
from thinktank.events.pg_bus import APPLICATION_NAME, PostgresBus, asyncpg_dsn

DEADLINE = 30.0


@dataclass
class Producer:
    """Emits numbered events; stores them only when asked (``flush``) or when ``save`` is called."""

    publisher: FeedPublisher
    channel: str
    emitted: list[dict[str, Any]] = field(default_factory=list)
    stored: list[dict[str, Any]] = field(default_factory=list)
    ended: bool = False
    flushes: int = 0

    async def flush(self) -> None:
        self.flushes += 1
        self.save()

    def save(self) -> None:
        self.stored = list(self.emitted)

    def emit(self, body: str) -> None:
        seq = len(self.emitted) + 1
        event = {"seq": seq, "body": body}
        self.emitted.append(event)
        self.publisher.event(self.channel, seq, event, self.flush)

    def end(self) -> None:
        self.emit("last")
        self.save()
        self.ended = True
        self.publisher.ended(self.channel, self.flush)

    async def read(self, after: int) -> list[dict[str, Any]]:
        return [e for e in self.stored if e["seq"] > after]

    async def running(self) -> bool:
        return not self.ended


async def collect(bus: EventBus, producer: Producer, after: int) -> list[int]:
    seqs = []
    async with asyncio.timeout(DEADLINE):
        async for event in follow_feed(bus, producer.channel, after, read=producer.read, seq_of=lambda e: e["seq"],
                                       decode=lambda d: d, is_last=lambda e: e["body"] == "last",
                                       running=producer.running, clock=SystemClock(), poll=0.5, gap_poll=0.05):
            seqs.append(event["seq"])
    return seqs


@pytest.fixture(params=["postgres", "redis"])
def bus(request: pytest.FixtureRequest) -> EventBus:
    fixture: EventBus = request.getfixturevalue("pg_bus" if request.param == "postgres" else "redis_bus")
    return fixture


async def test_followers_from_anywhere_get_every_event_once_in_order(bus: EventBus) -> None:
    publisher = FeedPublisher(bus)
    producer = Producer(publisher, "feed.a")
    for i in range(20):
        producer.emit(f"early {i}")
    producer.save()
    from_start = asyncio.create_task(collect(bus, producer, 0))
    from_ten = asyncio.create_task(collect(bus, producer, 10))
    await asyncio.sleep(0.2)
    for i in range(300):
        producer.emit("x" * 9000 if i % 50 == 7 else f"event {i}")  # some are too big for NOTIFY
        if i % 7 == 0:
            await asyncio.sleep(0)  # several loop ticks: several messages
        if i == 150:
            producer.save()  # a saver writing now and then
    late = asyncio.create_task(collect(bus, producer, 200))
    await asyncio.sleep(0.1)
    producer.end()
    total = len(producer.emitted)
    assert await from_start == list(range(1, total + 1))
    assert await from_ten == list(range(11, total + 1))
    assert await late == list(range(201, total + 1))
    await publisher.close()
    if bus.limit is not None:
        assert producer.flushes >= 6  # each big event stored before it was announced
    assert publisher.failures == 0


async def test_events_published_while_the_connection_was_down_are_read_from_the_store(
    pg_bus: PostgresBus, pg_url: str,
) -> None:
    publisher = FeedPublisher(pg_bus)
    producer = Producer(publisher, "feed.b")
    producer.emit("first")
    producer.save()
    follower = asyncio.create_task(collect(pg_bus, producer, 0))
    await asyncio.sleep(0.2)
    admin = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND application_name = $1", APPLICATION_NAME)
    finally:
        await admin.close()
    for i in range(50):
        producer.emit(f"while down {i}")  # (NOTIFY goes out; nobody of ours listens)
        await asyncio.sleep(0.005)
    producer.save()
    for i in range(50):
        producer.emit(f"after {i}")
        await asyncio.sleep(0.005)
    producer.end()
    assert await follower == list(range(1, len(producer.emitted) + 1))
    await publisher.close()


async def test_a_follower_stops_when_the_feed_stops_without_its_last_event(bus: EventBus) -> None:
    publisher = FeedPublisher(bus)
    producer = Producer(publisher, "feed.c")
    producer.emit("one")
    producer.save()
    follower = asyncio.create_task(collect(bus, producer, 0))
    await asyncio.sleep(0.2)
    producer.emit("two")
    producer.save()
    producer.ended = True  # (a producer that died: its record says so, no last event)
    assert await follower == [1, 2]
    await publisher.close()


async def test_a_follower_that_joins_mid_way_has_the_producer_store_what_it_missed(bus: EventBus) -> None:
    publisher = FeedPublisher(bus)
    await publisher.start()  # it takes flush requests
    producer = Producer(publisher, "feed.d")
    producer.emit("first")
    producer.save()
    for i in range(20):
        producer.emit(f"not stored {i}")  # published before anyone listened, and not stored
    await asyncio.sleep(0.1)
    got: list[int] = []

    async def follow() -> None:
        async for event in follow_feed(bus, producer.channel, 0, read=producer.read, seq_of=lambda e: e["seq"],
                                       decode=lambda d: d, is_last=lambda e: e["body"] == "last",
                                       running=producer.running, clock=SystemClock(), poll=60, gap_poll=0.05):
            got.append(event["seq"])

    follower = asyncio.create_task(follow())
    async with asyncio.timeout(DEADLINE):
        while len(got) < 31:  # only a write of the producer's can fill 2..21: it was asked to flush
            producer.emit("live")
            await asyncio.sleep(0.02)
        producer.end()
        await follower
    assert got == list(range(1, len(producer.emitted) + 1))
    assert producer.flushes >= 1
    await publisher.close()


async def test_a_feed_taken_over_by_another_producer_jumps_to_its_restart(bus: EventBus) -> None:
    """A producer dies after publishing events 1-8, having stored 1-5; another takes over from what is stored:
    its first event is numbered far past anything the first may have sent and names event 5 as the one it
    follows. A follower that got 1-8 live, one that reconnects after 7 and one from the start each get every
    event once: what they had, then the restart and what follows it."""
    publisher = FeedPublisher(bus)
    dead = Producer(publisher, "feed.e")
    for i in range(5):
        dead.emit(f"stored {i}")
    dead.save()
    live: list[int] = []

    async def follow(after: int, into: list[int]) -> None:
        async for event in follow_feed(bus, dead.channel, after, read=heir.read, seq_of=lambda e: e["seq"],
                                       decode=lambda d: d, is_last=lambda e: e["body"] == "last",
                                       running=heir.running, clock=SystemClock(), poll=0.5, gap_poll=0.05,
                                       follows=lambda e: int(e.get("follows", e["seq"] - 1))):
            into.append(event["seq"])

    heir = Producer(publisher, "feed.e", stored=list(dead.stored))
    follower = asyncio.create_task(follow(0, live))
    await asyncio.sleep(0.2)
    for i in range(3):
        dead.emit(f"lost {i}")  # published, never stored
    async with asyncio.timeout(DEADLINE):
        while len(live) < 8:
            await asyncio.sleep(0.01)
    restart: dict[str, Any] = {"seq": 1000006, "body": "restart", "follows": 5}
    heir.emitted = [*dead.stored, restart]
    heir.save()
    publisher.event(heir.channel, 1000006, restart, heir.flush)
    for i in range(3):
        seq = 1000007 + i
        event = {"seq": seq, "body": f"new {i}"}
        heir.emitted.append(event)
        publisher.event(heir.channel, seq, event, heir.flush)
    await asyncio.sleep(0.1)
    heir.emitted.append({"seq": 1000010, "body": "last"})
    heir.save()
    publisher.event(heir.channel, 1000010, heir.emitted[-1], heir.flush)
    rejoined: list[int] = []
    from_start: list[int] = []
    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(follower, follow(7, rejoined), follow(0, from_start))
    new = list(range(1000006, 1000011))
    assert live == [*range(1, 9), *new]
    assert rejoined == new
    assert from_start == [*range(1, 6), *new]
    await publisher.close()
