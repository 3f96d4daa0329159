"""The event bus: messages published on a channel reach every subscriber of that channel.

A process holds one bus. Its subscriptions are multiplexed: however many subscribers a channel has here,
the backend is asked to listen to it once (one LISTEN on one PostgreSQL connection, one SUBSCRIBE on one
Redis connection), and each message is handed to every local subscriber's queue.

A message is best effort: a backend that loses its connection loses what was sent meanwhile. Every
subscriber is then given :data:`MAYBE_LOST` (once the backend listens again), and so is a subscriber too
slow to keep up; what it missed it reads from where the publisher stores it (the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

__all__ = ["MAYBE_LOST", "START_WAIT", "EventBus", "Hub", "LocalBus", "Subscription"]

log = logging.getLogger("thinktank.events")

MAYBE_LOST = b""
"""Given to a subscriber in place of a message: messages may have been lost since the last one."""
TICK = None
"""Given by :meth:`Subscription.poke` (a timer of the subscriber's own): nothing arrived, look around."""

QUEUE_LIMIT = 10_000
"""Messages a subscriber may have waiting; past it they are dropped and it is told :data:`MAYBE_LOST`."""

#: Seconds a bus's start waits for its first connection (PostgreSQL or Redis): a server starting while that
#: server is down starts anyway (and answers 503 for what needs it), the bus going on trying in the background.
START_WAIT = 1.0


class Subscription:
    """One subscriber's messages on one channel, in the order they arrived."""

    def __init__(self, channel: str, limit: int = QUEUE_LIMIT) -> None:
        self.channel = channel
        self._items: deque[bytes | None] = deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._overflowed = False

    def put(self, message: bytes | None) -> None:
        if len(self._items) >= self._limit:
            if not self._overflowed:  # one marker for what is dropped, at its place
                self._overflowed = True
                self._items.append(MAYBE_LOST)
            return
        self._overflowed = False
        self._items.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def poke(self) -> None:
        """Wake the subscriber with :data:`TICK` (nothing arrived; a poll of its own is due)."""
        self.put(TICK)

    async def get(self) -> bytes | None:
        """The next message, :data:`MAYBE_LOST`, or :data:`TICK`."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[bytes]:
        """Messages and :data:`MAYBE_LOST` markers (ticks are skipped)."""
        while True:
            item = await self.get()
            if item is not None:
                yield item


class EventBus(Protocol):
    @property
    def shared(self) -> bool:
        """Whether messages reach other processes (False: this process only)."""
        ...

    @property
    def limit(self) -> int | None:
        """The largest message in bytes, or None."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, channel: str, message: bytes) -> None: ...

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish each (channel, message) in order."""
        ...

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """Messages on ``channel`` from the moment the context is entered (the backend listens by then)."""
        ...


class Hub:
    """The local side of a bus: channels listened to, each with its subscribers. A backend listens to a
    channel when it gets its first subscriber and stops when the last one leaves."""

    shared = False
    limit: int | None = None

    def __init__(self) -> None:
        self._subscribers: dict[str, list[Subscription]] = {}
        self._pending: dict[str, asyncio.Future[None]] = {}

    async def _listen(self, channel: str) -> None:
        """The backend starts listening to ``channel``; returns once it does."""

    async def _unlisten(self, channel: str) -> None:
        """The backend stops listening to ``channel``."""

    @property
    def channels(self) -> list[str]:
        return list(self._subscribers)

    def dispatch(self, channel: str, message: bytes) -> None:
        for sub in self._subscribers.get(channel, ()):
            sub.put(message)

    def lost(self) -> None:
        """Tell every subscriber that messages may have been lost."""
        for subs in self._subscribers.values():
            for sub in subs:
                sub.put(MAYBE_LOST)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        sub = Subscription(channel)
        subs = self._subscribers.get(channel)
        if subs is None:
            subs = self._subscribers[channel] = [sub]
            pending = self._pending[channel] = asyncio.get_running_loop().create_future()
            try:
                await self._listen(channel)
            except Exception:  # a connection lost meanwhile: the next one listens to it, and says so
                log.warning("events: could not listen to %s yet", channel, exc_info=True)
            except BaseException:  # cancelled: not a subscriber after all
                subs.remove(sub)
                if not subs and self._subscribers.get(channel) is subs:
                    del self._subscribers[channel]
                raise
            finally:
                self._pending.pop(channel, None)
                pending.set_result(None)
        else:
            subs.append(sub)
            listening = self._pending.get(channel)
            if listening is not None:  # another subscriber's LISTEN is on its way: wait for it
                try:
                    await asyncio.shield(listening)
                except BaseException:
                    subs.remove(sub)
                    if not subs and self._subscribers.get(channel) is subs:
                        del self._subscribers[channel]
                    raise
        try:
            yield sub
        finally:
            subs.remove(sub)
            if not subs and self._subscribers.get(channel) is subs:
                del self._subscribers[channel]
                try:
                    await self._unlisten(channel)
                except Exception:  # the connection is gone: it listens to nothing now anyway
                    log.debug("events: could not stop listening to %s", channel, exc_info=True)


class LocalBus(Hub):
    """Within this process only (the embedded default)."""

    shared = False
    limit = None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def publish(self, channel: str, message: bytes) -> None:
        self.dispatch(channel, message)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        for channel, message in messages:
            self.dispatch(channel, message)
