"""The three stores: this process's memory (least recently used out beyond a byte budget), the database
(SQLite and PostgreSQL, expired rows deleted) and Redis (its own expiry); and the cache working end to end on
each."""

from __future__ import annotations

import secrets

import pytest

from thinktank.cache.entry import CachedAnswer
from thinktank.cache.stores import MemoryStore, RedisStore, SqlStore
from thinktank.store.db import Database

from ..fakes.clock import FakeClock
from .conftest import Start


def answer(text: str, *, now: float = 1000.0, ttl: float = 60.0, pad: int = 0) -> CachedAnswer:
    body = b'{"id":"x","choices":[{"message":{"content":"%s"}}],"pad":"%s"}' % (text.encode(), b"p" * pad)
    return CachedAnswer(body=body, model="gpt", created_at=now, expires_at=now + ttl, cost=0.5, served_by="gpt")


async def test_memory_keeps_the_recently_used_within_its_byte_budget() -> None:
    store = MemoryStore(max_bytes=3 * answer("a", pad=300).size)
    for name in "abc":
        await store.put(name, "t", answer(name, pad=300))
    assert await store.get("a", 1001) is not None  # a is now the most recently used
    await store.put("d", "t", answer("d", pad=300))
    assert await store.get("b", 1001) is None, "the least recently used went"
    assert {k for k in "acd" if await store.get(k, 1001)} == set("acd")
    assert store.bytes <= store.max_bytes and len(store) == 3
    await store.put("huge", "t", answer("h", pad=store.max_bytes))
    assert await store.get("huge", 1001) is None and len(store) == 3, "too large for the budget: not kept"
    # expiry: past its time an answer is gone (and its bytes freed)
    assert await store.get("a", 1061) is None and len(store) == 2


async def test_memory_replaces_an_entry() -> None:
    store = MemoryStore(max_bytes=10_000)
    await store.put("k", "t", answer("old"))
    await store.put("k", "t", answer("new"))
    found = await store.get("k", 1001)
    assert found is not None and b"new" in found.body and len(store) == 1
    assert store.bytes == answer("new").size


async def test_database_store(db: Database) -> None:
    clock = FakeClock(start=1000.0)
    store = SqlStore(db, clock, cleanup_interval=60)
    await store.put("k1", "user:alice", answer("one"))
    await store.put("k1", "user:alice", answer("uno"))  # replaced
    await store.put("k2", "user:bob", answer("two", ttl=10))
    found = await store.get("k1", 1001)
    assert found is not None and b"uno" in found.body
    assert (found.model, found.cost, found.served_by, found.expires_at) == ("gpt", 0.5, "gpt", 1060.0)
    assert await store.get("k2", 1011) is None, "expired rows are never served"
    assert await store.get("nothing", 1001) is None
    assert await store.delete_expired(1011) == 1
    from sqlalchemy import func, select

    from thinktank.store.tables import ResponseCacheRow

    async with db.session() as s:
        assert (await s.execute(select(func.count()).select_from(ResponseCacheRow))).scalar_one() == 1
        tenant = (await s.execute(select(ResponseCacheRow.tenant))).scalar_one()
    assert tenant == "user:alice"


async def _rows(db: Database) -> int:
    from sqlalchemy import func, select

    from thinktank.store.tables import ResponseCacheRow

    async with db.session() as s:
        return int((await s.execute(select(func.count()).select_from(ResponseCacheRow))).scalar_one())


async def test_database_store_deletes_expired_rows_in_the_background(db: Database) -> None:
    import asyncio

    clock = FakeClock(start=1000.0)  # its sleep returns at once and moves time on
    store = SqlStore(db, clock, cleanup_interval=30)
    await store.put("old", "t", answer("x", ttl=5))
    await store.put("fresh", "t", answer("y", ttl=10**9))
    await store.start()
    for _ in range(500):
        await asyncio.sleep(0.01)
        if await _rows(db) == 1:
            break
    await store.close()
    assert clock.sleeps[0] == 30
    assert await _rows(db) == 1 and await store.get("fresh", clock.time()) is not None


async def test_redis_store(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix=f"test:{secrets.token_hex(4)}:")
    import time

    now = time.time()
    await store.put("k", "t", answer("kept", now=now, ttl=60))
    await store.put("short", "t", answer("short", now=now, ttl=0.05))
    found = await store.get("k", now + 1)
    assert found is not None and b"kept" in found.body and found.cost == 0.5
    assert await store.get("k", now + 61) is None, "an entry past its time is not served"
    import asyncio

    await asyncio.sleep(0.2)
    assert await store.get("short", now) is None, "Redis expired it"
    ttl = await store._redis().pttl(store.prefix + "k")
    assert 0 < ttl <= 60_000
    await store._redis().delete(store.prefix + "k")
    await store.close()


@pytest.mark.parametrize("backend", ["database", "redis"])
async def test_the_cache_end_to_end_on_a_shared_store(cache_env: Start, db_url: str, redis_url: str,
                                                      backend: str) -> None:
    settings = {"database_url": db_url} if backend == "database" else {"redis_url": redis_url}
    cache = {"backend": backend} if backend == "database" else {}  # auto: Redis when one is configured
    env = await cache_env(cache, **settings)
    assert env.app.state.response_cache.store.name == backend
    question = {"messages": [{"role": "user", "content": f"stored {secrets.token_hex(4)}"}], "temperature": 0}
    first = await env.chat(**question)
    second = await env.chat(**question)
    streamed = await env.chat(**question, stream=True)
    assert (first.headers["x-thinktank-cache"], second.headers["x-thinktank-cache"],
            streamed.headers["x-thinktank-cache"]) == ("miss", "hit", "hit")
    assert second.json()["choices"] == first.json()["choices"] and env.calls() == 1
    # another user of the same store finds nothing of the admin key's
    alice = await env.user("alice@example.com")
    assert (await env.chat({**alice, "x-thinktank-cache": "allow"}, **question)).headers["x-thinktank-cache"] == "miss"
