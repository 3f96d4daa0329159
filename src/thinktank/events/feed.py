"""Feeds: the numbered events of one stream (a run, a thread turn) on a bus channel.

The process that produces a feed stores its events (a run's saver, a turn's recorder) and publishes each
as it is emitted (:class:`FeedPublisher`: in order, the events of a loop tick in one message). A follower
in any process (:func:`follow_feed`) subscribes, reads what is stored, then takes what arrives, and yields
every event once, in order of its number. When a number is missing (a message lost while a connection was
down, or an event too big for the bus, which is announced as saved instead), it reads the database again,
and keeps doing so every ``gap_poll`` seconds until the gap is filled: storing is the producer's job. A slow
``poll`` tells it when the feed has ended without its last event (a producer that died).

A follower that joins (and one that finds a gap) also asks, on the bus's ``flush`` channel, that the feed
be stored now: the process producing it (if it still does) writes what it has and says so
(``{"stored": true}``), so a follower that joins mid-way does not wait for the next periodic write.

Messages, JSON: ``{"events": [...]}``; ``{"saved": n}`` (event ``n`` is stored, read it there);
``{"stored": true}`` (everything so far is stored); ``{"ended": true}`` (the stream stopped: look at its
record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from ..clock import Clock
from .bus import MAYBE_LOST, TICK, EventBus, Subscription

__all__ = ["ENDED", "FLUSH_CHANNEL", "STORED", "FeedPublisher", "Flush", "follow_feed"]

log = logging.getLogger("thinktank.events")

Flush = Callable[[], Awaitable[None]]
"""Stores a feed's events emitted so far (called before an event too big for the bus is announced)."""
ENDED = b'{"ended":true}'
STORED = b'{"stored":true}'
SEND_TIMEOUT = 10.0
"""Seconds a send may take (a bus that hangs holds up no feed longer: their followers read the database)."""
FLUSH_CHANNEL = "flush"
"""Where followers ask for a feed (its channel, the message) to be stored now."""
_HEAD, _TAIL = b'{"events":[', b"]}"
T = TypeVar("T")


@dataclass(slots=True)
class _Pending:
    flush: Flush
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    stored: bool = False
    ended: bool = False


