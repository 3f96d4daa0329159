"""Budget backends, where budgets live: one row (SQL) or one hash (Redis) per budget and period.

A store keeps ``spent + leased <= limit`` with single atomic steps: ``acquire`` leases money only
if it fits, ``commit`` records spend and hands leases back. Nothing here caches; the per-process
fast path is :class:`thinktank.accounts.budgets.BudgetLedger`.
"""

from __future__ import annotations

import calendar
import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sqlalchemy import and_, case, select, update

from ..clock import Clock
from ..store.db import Database
from ..store.tables import BudgetRow

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "EPSILON",
    "BudgetSpec",
    "BudgetStore",
    "Period",
    "RedisBudgetStore",
    "Scope",
    "SqlBudgetStore",
    "period_key",
    "period_reset_in",
]

Scope = Literal["key", "user", "team", "global", "run"]
Period = Literal["day", "month", "total"]

EPSILON = 1e-9
"""Slack (USD) for float rounding in the ``spent + leased + amount <= limit`` comparisons."""

TOTAL_RETRY_AFTER = 3600.0
"""A lifetime budget never resets; clients are told to come back in an hour (an admin may raise it)."""

EXPIRY_GRACE = 3600.0
"""Redis keeps a day/month budget this long after its period ended, for late settles and reports."""


@dataclass(frozen=True)
class BudgetSpec:
    """One budget a request is charged against. ``limit_usd=None`` means unlimited (never stored)."""

    scope: Scope
    scope_id: str
    limit_usd: float | None
    period: Period
    label: str
    """A human name for messages: "key 'ci-bot' (tt-abcd…)", "team 'ml'", "the global daily cap"."""


