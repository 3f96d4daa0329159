"""Budget backends, where budgets live: one row (SQL) or one hash (Redis, :mod:`.budget_redis`) per budget
and period.

A store keeps ``spent + leased <= limit`` with single atomic steps: ``acquire`` leases money only
if it fits, ``commit`` records spend and hands leases back. Nothing here caches; the per-process
fast path is :class:`thinktank.accounts.budgets.BudgetLedger`.

A lease taken for a :class:`Holder` (one per process) is also recorded per holder, with the time it runs out
unless the holder renews it (``renew``). Any process hands the leases of holders that ran out back to their
budgets (``reclaim_expired``): a process killed while holding a lease leaves it only until then. The sum stays
in the budget's own row, so the check that admits a lease reads one row. Expiry times are the store's own
clock (the database server's, Redis's), so the processes' clocks need not agree.
"""

from __future__ import annotations

import calendar
import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from sqlalchemy import Float, and_, case, cast, delete, func, select, update

from ..clock import Clock
from ..store.db import Database
from ..store.tables import BudgetLeaseRow, BudgetRow

__all__ = [
    "EPSILON",
    "BudgetKey",
    "BudgetSpec",
    "BudgetStore",
    "Holder",
    "Mark",
    "Period",
    "Scope",
    "SqlBudgetStore",
    "journal_of",
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


BudgetKey = tuple[str, str, str]
"""(scope, scope id, period key): one budget in one period, as the journal names it."""

Mark = tuple[str, int]
"""(journal, position): a write of spend covers what that process's journal says up to that position."""


def journal_of(holder_id: str) -> str | None:
    """The journal a holder of leases belongs to (its id is ``<journal>/<n>``); None: a process with no journal."""
    journal, slash, n = holder_id.rpartition("/")
    return journal if slash and journal and n.isdigit() else None


@dataclass(frozen=True)
class Holder:
    """One process's name for its leases, and how long they outlive its last renewal (seconds)."""

    id: str
    ttl: float


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
    async def acquire(self, spec: BudgetSpec, period_key: str, amount: float, holder: Holder | None = None
                      ) -> bool:
        """Lease ``amount`` if ``spent + leased + amount <= limit``; create the budget if missing. With a
        ``holder``, the lease is recorded as its (and runs out ``holder.ttl`` seconds from now unless renewed)."""
        ...

    async def commit(self, spec: BudgetSpec, period_key: str, spent_delta: float, lease_delta: float,
                     holder: Holder | None = None, mark: Mark | None = None) -> float | None:
        """In one step: ``spent += spent_delta`` and ``leased -= lease_delta`` (never below 0; with a ``holder``,
        never more than it holds); with a ``mark``, the journal's mark on the budget moves to its position (the
        spend written covers the journal up to there). Returns the budget's spent after the step (what every
        process has written; None if nothing was to write)."""
        ...

    async def read(self, spec: BudgetSpec, period_key: str) -> tuple[float, float, float]:
        """(limit, spent, leased); a budget never charged reads as (spec limit, 0, 0)."""
        ...

    async def renew(self, holder: Holder) -> None:
        """Every lease of ``holder`` now runs out ``holder.ttl`` seconds from now."""
        ...

    async def reclaim_expired(self, now: float | None = None) -> float:
        """End every lease that ran out before ``now``: its holder died (or stalled) and may have spent all of it,
        so all of it counts as spent (never more than the limit: it was leased), and as reclaimed on the mark of
        the holder's journal, whose replay sets the exact figure (:meth:`settle_journal`). Returns the USD.
        ``now`` defaults to the store's own clock (the database's or Redis's), the one lease expiries are written
        with: best, as no process's clock then matters."""
        ...

    async def drop(self, holder: Holder) -> float:
        """Hand every lease of ``holder`` back to its budget now (it gave them up, its spend written); the USD."""
        ...

    async def journal_budgets(self, journal: str) -> dict[BudgetKey, int]:
        """The budgets ``journal`` has a mark on or its holders a lease of, with the mark's position (0: none)."""
        ...

    async def settle_journal(self, journal: str, key: BudgetKey, unflushed: float, expected: int, last: int
                             ) -> float | None:
        """In one step: budget ``key`` gets ``unflushed`` (the journal's spend past its mark) minus what was
        reclaimed of the journal's leases, its holders' leases still there are handed back, and the mark moves
        to ``last`` with nothing reclaimed. Refused (``StaleMarkError``) if the mark is not at ``expected``.
        Returns the change of spent (None: no such budget)."""
        ...

    async def forget_journal(self, journal: str) -> None:
        """Drop the marks of a journal that is gone (replayed, or its process stopped with everything written)."""
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

    def _now(self) -> Any:
        """The database's clock, in Unix seconds (lease expiries are written and compared with it)."""
        if self._db.dialect == "postgresql":
            return cast(func.extract("epoch", func.clock_timestamp()), Float)
        return (func.julianday("now") - 2440587.5) * 86400.0

    def _add_lease(self, spec: BudgetSpec, pkey: str, holder: Holder, amount: float) -> Any:
        """The holder's lease row, created with ``amount`` or grown by it; renewed either way."""
        values = {"scope": spec.scope, "scope_id": spec.scope_id, "period": pkey, "holder": holder.id,
                  "leased_usd": amount, "expires_at": self._now() + holder.ttl}
        index = [BudgetLeaseRow.scope, BudgetLeaseRow.scope_id, BudgetLeaseRow.period, BudgetLeaseRow.holder]
        insert: Any
        if self._db.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(BudgetLeaseRow).values(**values)
        return stmt.on_conflict_do_update(index_elements=index, set_={
            "leased_usd": BudgetLeaseRow.leased_usd + stmt.excluded.leased_usd,
            "expires_at": stmt.excluded.expires_at})

    @staticmethod
    def _lease_row(scope: str, scope_id: str, pkey: str, holder: str) -> Any:
        return and_(BudgetLeaseRow.scope == scope, BudgetLeaseRow.scope_id == scope_id,
                    BudgetLeaseRow.period == pkey, BudgetLeaseRow.holder == holder)

    async def acquire(self, spec: BudgetSpec, period_key: str, amount: float, holder: Holder | None = None
                      ) -> bool:
        _check_amount("amount", amount)
        stmt = (
            update(BudgetRow)
            .where(self._row(spec, period_key),
                   BudgetRow.spent_usd + BudgetRow.leased_usd + amount <= BudgetRow.limit_usd + EPSILON)
            .values(leased_usd=BudgetRow.leased_usd + amount, updated_at=self._clock.time())
        )
        async with self._db.session() as session:
            conn = await session.connection()
            await conn.execute(self._upsert(spec, period_key))  # locks the budget's row first, always
            granted = (await conn.execute(stmt)).rowcount == 1
            if granted and holder is not None:
                await conn.execute(self._add_lease(spec, period_key, holder, amount))
            return granted

    async def commit(self, spec: BudgetSpec, period_key: str, spent_delta: float, lease_delta: float,
                     holder: Holder | None = None, mark: Mark | None = None) -> float | None:
        _check_amount("spent_delta", spent_delta)
        _check_amount("lease_delta", lease_delta)
        if spent_delta == 0 and lease_delta == 0:
            return None
        async with self._db.session() as session:
            conn = await session.connection()
            await conn.execute(self._upsert(spec, period_key))  # the budget's row is locked from here on
            if mark is not None:
                from . import budget_marks

                await conn.execute(budget_marks.advance(self._db.dialect, mark[0], (spec.scope, spec.scope_id,
                                                                                     period_key), mark[1]))
            if holder is not None and lease_delta > 0:
                lease = self._lease_row(spec.scope, spec.scope_id, period_key, holder.id)
                held = (await conn.execute(select(BudgetLeaseRow.leased_usd).where(lease))).scalar_one_or_none()
                held = float(held or 0.0)
                if held - lease_delta > EPSILON:
                    await conn.execute(update(BudgetLeaseRow).where(lease).values(
                        leased_usd=held - lease_delta, expires_at=self._now() + holder.ttl))
                else:  # all of it back (never more than it holds: a lease reclaimed meanwhile is gone already)
                    await conn.execute(delete(BudgetLeaseRow).where(lease))
                    lease_delta = held
            left = BudgetRow.leased_usd - lease_delta
            stmt = (
                update(BudgetRow)
                .where(self._row(spec, period_key))
                .values(spent_usd=BudgetRow.spent_usd + spent_delta,
                        leased_usd=case((left > EPSILON, left), else_=0.0),
                        updated_at=self._clock.time())
                .returning(BudgetRow.spent_usd)
            )
            return float((await conn.execute(stmt)).scalar_one())

    async def renew(self, holder: Holder) -> None:
        async with self._db.session() as session:
            await session.execute(update(BudgetLeaseRow).where(BudgetLeaseRow.holder == holder.id).values(
                expires_at=self._now() + holder.ttl))

    async def reclaim_expired(self, now: float | None = None) -> float:
        return await self._give_back(BudgetLeaseRow.expires_at < (self._now() if now is None else now), spent=True)

    async def drop(self, holder: Holder) -> float:
        return await self._give_back(BudgetLeaseRow.holder == holder.id, spent=False)

    async def _give_back(self, which: Any, *, spent: bool) -> float:
        """Delete the lease rows ``which`` selects and take their amounts off their budgets' leased (``spent``:
        onto their spent, and their journals' marks), one budget (one short transaction) at a time; a row renewed
        meanwhile stays (``which`` is checked again)."""
        from . import budget_marks

        found = select(BudgetLeaseRow.scope, BudgetLeaseRow.scope_id, BudgetLeaseRow.period).where(which).distinct()
        async with self._db.session() as session:
            budgets = (await session.execute(found.limit(1000))).all()
        total = 0.0
        for scope, scope_id, pkey in budgets:
            budget = and_(BudgetRow.scope == scope, BudgetRow.scope_id == scope_id, BudgetRow.period == pkey)
            lease = and_(BudgetLeaseRow.scope == scope, BudgetLeaseRow.scope_id == scope_id,
                         BudgetLeaseRow.period == pkey, which)
            async with self._db.session() as session:
                conn = await session.connection()
                # The budget's row first (a write: SQLite takes its lock at once), as acquire and commit do.
                await conn.execute(update(BudgetRow).where(budget).values(updated_at=self._clock.time()))
                rows = [(str(h), float(a)) for h, a in (await conn.execute(delete(BudgetLeaseRow).where(
                    lease).returning(BudgetLeaseRow.holder, BudgetLeaseRow.leased_usd))).all()]
                back = sum(a for _, a in rows)
                if back > 0:
                    left = BudgetRow.leased_usd - back
                    await conn.execute(update(BudgetRow).where(budget).values(
                        leased_usd=case((left > EPSILON, left), else_=0.0),
                        spent_usd=BudgetRow.spent_usd + (back if spent else 0.0)))
                    if spent:
                        await budget_marks.add_reclaimed(conn, self._db.dialect, rows, (scope, scope_id, pkey))
                total += back
        return total

    async def journal_budgets(self, journal: str) -> dict[BudgetKey, int]:
        from . import budget_marks

        async with self._db.session() as session:
            return await budget_marks.budgets_of(await session.connection(), journal)

    async def settle_journal(self, journal: str, key: BudgetKey, unflushed: float, expected: int, last: int
                             ) -> float | None:
        from . import budget_marks

        async with self._db.session() as session:
            return await budget_marks.settle(await session.connection(), self._db.dialect, self._clock.time(),
                                             journal, key, unflushed, expected, last)

    async def forget_journal(self, journal: str) -> None:
        from . import budget_marks

        async with self._db.session() as session:
            await budget_marks.forget(await session.connection(), journal)

    async def read(self, spec: BudgetSpec, period_key: str) -> tuple[float, float, float]:
        stmt = select(BudgetRow.limit_usd, BudgetRow.spent_usd, BudgetRow.leased_usd).where(
            self._row(spec, period_key))
        async with self._db.session() as session:
            row = (await session.execute(stmt)).one_or_none()
        if row is None:
            return (_limit(spec), 0.0, 0.0)
        return (float(row[0]), float(row[1]), float(row[2]))
