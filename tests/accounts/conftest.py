"""Budget stores for the tests of this package: a fresh SQLite file, a fresh PostgreSQL database and the local
Redis (with a key prefix of the test's own).

Each test that takes ``backend`` runs once per store. ``backend.other_store()`` opens a second,
independent connection (engine / Redis client) to the same budgets, as another process would.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from thinktank.accounts.budgets import BudgetSpec, BudgetStore, RedisBudgetStore, SqlBudgetStore, period_key
from thinktank.store.db import Database

from ..fakes.clock import FakeClock
from ..fakes.databases import clone_pg, drop_pg, make_sqlite

TOL = 1e-6


def at(clock: FakeClock, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """Move the fake clock to a UTC date and time; returns the wall time."""
    target = datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()
    clock.advance(target - clock.time())
    return target


def spec(limit: float | None = 1.0, *, scope: str = "key", scope_id: str = "k1", period: str = "day",
         label: str | None = None) -> BudgetSpec:
    return BudgetSpec(scope, scope_id, limit, period, label or f"{scope} '{scope_id}'")  # type: ignore[arg-type]


class Backend:
    def __init__(self, kind: str, clock: FakeClock, make: Callable[[], BudgetStore]) -> None:
        self.kind = kind
        self.clock = clock
        self._make = make
        self.store = make()

    def other_store(self) -> BudgetStore:
        """An independent connection to the same budgets (another engine / Redis client)."""
        return self._make()

    async def read(self, s: BudgetSpec) -> tuple[float, float, float]:
        return await self.store.read(s, period_key(s.period, self.clock.time()))

    async def check_invariant(self, s: BudgetSpec) -> tuple[float, float, float]:
        limit, spent, leased = await self.read(s)
        assert leased >= -TOL, (limit, spent, leased)
        assert spent + leased <= limit + TOL, (limit, spent, leased)
        return limit, spent, leased

    async def prime(self, s: BudgetSpec, spent: float) -> None:
        """Record ``spent`` as already spent in the current period (as an earlier process would)."""
        pk = period_key(s.period, self.clock.time())
        assert await self.store.acquire(s, pk, spent)
        await self.store.commit(s, pk, spent, spent)


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Backend]:
    closers: list[Callable[[], Awaitable[None]]] = []
    if request.param == "redis":
        url = os.environ.get("THINKTANK_TEST_REDIS", "redis://127.0.0.1:6379/0")
        prefix = f"tt:test:{uuid.uuid4().hex}"

        def make_redis() -> BudgetStore:
            client = aioredis.from_url(url)
            closers.append(client.aclose)
            return RedisBudgetStore(client, clock, prefix=prefix)

        yield Backend("redis", clock, make_redis)
        cleaner = aioredis.from_url(url)
        try:
            keys = [k async for k in cleaner.scan_iter(match=f"{prefix}:*")]
            if keys:
                await cleaner.delete(*keys)
        finally:
            await cleaner.aclose()
    else:
        pg_name: str | None = None
        if request.param == "sqlite":
            db_url = await asyncio.to_thread(make_sqlite, tmp_path)
        else:
            pg_name, db_url = await clone_pg(request.getfixturevalue("pg_template"))

        def make_sql() -> BudgetStore:
            db = Database(db_url)
            closers.append(db.close)
            return SqlBudgetStore(db, clock)

        try:
            yield Backend(request.param, clock, make_sql)
        finally:
            for close in closers:
                await close()
            closers.clear()
            if pg_name is not None:
                await drop_pg(pg_name)
    for close in closers:
        await close()
