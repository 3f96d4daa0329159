"""The event bus over Redis pub/sub.

One connection of its own subscribes (every channel subscribed to in this process, multiplexed); a reader
task hands out the messages, pings when nothing came for ``keepalive`` seconds, and when the connection is
lost opens it again, subscribes again and tells every subscriber :data:`~.bus.MAYBE_LOST`. Publishing
goes through a client of its own (several messages in one pipeline). Channels are named under ``prefix``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from .bus import START_WAIT, Hub

__all__ = ["RedisBus"]

log = logging.getLogger("thinktank.events")

CLIENT_NAME = "thinktank-events"
"""The subscribing connection's name (it shows in ``CLIENT LIST``)."""



class RedisBus(Hub):
    shared = True
    limit = None

    def __init__(self, url: str, *, prefix: str = "tt:", keepalive: float = 5.0, retry_max: float = 5.0,
                 client_name: str = CLIENT_NAME) -> None:
        super().__init__()
        self.client_name = client_name
        self._url = url
        self._prefix = prefix
        self._keepalive = keepalive
        self._retry_max = retry_max
        self._client: Any = None
        self._subscriber: Any = None  # its own client: one connection, no silent reconnects
        self._pubsub: Any = None
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.reconnects = 0
        """Times the subscribing connection was opened again after a loss."""

    def _clients(self) -> tuple[Any, Any]:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        publisher = aioredis.from_url(self._url)
        # No retries of its own: a lost connection is noticed here, and subscribers are told.
        subscriber = aioredis.from_url(self._url, retry=Retry(NoBackoff(), 0), client_name=self.client_name,
                                       socket_keepalive=True)
        return publisher, subscriber

    async def start(self) -> None:
        if self._task is None:
            self._client, self._subscriber = self._clients()
            self._task = asyncio.get_running_loop().create_task(self._supervise())
        with contextlib.suppress(TimeoutError):  # still down: it goes on trying, followers poll meanwhile
            await asyncio.wait_for(self._ready.wait(), START_WAIT)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for client in (self._subscriber, self._client):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._client = self._subscriber = None

    # -- subscribing -----------------------------------------------------------------------------
    async def _listen(self, channel: str) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return  # (the next connection subscribes to it)
        name = self._prefix + channel
        confirmed = self._confirm.setdefault(name, asyncio.get_running_loop().create_future())
        await pubsub.execute_command("SUBSCRIBE", name)
        # (no answer: the reader finds the connection dead, connects again, and subscribers are told then)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(confirmed), self._keepalive * 2)

    async def _unlisten(self, channel: str) -> None:
        pubsub = self._pubsub
        if pubsub is not None and channel not in self._subscribers:
            await pubsub.execute_command("UNSUBSCRIBE", self._prefix + channel)

    async def _supervise(self) -> None:
        delay = 0.05
        first = True
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.connect()
                # From here on a new subscriber subscribes by itself; those before are subscribed here.
                self._pubsub = pubsub
                channels = [self._prefix + c for c in self._subscribers]
                if channels:
                    waits = [self._confirm.setdefault(n, asyncio.get_running_loop().create_future())
                             for n in channels]
                    await pubsub.execute_command("SUBSCRIBE", *channels)
                    await self._read_until(pubsub, lambda waits=waits: all(w.done() for w in waits))
            except (OSError, ConnectionError, TimeoutError, _redis_errors()) as exc:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                log.warning("events: cannot reach Redis to subscribe (%s); trying again in %.1f s",
                            type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = 0.05
            if not first:
                self.reconnects += 1
                self.lost()  # subscribed again: what was sent meanwhile is to be read from the database
            first = False
            self._ready.set()
            try:
                await self._read_until(pubsub, lambda: False)
            except (OSError, ConnectionError, TimeoutError, _redis_errors()) as exc:
                log.warning("events: the Redis subscribing connection was lost (%s); connecting again",
                            type(exc).__name__)
            self._pubsub = None
            for future in self._confirm.values():  # (their channels are subscribed again with the others)
                if not future.done():
                    future.set_result(None)
            self._confirm.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _read_until(self, pubsub: Any, done: Any) -> None:
        """Hand out what arrives until ``done()``; raises when the connection is lost or stops answering."""
        silent = 0
        while not done():
            message = await pubsub.parse_response(block=False, timeout=self._keepalive)
            if message is None:
                silent += 1
                if silent >= 2:
                    raise TimeoutError("no answer to a ping")
                await pubsub.execute_command("PING")
                continue
            silent = 0
            kind = message[0]
            if kind == b"message":
                name = message[1].decode()
                if name.startswith(self._prefix):
                    self.dispatch(name[len(self._prefix):], message[2])
            elif kind == b"subscribe":
                future = self._confirm.pop(message[1].decode(), None)
                if future is not None and not future.done():
                    future.set_result(None)

    # -- sending ---------------------------------------------------------------------------------
    async def publish(self, channel: str, message: bytes) -> None:
        await self._client.publish(self._prefix + channel, message)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if len(messages) == 1:
            await self.publish(*messages[0])
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for channel, message in messages:
                pipe.publish(self._prefix + channel, message)
            await pipe.execute()


def _redis_errors() -> type[Exception]:
    from redis.exceptions import RedisError

    return RedisError
