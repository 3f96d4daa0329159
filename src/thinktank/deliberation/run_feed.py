"""A run's events across processes: the process executing a run publishes each event on the event bus as
it is emitted; a client of another process follows it from the database and then live (see
:mod:`thinktank.events.feed`). The run's saver stores the events; an event too big for the bus is saved
first, then announced."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..clock import Clock
from ..events.feed import FeedPublisher, follow_feed
from .run_store import RunStore
from .runs import Event, LiveRun

__all__ = ["RunFeed", "channel_of"]


def channel_of(run_id: str) -> str:
    return f"run.{run_id}"


def _event(data: dict[str, Any]) -> Event:
    return Event(data["seq"], data["ts"], data["type"], data["data"])


class RunFeed:
    def __init__(self, publisher: FeedPublisher, store: RunStore, clock: Clock,
                 save: Callable[[LiveRun], Awaitable[bool]], *, stale_after: float, poll: float = 2.0,
                 interrupt: bool = True) -> None:
        """``interrupt``: a follower marks a run nobody saved for ``stale_after`` interrupted (failed) and stops;
        off when another process takes such runs up (the follower then waits for it)."""
        self.publisher = publisher
        self._store = store
        self._clock = clock
        self._save = save
        self._stale_after = stale_after
        self._poll = poll
        self._interrupt = interrupt

    def attach(self, run: LiveRun) -> None:
        """Publish ``run``'s events from now on (and those emitted but not saved yet) as it executes here."""
        publisher = self.publisher
        if not publisher.enabled:
            return
        channel = channel_of(run.id)

        async def flush() -> None:
            await self._save(run)

        def publish(event: Event | None) -> None:
            if event is None:
                publisher.ended(channel, flush)
            else:
                publisher.event(channel, event.seq, event.to_dict(), flush)

        run.publish = publish
        for event in run.events[run.saved_events:]:
            publish(event)

    def follow(self, run_id: str, after: int, *, local_poll: float = 0.25) -> AsyncIterator[Event]:
        """The events after ``after`` of a run another process executes, each once and in order, until
        ``done`` or until it is no longer running (a process that died: its run is taken up elsewhere, or marked
        interrupted when nothing takes runs up)."""
        store = self._store

        async def running() -> bool:
            if self._interrupt:
                await store.mark_interrupted(self._clock.time(), self._stale_after)
            found = await store.owner(run_id)
            return found is not None and found[1] == "running"

        async def read(n: int) -> list[Event]:
            return await store.events(run_id, n)

        return follow_feed(self.publisher.bus, channel_of(run_id), after, read=read, seq_of=lambda e: e.seq,
                           decode=_event, is_last=lambda e: e.type == "done", running=running, clock=self._clock,
                           poll=self._poll, gap_poll=local_poll)