def period_key(period: Period, now_wall: float) -> str:
    """The UTC period containing ``now_wall``: "2026-11-21" (day), "2026-11" (month) or "total"."""
    if period == "total":
        return "total"
    return _day_keys(int(now_wall // 86400))[0 if period == "day" else 1]


@functools.lru_cache(maxsize=64)
def _day_keys(day: int) -> tuple[str, str]:
    # Every request asks for its period; formatting a date each time measured at ~8 µs.
    date = datetime.fromtimestamp(day * 86400, UTC)
    return date.strftime("%Y-%m-%d"), date.strftime("%Y-%m")


def period_reset_in(period: Period, now_wall: float) -> float:
    """Seconds until the period containing ``now_wall`` ends (3600 for "total", which never does)."""
    if period == "total":
        return TOTAL_RETRY_AFTER
    now = datetime.fromtimestamp(now_wall, UTC)
    if period == "day":
        start = datetime(now.year, now.month, now.day, tzinfo=UTC)
        end = start.timestamp() + 86400.0
    else:
        days = calendar.monthrange(now.year, now.month)[1]
        end = datetime(now.year, now.month, 1, tzinfo=UTC).timestamp() + days * 86400.0
    return max(end - now_wall, 0.0)


def _check_amount(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite amount >= 0, not {value!r}")


class BudgetStore(Protocol):
    async def acquire(self, spec: BudgetSpec, period_key: str, amount: float) -> bool:
        """Lease ``amount`` if ``spent + leased + amount <= limit``; create the budget if missing."""
        ...

    async def commit(self, spec: BudgetSpec, period_key: str, spent_delta: float, lease_delta: float
                     ) -> float | None:
        """In one step: ``spent += spent_delta`` and ``leased -= lease_delta`` (never below 0). Returns the
        budget's spent after the step (what every process has written; None if nothing was to write)."""
        ...

    async def read(self, spec: BudgetSpec, period_key: str) -> tuple[float, float, float]:
        """(limit, spent, leased); a budget never charged reads as (spec limit, 0, 0)."""
        ...


def _limit(spec: BudgetSpec) -> float:
    if spec.limit_usd is None:
        raise ValueError(f"{spec.label} has no limit and is never stored")
    return spec.limit_usd


class SqlBudgetStore:
    """The ``budgets`` table, on SQLite or PostgreSQL. Each call is one short transaction."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def _upsert(self, spec: BudgetSpec, pkey: str) -> Any:
        """Create the row if missing, or bring its limit up to date; race-free on both dialects."""
        values = {
            "scope": spec.scope, "scope_id": spec.scope_id, "period": pkey, "limit_usd": _limit(spec),
            "spent_usd": 0.0, "leased_usd": 0.0, "updated_at": self._clock.time(),
        }
        index = [BudgetRow.scope, BudgetRow.scope_id, BudgetRow.period]
        if self._db.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            pg = pg_insert(BudgetRow).values(**values)
            return pg.on_conflict_do_update(
                index_elements=index, set_={"limit_usd": pg.excluded.limit_usd},
                where=BudgetRow.limit_usd != pg.excluded.limit_usd)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(BudgetRow).values(**values)
        return lite.on_conflict_do_update(
            index_elements=index, set_={"limit_usd": lite.excluded.limit_usd},
            where=BudgetRow.limit_usd != lite.excluded.limit_usd)

    @staticmethod
    def _row(spec: BudgetSpec, pkey: str) -> Any:
        return and_(BudgetRow.scope == spec.scope, BudgetRow.scope_id == spec.scope_id, BudgetRow.period == pkey)

    async def acquire(self, spec: BudgetSpec, period_key: str, amount: float) -> bool:
        _check_amount("amount", amount)
        stmt = (
            update(BudgetRow)
            .where(self._row(spec, period_key),
                   BudgetRow.spent_usd + BudgetRow.leased_usd + amount <= BudgetRow.limit_usd + EPSILON)
            .values(leased_usd=BudgetRow.leased_usd + amount, updated_at=self._clock.time())
        )
        async with self._db.session() as session:
            conn = await session.connection()
            await conn.execute(self._upsert(spec, period_key))
            result = await conn.execute(stmt)
            return result.rowcount == 1

    async def commit(self, spec: BudgetSpec, period_key: str, spent_delta: float, lease_delta: float
                     ) -> float | None:
        _check_amount("spent_delta", spent_delta)
        _check_amount("lease_delta", lease_delta)
        if spent_delta == 0 and lease_delta == 0:
            return None
        left = BudgetRow.leased_usd - lease_delta
        stmt = (
            update(BudgetRow)
            .where(self._row(spec, period_key))
            .values(spent_usd=BudgetRow.spent_usd + spent_delta,
                    leased_usd=case((left > EPSILON, left), else_=0.0),
                    updated_at=self._clock.time())
            .returning(BudgetRow.spent_usd)
        )
        async with self._db.session() as session:
            conn = await session.connection()
            await conn.execute(self._upsert(spec, period_key))
            return float((await conn.execute(stmt)).scalar_one())

    async def read(self, spec: BudgetSpec, period_key: str) -> tuple[float, float, float]:
        stmt = select(BudgetRow.limit_usd, BudgetRow.spent_usd, BudgetRow.leased_usd).where(
            self._row(spec, period_key))
        async with self._db.session() as session:
            row = (await session.execute(stmt)).one_or_none()
        if row is None:
            return (_limit(spec), 0.0, 0.0)
        return (float(row[0]), float(row[1]), float(row[2]))


# KEYS[1] the budget hash; ARGV: limit, amount, eps, ttl seconds (0: none).
_ACQUIRE_LUA = """
local key = KEYS[1]
redis.call('HSET', key, 'limit', ARGV[1])
local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
local leased = tonumber(redis.call('HGET', key, 'leased') or '0')
if spent == nil then spent = 0 end
if leased == nil then leased = 0 end
local ttl = tonumber(ARGV[4])
if ttl > 0 then redis.call('EXPIRE', key, ttl) end
if spent + leased + tonumber(ARGV[2]) <= tonumber(ARGV[1]) + tonumber(ARGV[3]) then
  redis.call('HINCRBYFLOAT', key, 'leased', ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] the budget hash; ARGV: limit, spent_delta, lease_delta, minus lease_delta, eps, ttl seconds (0: none).
# Returns the spent after the step (HINCRBYFLOAT's string: a Lua number would come back truncated to an integer).
_COMMIT_LUA = """
local key = KEYS[1]
if redis.call('HEXISTS', key, 'limit') == 0 then redis.call('HSET', key, 'limit', ARGV[1]) end
local spent = redis.call('HINCRBYFLOAT', key, 'spent', ARGV[2])
local leased = tonumber(redis.call('HGET', key, 'leased') or '0')
if leased == nil then leased = 0 end
if leased - tonumber(ARGV[3]) > tonumber(ARGV[5]) then
  redis.call('HINCRBYFLOAT', key, 'leased', ARGV[4])
else
  redis.call('HSET', key, 'leased', '0')
end
local ttl = tonumber(ARGV[6])
if ttl > 0 then redis.call('EXPIRE', key, ttl) end
return spent
"""


class RedisBudgetStore:
    """One hash per budget and period (fields limit, spent, leased), changed only by Lua scripts."""

    def __init__(self, redis_client: Redis, clock: Clock, prefix: str = "tt:budget") -> None:
        self._redis = redis_client
        self._clock = clock
        self._prefix = prefix
        self._acquire = redis_client.register_script(_ACQUIRE_LUA)
        self._commit = redis_client.register_script(_COMMIT_LUA)

    def key(self, spec: BudgetSpec, period_key: str) -> str:
        return f"{self._prefix}:{spec.scope}:{spec.scope_id}:{period_key}"

    def _ttl(self, spec: BudgetSpec) -> int:
        if spec.period == "total":
            return 0
        # Relative to the injected clock: the Redis server's own clock plays no part.
        return math.ceil(period_reset_in(spec.period, self._clock.time()) + EXPIRY_GRACE)

    async def acquire(self, spec: BudgetSpec, period_key: str, amount: float) -> bool:
        _check_amount("amount", amount)
        args: list[str | int] = [repr(_limit(spec)), repr(float(amount)), repr(EPSILON), self._ttl(spec)]
        result = await self._acquire(keys=[self.key(spec, period_key)], args=args)
        return int(result) == 1

    async def commit(self, spec: BudgetSpec, period_key: str, spent_delta: float, lease_delta: float
                     ) -> float | None:
        _check_amount("spent_delta", spent_delta)
        _check_amount("lease_delta", lease_delta)
        if spent_delta == 0 and lease_delta == 0:
            return None
        args: list[str | int] = [repr(_limit(spec)), repr(float(spent_delta)), repr(float(lease_delta)),
                                 repr(-float(lease_delta)), repr(EPSILON), self._ttl(spec)]
        return float(await self._commit(keys=[self.key(spec, period_key)], args=args))

    async def read(self, spec: BudgetSpec, period_key: str) -> tuple[float, float, float]:
        raw = await self._redis.hmget(self.key(spec, period_key), ["limit", "spent", "leased"])
        limit, spent, leased = (None if v is None else float(v) for v in raw)
        return (_limit(spec) if limit is None else limit, spent or 0.0, leased or 0.0)