class FeedPublisher:
    """Publishes feeds' events on ``bus`` without blocking the emitter: what a loop tick emitted goes out
    in one round trip, each channel's events in one message where they fit, in the order emitted. On a bus
    that reaches no other process, it does nothing (followers elsewhere read the database)."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.enabled = bus.shared
        self._pending: dict[str, _Pending] = {}
        self._queue: deque[tuple[str, _Pending]] = deque()
        self._scheduled = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._live: dict[str, Flush] = {}
        """The feeds produced here, for flush requests."""
        self._flushing: dict[str, asyncio.Task[None]] = {}
        """Flushes asked for and under way, by channel."""
        self._requests: asyncio.Task[None] | None = None
        self.failures = 0
        """Sends that failed (their followers read the database instead)."""

    async def start(self) -> None:
        """Start the bus, and take flush requests for the feeds produced here."""
        await self.bus.start()
        if self.enabled and self._requests is None:
            ready = asyncio.get_running_loop().create_future()
            self._requests = asyncio.get_running_loop().create_task(self._take_requests(ready))
            await ready

    async def _take_requests(self, ready: asyncio.Future[None]) -> None:
        async with self.bus.subscribe(FLUSH_CHANNEL) as sub:
            ready.set_result(None)
            async for message in sub:
                channel = message.decode(errors="replace")
                flush = self._live.get(channel)
                if flush is not None and channel not in self._flushing:
                    self._flushing[channel] = asyncio.get_running_loop().create_task(self._flush(channel, flush))

    async def _flush(self, channel: str, flush: Flush) -> None:
        try:
            await flush()
            if channel in self._live:
                self._entry(channel, flush).stored = True
        except Exception:
            log.warning("events: storing %s on request failed", channel, exc_info=True)
        finally:
            self._flushing.pop(channel, None)

    def event(self, channel: str, seq: int, event: dict[str, Any], flush: Flush) -> None:
        if self.enabled:
            self._live[channel] = flush
            self._entry(channel, flush).events.append((seq, event))

    def ended(self, channel: str, flush: Flush) -> None:
        """The feed stopped (after its events so far): followers look at its record."""
        if self.enabled:
            self._live.pop(channel, None)
            self._entry(channel, flush).ended = True

    def _entry(self, channel: str, flush: Flush) -> _Pending:
        entry = self._pending.get(channel)
        if entry is None:
            entry = self._pending[channel] = _Pending(flush)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._tick)
        return entry

    def _tick(self) -> None:
        self._scheduled = False
        self._queue.extend(self._pending.items())
        self._pending = {}
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = list(self._queue)
                self._queue.clear()
                try:
                    async with asyncio.timeout(SEND_TIMEOUT):
                        await self._publish(batch)
                except Exception:
                    self.failures += 1
                    log.warning("events: publishing %d feed(s) failed; followers read them from the database",
                                len(batch), exc_info=True)
            self._idle.set()

    async def _publish(self, batch: Sequence[tuple[str, _Pending]]) -> None:
        out: list[tuple[str, bytes]] = []
        limit = self.bus.limit
        for channel, entry in batch:
            if entry.events:
                whole = orjson.dumps({"events": [e for _, e in entry.events]})
                if limit is None or len(whole) <= limit:
                    out.append((channel, whole))
                else:
                    await self._split(channel, entry, limit, out)
            if entry.stored:
                out.append((channel, STORED))
            if entry.ended:
                out.append((channel, ENDED))
        if out:
            await self.bus.publish_many(out)

    async def _split(self, channel: str, entry: _Pending, limit: int, out: list[tuple[str, bytes]]) -> None:
        """Events in messages of at most ``limit`` bytes; one bigger than that is stored, then announced."""
        room = limit - len(_HEAD) - len(_TAIL)
        parts: list[bytes] = []
        size = 0
        for seq, event in entry.events:
            piece = orjson.dumps(event)
            if len(piece) > room:
                if parts:
                    out.append((channel, _HEAD + b",".join(parts) + _TAIL))
                    parts, size = [], 0
                if out:
                    await self.bus.publish_many(out)  # what comes before it goes out first, in order
                    out.clear()
                await entry.flush()
                out.append((channel, orjson.dumps({"saved": seq})))
                continue
            if parts and size + 1 + len(piece) > room:
                out.append((channel, _HEAD + b",".join(parts) + _TAIL))
                parts, size = [], 0
            parts.append(piece)
            size += len(piece) + (1 if len(parts) > 1 else 0)
        if parts:
            out.append((channel, _HEAD + b",".join(parts) + _TAIL))

    async def close(self) -> None:
        """Send what is waiting, then stop (the bus too)."""
        if self._requests is not None:
            self._requests.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._requests
            self._requests = None
        if self._scheduled:
            self._tick()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 5)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.bus.close()


class _Order(Generic[T]):
    """Events held until the one before them has been given out (with ``follows``: until the one it names)."""

    def __init__(self, after: int, seq_of: Callable[[T], int], follows: Callable[[T], int] | None = None) -> None:
        self.next = after + 1
        self.held: dict[int, T] = {}
        self._seq_of = seq_of
        self._follows = follows

    def take(self, events: Sequence[T]) -> None:
        for event in events:
            seq = self._seq_of(event)
            if seq >= self.next:
                self.held.setdefault(seq, event)

    def ready(self) -> list[T]:
        out: list[T] = []
        while True:
            event = self.held.pop(self.next, None)
            if event is None and self._follows is not None:
                event = self._jump()
            if event is None:
                return out
            out.append(event)
            self.next = self._seq_of(event) + 1
            if self._follows is not None:  # what it jumped over is void
                for seq in [s for s in self.held if s < self.next]:
                    del self.held[seq]

    def _jump(self) -> T | None:
        """The first held event that follows one already given out (its number jumps over a gap)."""
        assert self._follows is not None
        given = self.next - 1
        seqs = [seq for seq, event in self.held.items() if self._follows(event) <= given]
        return self.held.pop(min(seqs)) if seqs else None

    @property
    def gap(self) -> bool:
        return bool(self.held)


async def _ticks(sub: Subscription, clock: Clock, every: float) -> None:
    while True:
        await clock.sleep(every)
        sub.poke()


@contextlib.asynccontextmanager
async def _alone() -> AsyncIterator[Subscription]:
    yield Subscription("")


async def follow_feed(
    bus: EventBus, channel: str, after: int, *,
    read: Callable[[int], Awaitable[Sequence[T]]],
    seq_of: Callable[[T], int],
    decode: Callable[[dict[str, Any]], T],
    is_last: Callable[[T], bool],
    running: Callable[[], Awaitable[bool]],
    clock: Clock,
    poll: float = 2.0,
    gap_poll: float = 0.25,
    follows: Callable[[T], int] | None = None,
) -> AsyncIterator[T]:
    """The feed's events after ``after``, each once and in order, until its last (``is_last``) or until it
    is no longer ``running()`` (checked every ``poll`` seconds, and at once when told it ended). ``read(n)``
    gives the stored events after number ``n``. On a bus that reaches no other process, the database is
    read every ``gap_poll`` seconds. ``follows(event)``: the number of the event it comes after (default:
    the one before its own), for a feed whose numbers may jump (a producer that took over from one that
    died starts after everything the dead one may have sent: its first event names the last one stored,
    and a follower that got further than that gets it next)."""
    order: _Order[T] = _Order(after, seq_of, follows)
    async with bus.subscribe(channel) if bus.shared else _alone() as sub:
        order.take(await read(after))
        for event in order.ready():
            yield event
            if is_last(event):
                return
        if not await running():
            order.take(await read(order.next - 1))
            for event in order.ready():
                yield event
            return
        if bus.shared:  # what was emitted before we listened and is not stored yet: have it stored now
            with contextlib.suppress(Exception):
                await bus.publish(FLUSH_CHANNEL, channel.encode())
        base = every = poll if bus.shared else gap_poll
        ticker = asyncio.get_running_loop().create_task(_ticks(sub, clock, every))
        checked = clock.monotonic()
        gap_read = False
        try:
            while True:
                item = await sub.get()
                reread = check = False
                if item is TICK:
                    reread = order.gap or not bus.shared
                    check = clock.monotonic() - checked >= poll - 1e-9 or not bus.shared
                elif item == MAYBE_LOST:
                    reread = True
                else:
                    assert item is not None
                    message = orjson.loads(item)
                    if "events" in message:
                        order.take([decode(e) for e in message["events"]])
                    elif "saved" in message:
                        reread = message["saved"] >= order.next
                    elif "stored" in message:
                        reread = True
                    elif message.get("ended"):
                        reread = check = True
                for event in order.ready():
                    yield event
                    if is_last(event):
                        return
                if order.gap and not gap_read:
                    reread = gap_read = True  # seen now: read at once, then every gap_poll
                    if bus.shared:  # and ask its producer to store what it has
                        with contextlib.suppress(Exception):
                            await bus.publish(FLUSH_CHANNEL, channel.encode())
                if reread:
                    order.take(await read(order.next - 1))
                    for event in order.ready():
                        yield event
                        if is_last(event):
                            return
                if check:
                    checked = clock.monotonic()
                    if not await running():
                        order.take(await read(order.next - 1))
                        for event in order.ready():
                            yield event
                        return
                want = gap_poll if order.gap else base
                if want != every:  # a gap opened or closed: tick at the other pace
                    every = want
                    ticker.cancel()
                    ticker = asyncio.get_running_loop().create_task(_ticks(sub, clock, every))
                if not order.gap:
                    gap_read = False
        finally:
            ticker.cancel()
