"""The event bus over PostgreSQL LISTEN/NOTIFY.

One connection of its own listens (every channel subscribed to in this process, multiplexed); it is
pinged every ``keepalive`` seconds and opened again when lost (then every subscriber is told
:data:`~.bus.MAYBE_LOST`). Another connection of its own sends (``pg_notify``, several in one round trip).
A NOTIFY payload must be shorter than 8000 bytes: :attr:`PostgresBus.limit` says how long a message may be.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from .bus import START_WAIT, Hub

__all__ = ["PostgresBus", "asyncpg_dsn", "pg_channel"]

log = logging.getLogger("thinktank.events")

APPLICATION_NAME = "thinktank-events"
"""The listening connection's ``application_name`` (it shows in ``pg_stat_activity``); the sending one's
has ``-send`` added."""
_PLAIN = re.compile(r"^[A-Za-z0-9_.:-]{1,60}$")


def pg_channel(channel: str) -> str:
    """The PostgreSQL channel (an identifier of at most 63 bytes) of a bus channel."""
    if _PLAIN.match(channel):
        return "tt:" + channel
    return "tt#" + hashlib.sha256(channel.encode()).hexdigest()[:56]


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+asyncpg://...``) as asyncpg's DSN."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)



class PostgresBus(Hub):
    shared = True
    limit = 7900
    """Bytes of a message (PostgreSQL refuses a payload of 8000 bytes or more)."""

    def __init__(self, dsn: str, *, keepalive: float = 5.0, retry_max: float = 5.0) -> None:
        super().__init__()
        self._dsn = dsn
        self._keepalive = keepalive
        self._retry_max = retry_max
        self._names: dict[str, str] = {}
        """PostgreSQL channel -> bus channel, for what this process listens to."""
        self._conn: Any = None  # asyncpg.Connection while listening
        self._lock = asyncio.Lock()  # one command at a time on the listening connection
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sender: Any = None
        self._send_lock = asyncio.Lock()
        self.reconnects = 0
        """Times the listening connection was opened again after a loss."""

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise())
        with contextlib.suppress(TimeoutError):  # still down: it goes on trying, followers poll meanwhile
            await asyncio.wait_for(self._ready.wait(), START_WAIT)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for conn in (self._conn, self._sender):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
        self._conn = self._sender = None

    async def _connect(self, role: str = "") -> Any:
        return await asyncpg.connect(self._dsn, timeout=10,
                                     server_settings={"application_name": APPLICATION_NAME + role})

    # -- listening -------------------------------------------------------------------------------
    def _on_notify(self, _conn: Any, _pid: int, name: str, payload: str) -> None:
        channel = self._names.get(name)
        if channel is not None:
            self.dispatch(channel, payload.encode())

    async def _listen(self, channel: str) -> None:
        name = pg_channel(channel)
        self._names[name] = channel
        async with self._lock:
            if self._conn is not None:  # (else the next connection listens to it)
                await self._conn.add_listener(name, self._on_notify)

    async def _unlisten(self, channel: str) -> None:
        name = pg_channel(channel)
        self._names.pop(name, None)
        async with self._lock:
            if self._conn is not None and channel not in self._subscribers:
                await self._conn.remove_listener(name, self._on_notify)

    async def _supervise(self) -> None:
        delay = 0.05
        first = True
        while True:
            try:
                conn = await self._connect()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("events: cannot reach PostgreSQL to listen (%s); trying again in %.1f s",
                            type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            gone = asyncio.Event()
            conn.add_termination_listener(lambda _c, gone=gone: gone.set())
            try:
                async with self._lock:
                    for name in list(self._names):
                        await conn.add_listener(name, self._on_notify)
                    self._conn = conn
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("events: listening failed (%s); connecting again", type(exc).__name__)
                conn.terminate()
                continue
            delay = 0.05
            if not first:
                self.reconnects += 1
                self.lost()  # listening again: what was sent meanwhile is to be read from the database
            first = False
            self._ready.set()
            await self._watch(conn, gone)
            async with self._lock:
                self._conn = None
            conn.terminate()
            log.warning("events: the PostgreSQL listening connection was lost; connecting again")

    async def _watch(self, conn: Any, gone: asyncio.Event) -> None:
        """Until the connection is lost (or stops answering its pings)."""
        while not gone.is_set():
            try:
                await asyncio.wait_for(gone.wait(), self._keepalive)
                return
            except TimeoutError:
                pass
            try:
                async with self._lock:
                    await asyncio.wait_for(conn.execute("SELECT 1"), self._keepalive)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                return

    # -- sending ---------------------------------------------------------------------------------
    async def publish(self, channel: str, message: bytes) -> None:
        await self.publish_many([(channel, message)])

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if not messages:
            return
        for _, message in messages:
            if len(message) > self.limit:
                raise ValueError(f"a message of {len(message)} bytes is over the bus's limit ({self.limit})")
        rows = [(pg_channel(channel), message.decode()) for channel, message in messages]
        async with self._send_lock:
            for attempt in range(2):
                try:
                    if self._sender is None or self._sender.is_closed():
                        self._sender = await self._connect("-send")
                    if len(rows) == 1:
                        await self._sender.execute("SELECT pg_notify($1, $2)", *rows[0])
                    else:
                        await self._sender.executemany("SELECT pg_notify($1, $2)", rows)
                    return
                except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                        asyncpg.exceptions.AdminShutdownError):
                    if self._sender is not None:
                        self._sender.terminate()
                    self._sender = None
                    if attempt:
                        raise
