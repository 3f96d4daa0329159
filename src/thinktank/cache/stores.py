"""Where cached answers live: this process's memory (the default), the gateway's database, or Redis.

Every store answers ``get`` with an answer not yet expired, or None, and ``put`` replaces what a key held.
Keys already hash the tenant in (:mod:`.keys`); the stores only keep them apart.

- :class:`MemoryStore`: least recently used first out beyond a byte budget; one process only (each worker
  of ``thinktank serve --workers N`` has its own). Nothing to set up, nothing on the network: the fastest.
- :class:`SqlStore`: a row per answer in ``response_cache``; survives restarts and is shared by every
  worker on the database; expired rows are deleted every ``cleanup_interval`` seconds.
- :class:`RedisStore`: one Redis string per answer with Redis's own expiry; shared by every worker and host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from ..clock import Clock
from .entry import CachedAnswer

if TYPE_CHECKING:
    from ..store.db import Database

__all__ = ["AnswerStore", "MemoryStore", "RedisStore", "SqlStore"]

log = logging.getLogger("thinktank.cache")


class AnswerStore(Protocol):
    name: str

    async def get(self, key: str, now: float) -> CachedAnswer | None:
        """The answer kept under ``key`` if it has not expired at ``now``."""
        ...

    async def put(self, key: str, tenant: str, answer: CachedAnswer) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """This process's answers, least recently used first out beyond ``max_bytes``."""

    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str, now: float) -> CachedAnswer | None:
        answer = self._entries.get(key)
        if answer is None:
            return None
        if answer.expires_at <= now:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return answer

    async def put(self, key: str, tenant: str, answer: CachedAnswer) -> None:
        if answer.size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = answer
        self.bytes += answer.size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        self.bytes -= self._entries.pop(key).size

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0


class SqlStore:
    """Answers in the ``response_cache`` table (SQLite or PostgreSQL)."""

    name = "database"

    def __init__(self, db: Database, clock: Clock, *, cleanup_interval: float = 300.0) -> None:
        self.db = db
        self.clock = clock
        self.cleanup_interval = cleanup_interval
        self._cleaner: asyncio.Task[None] | None = None

    async def get(self, key: str, now: float) -> CachedAnswer | None:
        from sqlalchemy import select

        from ..store.tables import ResponseCacheRow as R

        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(R.model, R.body, R.created_at, R.expires_at).where(
                R.key == key, R.expires_at > now))).first()
        if row is None:
            return None
        return CachedAnswer.loads(bytes(row.body))

    async def put(self, key: str, tenant: str, answer: CachedAnswer) -> None:
        from ..store.tables import ResponseCacheRow as R

        values: dict[str, Any] = {"key": key, "tenant": tenant, "model": answer.model[:256], "body": answer.dumps(),
                                  "created_at": answer.created_at, "expires_at": answer.expires_at}
        if self.db.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            pg = pg_insert(R).values(**values)
            stmt: Any = pg.on_conflict_do_update(index_elements=[R.key], set_={
                k: pg.excluded[k] for k in values if k != "key"})
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            lite = sqlite_insert(R).values(**values)
            stmt = lite.on_conflict_do_update(index_elements=[R.key], set_={
                k: lite.excluded[k] for k in values if k != "key"})
        async with self.db.engine.begin() as conn:
            await conn.execute(stmt)

    async def delete_expired(self, now: float) -> int:
        """Delete the rows past their time; how many went."""
        from sqlalchemy import delete

        from ..store.tables import ResponseCacheRow as R

        async with self.db.engine.begin() as conn:
            result = await conn.execute(delete(R).where(R.expires_at <= now))
        return int(result.rowcount or 0)

    async def _clean(self) -> None:
        while True:
            await self.clock.sleep(self.cleanup_interval)
            try:
                gone = await self.delete_expired(self.clock.time())
                if gone:
                    log.debug("deleted %d expired cached answers", gone)
            except Exception:
                log.warning("deleting expired cached answers failed; trying again later", exc_info=True)

    async def start(self) -> None:
        if self._cleaner is None:
            self._cleaner = asyncio.get_running_loop().create_task(self._clean())

    async def close(self) -> None:
        if self._cleaner is not None:
            self._cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleaner
            self._cleaner = None


class RedisStore:
    """Answers as Redis strings that expire with the answer (``SET … PX``)."""

    name = "redis"

    def __init__(self, url: str, *, prefix: str = "thinktank:cache:") -> None:
        self.url = url
        self.prefix = prefix
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.from_url(self.url)
        return self._client

    async def get(self, key: str, now: float) -> CachedAnswer | None:
        data = await self._redis().get(self.prefix + key)
        if data is None:
            return None
        answer = CachedAnswer.loads(bytes(data))
        return answer if answer.expires_at > now else None

    async def put(self, key: str, tenant: str, answer: CachedAnswer) -> None:
        ms = int((answer.expires_at - answer.created_at) * 1000)
        if ms > 0:
            await self._redis().set(self.prefix + key, answer.dumps(), px=ms)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
