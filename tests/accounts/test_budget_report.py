"""Budgets with spent and remaining: what the store holds plus what this process has not written yet, on the
SQL store (SQLite, PostgreSQL) and on Redis."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from thinktank.accounts.budget_report import budget_report
from thinktank.accounts.budgets import BudgetLedger, BudgetSpec, BudgetStore, RedisBudgetStore, SqlBudgetStore
from thinktank.store.db import Database
from thinktank.store.tables import ApiKey, Team, User

from ..fakes.clock import FakeClock

SPEC = BudgetSpec("user", "u1", 10.0, "month", "user a@x")


async def check_standing(store: BudgetStore, clock: FakeClock) -> None:
    ledger = BudgetLedger(store, clock, lease_fraction=0.5)
    assert await ledger.standing(SPEC) == (0.0, 10.0, 10.0)
    r = await ledger.reserve([SPEC], 1.0)
    await ledger.settle(r, 0.75)  # not written yet: counted all the same
    spent, remaining, available = await ledger.standing(SPEC)
    assert [spent, remaining, available] == pytest.approx([0.75, 9.25, 9.25])
    other = BudgetLedger(store, clock, lease_fraction=0.5)  # another process holds a lease of 5
    await other.release(await other.reserve([SPEC], 0.1))
    await ledger.flush()
    spent, remaining, available = await ledger.standing(SPEC)
    assert [spent, remaining] == pytest.approx([0.75, 9.25])
    assert available == pytest.approx(10 - 0.75 - 5)
    await other.close()
    await ledger.close()


async def test_standing_on_sql(db: Database, clock: FakeClock) -> None:
    await check_standing(SqlBudgetStore(db, clock), clock)


async def test_standing_on_redis(redis_url: str, clock: FakeClock) -> None:
    client = aioredis.from_url(redis_url)
    prefix = f"tt:test:{uuid.uuid4().hex}"
    try:
        await check_standing(RedisBudgetStore(client, clock, prefix=prefix), clock)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_report_lists_configured_budgets_only(db: Database, clock: FakeClock) -> None:
    now = clock.time()
    async with db.session() as s:
        s.add_all([
            Team(id="t1", name="ml", budget_usd=3.0, budget_period="day", created_at=now),
            Team(id="t2", name="free", budget_usd=None, created_at=now),
            User(id="u1", email="a@x", role="member", budget_usd=10.0, budget_period="month", created_at=now),
            User(id="u2", email="b@x", role="member", budget_usd=None, created_at=now),
            User(id="u3", email="gone@x", role="member", budget_usd=1.0, created_at=now, revoked_at=now),
        ])
        await s.flush()
        s.add_all([
            ApiKey(id="k1", name="ci", prefix="tt-abcd", key_hash="h1", owner_id="u1", budget_usd=1.0,
                   budget_period="total", created_at=now),
            ApiKey(id="k2", name="old", prefix="tt-efgh", key_hash="h2", owner_id="u1", budget_usd=1.0,
                   created_at=now, revoked_at=now),
        ])
    ledger = BudgetLedger(SqlBudgetStore(db, clock), clock)
    await ledger.settle(await ledger.reserve([SPEC], 2.0), 2.0)
    rows = await budget_report(db, ledger, clock, global_daily_budget=None)
    assert [(r["scope"], r["scope_id"], r["period"]) for r in rows] == [
        ("team", "t1", "day"), ("user", "u1", "month"), ("key", "k1", "total")]
    user = rows[1]
    assert (user["spent_usd"], user["remaining_usd"], user["limit_usd"]) == (2.0, 8.0, 10.0)
    assert rows[2]["resets_in_s"] is None and rows[2]["owner_email"] == "a@x" and rows[2]["period_key"] == "total"
    assert rows[0]["spent_usd"] == 0.0 and 0 < rows[0]["resets_in_s"] <= 86400
    capped = await budget_report(db, ledger, clock, global_daily_budget=4.0)
    assert capped[0]["scope"] == "global" and capped[0]["limit_usd"] == 4.0
    await ledger.close()
