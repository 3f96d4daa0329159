"""Thread turns' events in the database and on the event bus, so any process can follow a turn.

The process running a turn stores its events as they come (written every ``flush_every`` seconds, and
all of them when the turn ends, before its outcome is known) and publishes each on the bus as it is
emitted. A client of another process (or one that reconnects with ``Last-Event-ID`` after the turn
ended) reads them from the database, then live from the bus (:func:`thinktank.events.feed.follow_feed`).
A thread keeps its last turn only, and only for ``kept`` seconds after it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Table, and_, select

from ..clock import Clock
from ..events.feed import FeedPublisher, follow_feed
from ..store.db import Database
from ..store.raw import Batch, Insert, write
from ..store.tables import Thread, ThreadTurn, ThreadTurnEvent

if TYPE_CHECKING:
    from .service import Turn, TurnEvent

__all__ = ["StoredTurn", "TurnLog", "channel_of"]

log = logging.getLogger("thinktank.conversations")

_TURNS: Table = ThreadTurn.__table__  # type: ignore[assignment]
_EVENTS: Table = ThreadTurnEvent.__table__  # type: ignore[assignment]
_THREADS: Table = Thread.__table__  # type: ignore[assignment]
_EVENT_INSERT = Insert("thread_turn_events", ("turn_id", "seq", "type", "data"))
_TURN_INSERT = Insert("thread_turns", ("id", "thread_id", "started_at"))
# The thread's earlier turn goes (a thread keeps its last), and so does every turn that ended long ago.
_PURGE = "DELETE FROM thread_turns WHERE thread_id = ? OR ended_at < ?"
_END = "UPDATE thread_turns SET ended_at = ? WHERE id = ?"
#: Seconds a turn may look unended while its thread is free before a follower takes its process for dead
#: (the lease is released just before the turn's last event and its end are written).
_DEAD_AFTER = 1.0


def channel_of(turn_id: str) -> str:
    return f"turn.{turn_id}"


@dataclass
class _Open:
    """A turn running here: how many of its events are stored, and the write under way."""

    turn: Turn
    saved: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    flusher: asyncio.Task[None] | None = None


class TurnLog:
    def __init__(self, db: Database, clock: Clock, publisher: FeedPublisher, *, kept: float,
                 flush_every: float = 0.25, poll: float = 2.0) -> None:
        self._db = db
        self._clock = clock
        self.publisher = publisher
        self._kept = kept
        self._flush_every = flush_every
        self._poll = poll
        self._open: dict[str, _Open] = {}

    # -- the process running a turn --------------------------------------------------------------
    async def started(self, turn: Turn) -> None:
        """Record ``turn`` (the thread's last from now on) before it emits anything."""
        batch = Batch()
        now = self._clock.time()
        batch.execute(_PURGE, (turn.thread_id, now - self._kept))
        batch.insert(_TURN_INSERT, [(turn.id, turn.thread_id, now)])
        await write(self._db, batch)
        state = self._open[turn.id] = _Open(turn)
        channel = channel_of(turn.id)
        publisher = self.publisher

        async def flush() -> None:
            await self._flush(state)

        def publish(event: TurnEvent) -> None:
            publisher.event(channel, event.id, {"seq": event.id, "type": event.type, "data": event.data}, flush)
            if state.flusher is None:
                state.flusher = asyncio.get_running_loop().create_task(self._flush_soon(state))

        turn.publish = publish

    async def _flush_soon(self, state: _Open) -> None:
        await self._clock.sleep(self._flush_every)
        state.flusher = None
        try:
            await self._flush(state)
        except Exception:  # the next write (at the latest the turn's end) takes them
            log.warning("storing the events of turn %s failed; trying again", state.turn.id, exc_info=True)

    async def _flush(self, state: _Open, *, end: float | None = None) -> None:
        async with state.lock:
            events = state.turn.log[state.saved:]
            batch = Batch()
            batch.insert(_EVENT_INSERT, [(state.turn.id, e.id, e.type, orjson.dumps(e.data).decode()) for e in events])
            if end is not None:
                batch.execute(_END, (end, state.turn.id))
            await write(self._db, batch)
            state.saved += len(events)

    async def ended(self, turn: Turn) -> None:
        """Store the rest of ``turn``'s events and its end (before its outcome is known)."""
        state = self._open.pop(turn.id, None)
        if state is None:
            return
        if state.flusher is not None:
            state.flusher.cancel()
            state.flusher = None
        try:
            await self._flush(state, end=self._clock.time())
        finally:
            turn.publish = None

            async def stored() -> None:
                pass

            self.publisher.ended(channel_of(turn.id), stored)

    async def close(self) -> None:
        for state in list(self._open.values()):
            if state.flusher is not None:
                state.flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await state.flusher

    # -- any process -----------------------------------------------------------------------------
    async def latest(self, thread_id: str) -> tuple[str, float | None] | None:
        """(id, ended at) of the thread's last turn, or None."""
        q = (select(_TURNS.c.id, _TURNS.c.ended_at).where(_TURNS.c.thread_id == thread_id)
             .order_by(_TURNS.c.started_at.desc()).limit(1))
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return (row[0], row[1]) if row is not None else None

    async def events(self, turn_id: str, after: int = 0) -> list[TurnEvent]:
        from .service import TurnEvent

        q = (select(_EVENTS.c.seq, _EVENTS.c.type, _EVENTS.c.data)
             .where(and_(_EVENTS.c.turn_id == turn_id, _EVENTS.c.seq > after)).order_by(_EVENTS.c.seq))
        async with self._db.engine.connect() as conn:
            return [TurnEvent(r[1], r[2], r[0]) for r in (await conn.execute(q)).all()]

    def stored(self, thread_id: str, turn_id: str) -> StoredTurn:
        return StoredTurn(self, thread_id, turn_id)

    def follow(self, thread_id: str, turn_id: str, after: int) -> AsyncIterator[TurnEvent]:
        from .service import TurnEvent

        free_since: float | None = None

        async def running() -> bool:
            nonlocal free_since
            q = (select(_TURNS.c.ended_at, _THREADS.c.busy_until)
                 .join(_THREADS, _THREADS.c.id == _TURNS.c.thread_id).where(_TURNS.c.id == turn_id))
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(q)).first()
            if row is None or row[0] is not None:
                return False
            if row[1] is not None and row[1] > self._clock.time():
                free_since = None
                return True
            now = self._clock.monotonic()
            free_since = now if free_since is None else free_since
            return now - free_since < _DEAD_AFTER

        async def read(n: int) -> list[TurnEvent]:
            return await self.events(turn_id, n)

        def decode(data: dict[str, Any]) -> TurnEvent:
            return TurnEvent(data["type"], data["data"], data["seq"])

        return follow_feed(self.publisher.bus, channel_of(turn_id), after, read=read, seq_of=lambda e: e.id,
                           decode=decode, is_last=lambda e: e.type in ("message", "error"), running=running,
                           clock=self._clock, poll=self._poll)


class StoredTurn:
    """A thread's turn as stored (run by another process, or ended): its events from any point."""

    def __init__(self, log_: TurnLog, thread_id: str, turn_id: str) -> None:
        self.thread_id = thread_id
        self.id = turn_id
        self._log = log_

    def events(self, after: int = 0) -> AsyncIterator[TurnEvent]:
        return self._log.follow(self.thread_id, self.id, max(after, 0))
