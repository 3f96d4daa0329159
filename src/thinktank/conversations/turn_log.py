"""Thread turns' events in the database and on the event bus, so any process can follow a turn.

The process running a turn stores its events as they come (written every ``flush_every`` seconds, and
all of them when the turn ends, before its outcome is known) and publishes each on the bus as it is
emitted. A client of another process (or one that reconnects with ``Last-Event-ID`` after the turn
ended) reads them from the database, then live from the bus (:func:`thinktank.events.feed.follow_feed`).
A thread keeps its last turn only, and only for ``kept`` seconds after it ended.

A turn's row also holds what another process needs to answer it if this one dies (:class:`TurnSpec`), and
which process runs it (``owner``, this log's token) and when that process last showed it was alive
(``heartbeat_at``: at each write of its events, and every ``beat`` seconds for all its turns at once). Every
write of a turn is guarded by its owner: a process that stalled while another took its turn up
(:mod:`.turn_resume`) writes nothing more of it and is told so (``on_lost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Table, and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..clock import Clock
from ..events.feed import FeedPublisher, follow_feed
from ..store.db import Database
from ..store.raw import Batch, GuardFailed, Insert, write
from ..store.tables import Thread, ThreadTurn, ThreadTurnEvent

if TYPE_CHECKING:
    from .service import Turn, TurnEvent

__all__ = ["RESTART", "StoredTurn", "TurnLog", "TurnSpec", "TurnTakenOver", "channel_of"]

log = logging.getLogger("thinktank.conversations")

_TURNS: Table = ThreadTurn.__table__  # type: ignore[assignment]
_EVENTS: Table = ThreadTurnEvent.__table__  # type: ignore[assignment]
_THREADS: Table = Thread.__table__  # type: ignore[assignment]
_EVENT_INSERT = Insert("thread_turn_events", ("turn_id", "seq", "type", "data"))
_TURN_INSERT = Insert("thread_turns", ("id", "thread_id", "started_at", "user_id", "key_id", "content", "request",
                                       "owner", "heartbeat_at", "attempts"))
# The thread's earlier turn goes (a thread keeps its last), and so does every turn that ended long ago.
_PURGE = "DELETE FROM thread_turns WHERE thread_id = ? OR ended_at < ?"
_END = "UPDATE thread_turns SET ended_at = ? WHERE id = ?"
_OWNED = "UPDATE thread_turns SET heartbeat_at = ? WHERE id = ? AND owner = ?"
_RUN = "UPDATE thread_turns SET run_id = ? WHERE id = ?"
#: Seconds a turn may look unended while its thread is free before a follower takes its process for dead
#: (turns recorded before turns had heartbeats; the lease is released just before a turn's end is written).
_DEAD_AFTER = 1.0
TAKE_UP_WAIT = 30.0
"""Seconds a follower waits, past ``stale_after``, for a turn whose process died to be taken up elsewhere."""
RESTART = "restart"
"""The event a turn taken up by another process starts again with: the answer so far is void. Its number
jumps past anything the dead process may have sent (``RESTART_GAP``), and ``resumes_after`` names the last
event stored before it, which is what it follows."""


def channel_of(turn_id: str) -> str:
    return f"turn.{turn_id}"


def follows(event: TurnEvent) -> int:
    """The number of the event ``event`` comes after (a restart jumps)."""
    if event.type == RESTART and isinstance(event.data.get("resumes_after"), int):
        return int(event.data["resumes_after"])
    return event.id - 1


async def _never(_s: AsyncSession) -> bool:
    return False


class TurnTakenOver(Exception):
    """Another process took the turn up (this one had stopped showing it was alive): it writes nothing more."""


@dataclass(frozen=True, slots=True)
class TurnSpec:
    """What answering a turn again takes: who asked (as they are now, looked up again), what, and how."""

    user_id: str
    key_id: str | None
    content: str
    model: str
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    replace_from: int | None = None

    def request(self) -> dict[str, Any]:
        return {"model": self.model, "stream": self.stream, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "replace_from": self.replace_from}

    @classmethod
    def of(cls, user_id: str, key_id: str | None, content: str, request: dict[str, Any]) -> TurnSpec:
        return cls(user_id, key_id, content, str(request["model"]), bool(request.get("stream")),
                   request.get("max_tokens"), request.get("temperature"), request.get("replace_from"))


@dataclass
class _Open:
    """A turn running here: how many of its events are stored, and the write under way."""

    turn: Turn
    saved: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    flusher: asyncio.Task[None] | None = None
    run_saved: bool = False


class TurnLog:
    def __init__(self, db: Database, clock: Clock, publisher: FeedPublisher, *, kept: float,
                 flush_every: float = 0.25, poll: float = 2.0, stale_after: float = 5.0) -> None:
        """``stale_after``: seconds without a sign of life after which a turn's process counts as dead."""
        self._db = db
        self._clock = clock
        self.publisher = publisher
        self._kept = kept
        self._flush_every = flush_every
        self._poll = poll
        self.stale_after = stale_after
        self._open: dict[str, _Open] = {}
        self.owner = secrets.token_hex(8)
        """This process's token: the turns it runs are the ones whose ``owner`` it is."""
        self.resumable = False
        """Turns whose process died are taken up (a follower waits for that)."""
        self.on_lost: Callable[[Turn], None] | None = None
        """Told of a turn running here that another process took up."""
        self._beater: asyncio.Task[None] | None = None

    # -- the process running a turn --------------------------------------------------------------
    async def started(self, turn: Turn, spec: TurnSpec) -> None:
        """Record ``turn`` (the thread's last from now on, run here) before it emits anything."""
        batch = Batch()
        now = self._clock.time()
        batch.execute(_PURGE, (turn.thread_id, now - self._kept))
        batch.insert(_TURN_INSERT, [(turn.id, turn.thread_id, now, spec.user_id, spec.key_id, spec.content,
                                     orjson.dumps(spec.request()).decode(), self.owner, now, 0)])
        await write(self._db, batch)
        self._attach(turn, 0)

    def runs_here(self, turn_id: str) -> bool:
        """Whether the turn ``turn_id`` is running in this process (and stored by it)."""
        return turn_id in self._open

    def reopened(self, turn: Turn, saved: int) -> None:
        """``turn``, taken up here (its row claimed, its first ``saved`` events stored), goes on being stored."""
        self._attach(turn, saved)

    def _attach(self, turn: Turn, saved: int) -> None:
        state = self._open[turn.id] = _Open(turn, saved)
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
        except TurnTakenOver:
            pass
        except Exception:  # the next write (at the latest the turn's end) takes them
            log.warning("storing the events of turn %s failed; trying again", state.turn.id, exc_info=True)

    async def _flush(self, state: _Open, *, end: float | None = None) -> None:
        """Store the events not stored yet (and the turn's end, if given), if the turn is still this process's
        (its heartbeat with them); else it is lost here (:class:`TurnTakenOver`)."""
        async with state.lock:
            turn = state.turn
            events = turn.log[state.saved:]
            batch = Batch()
            batch.guard(_OWNED, (self._clock.time(), turn.id, self.owner))
            batch.insert(_EVENT_INSERT, [(turn.id, e.id, e.type, orjson.dumps(e.data).decode()) for e in events])
            run_id = turn.run_id if not state.run_saved else None
            if run_id is not None:
                batch.execute(_RUN, (run_id, turn.id))
            if end is not None:
                batch.execute(_END, (end, turn.id))
            try:
                await write(self._db, batch)
            except GuardFailed:
                self._lost(state)
                raise TurnTakenOver(turn.id) from None
            state.saved += len(events)
            state.run_saved = state.run_saved or run_id is not None

    def _lost(self, state: _Open) -> None:
        if self._open.get(state.turn.id) is state:
            del self._open[state.turn.id]
        turn = state.turn
        turn.publish = None
        turn.taken_over = True
        log.warning("turn %s of thread %s was taken up by another process (this one stopped showing it was alive "
                    "for too long); it stops here", turn.id, turn.thread_id)
        if self.on_lost is not None:
            self.on_lost(turn)

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

    def guard(self, turn: Turn) -> Callable[[AsyncSession], Awaitable[bool]] | None:
        """For the transaction that stores ``turn``'s messages: False if the turn is no longer this process's
        (then nothing is stored); None if it was never recorded (it is followed here only). Its user message
        leaves the turn's row then: answered, it is not taken up again even if this process dies before the
        turn's end is written."""
        if turn.taken_over:
            return _never
        if turn.id not in self._open:
            return None
        now, owner = self._clock.time(), self.owner

        async def owned(s: AsyncSession) -> bool:
            result = await s.execute(update(_TURNS).where(_TURNS.c.id == turn.id, _TURNS.c.owner == owner)
                                     .values(heartbeat_at=now, content=None))
            return bool(result.rowcount)  # type: ignore[attr-defined]

        return owned

    # -- signs of life ---------------------------------------------------------------------------
    def start(self, every: float) -> None:
        """Show every ``every`` seconds that the turns running here are alive (one statement for all)."""
        if self._beater is None:
            self._beater = asyncio.get_running_loop().create_task(self._beat_loop(every))

    async def _beat_loop(self, every: float) -> None:
        while True:
            await self._clock.sleep(every)
            try:
                await self.beat()
            except Exception:
                log.warning("showing that this process's turns are alive failed; trying again", exc_info=True)

    async def beat(self) -> None:
        """The heartbeat of every turn running here; a turn another process took up meanwhile is lost here."""
        states = list(self._open.values())
        if not states:
            return
        ids = [s.turn.id for s in states]
        mine = and_(_TURNS.c.id.in_(ids), _TURNS.c.owner == self.owner)
        async with self._db.engine.begin() as conn:
            result = await conn.execute(update(_TURNS).where(mine).values(heartbeat_at=self._clock.time()))
            if result.rowcount == len(ids):
                return
            still = set((await conn.execute(select(_TURNS.c.id).where(mine))).scalars().all())
        for state in states:
            if state.turn.id not in still and self._open.get(state.turn.id) is state:
                self._lost(state)

    async def close(self) -> None:
        if self._beater is not None:
            self._beater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beater
            self._beater = None
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
            q = (select(_TURNS.c.ended_at, _THREADS.c.busy_until, _TURNS.c.heartbeat_at, _TURNS.c.content)
                 .join(_THREADS, _THREADS.c.id == _TURNS.c.thread_id).where(_TURNS.c.id == turn_id))
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(q)).first()
            if row is None or row[0] is not None:
                return False
            _, busy_until, heartbeat_at, content = row
            if heartbeat_at is not None:  # alive, or dead and waiting to be taken up elsewhere
                silence = self._clock.time() - float(heartbeat_at)
                waits = self.stale_after + (TAKE_UP_WAIT if self.resumable and content is not None else 0.0)
                return bool(silence < waits)
            if busy_until is not None and busy_until > self._clock.time():
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
                           clock=self._clock, poll=self._poll, follows=follows)


class StoredTurn:
    """A thread's turn as stored (run by another process, or ended): its events from any point."""

    def __init__(self, log_: TurnLog, thread_id: str, turn_id: str) -> None:
        self.thread_id = thread_id
        self.id = turn_id
        self._log = log_

    def events(self, after: int = 0) -> AsyncIterator[TurnEvent]:
        return self._log.follow(self.thread_id, self.id, max(after, 0))
