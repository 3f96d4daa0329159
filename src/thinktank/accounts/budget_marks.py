"""Journal marks of the SQL budget store: what each process's journal (``thinktank.accounts.journal``) says of each
budget, kept beside the budget (``budget_journal_marks``) and changed in the same transactions as its row.

- ``seq``: the journal position up to which that process's spend on the budget is in ``spent_usd``. Every write
  of spend carries it (:func:`advance`), so a journal replayed after its process died adds exactly the spend
  past it, however often the replay is tried.
- ``reclaimed_usd``: what reclaiming the process's expired leases counted as spent (:func:`add_reclaimed`): all
  of them, as it may have spent them, until its journal says how much it did (:func:`settle`).

A holder of leases belongs to the journal its id starts with (``<journal>/<n>``, :func:`journal_of`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..store.tables import BudgetJournalMark, BudgetLeaseRow, BudgetRow
from .budget_backends import EPSILON, BudgetKey, journal_of

__all__ = ["StaleMarkError", "add_reclaimed", "advance", "budgets_of", "forget", "settle"]


class StaleMarkError(Exception):
    """A journal's mark moved while its replay was computing what to add: another replay; try again."""


def _insert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


_INDEX = [BudgetJournalMark.journal, BudgetJournalMark.scope, BudgetJournalMark.scope_id, BudgetJournalMark.period]


def _mark(journal: str, key: BudgetKey) -> Any:
    scope, scope_id, period = key
    return and_(BudgetJournalMark.journal == journal, BudgetJournalMark.scope == scope,
                BudgetJournalMark.scope_id == scope_id, BudgetJournalMark.period == period)


def advance(dialect: str, journal: str, key: BudgetKey, seq: int) -> Any:
    """The statement that moves the mark to ``seq`` (never back)."""
    scope, scope_id, period = key
    stmt = _insert(dialect)(BudgetJournalMark).values(journal=journal, scope=scope, scope_id=scope_id, period=period,
                                                      seq=seq, reclaimed_usd=0.0)
    return stmt.on_conflict_do_update(index_elements=_INDEX, set_={"seq": case(
        (stmt.excluded.seq > BudgetJournalMark.seq, stmt.excluded.seq), else_=BudgetJournalMark.seq)})


async def add_reclaimed(conn: AsyncConnection, dialect: str, holder_amounts: list[tuple[str, float]],
                        key: BudgetKey) -> None:
    """Count ``amount`` reclaimed from each ``holder`` against its journal's mark on the budget ``key``."""
    scope, scope_id, period = key
    for holder, amount in holder_amounts:
        journal = journal_of(holder)
        if journal is None or amount <= 0:
            continue  # a holder of no journal: its lease stays spent (nobody can say what it spent)
        stmt = _insert(dialect)(BudgetJournalMark).values(journal=journal, scope=scope, scope_id=scope_id,
                                                          period=period, seq=0, reclaimed_usd=amount)
        await conn.execute(stmt.on_conflict_do_update(index_elements=_INDEX, set_={
            "reclaimed_usd": BudgetJournalMark.reclaimed_usd + stmt.excluded.reclaimed_usd}))


async def budgets_of(conn: AsyncConnection, journal: str) -> dict[BudgetKey, int]:
    """The budgets ``journal`` has a mark on or its holders a lease of, with the mark's position (0: none)."""
    found: dict[BudgetKey, int] = {}
    held = select(BudgetLeaseRow.scope, BudgetLeaseRow.scope_id, BudgetLeaseRow.period).where(
        BudgetLeaseRow.holder.like(f"{journal}/%")).distinct()
    for scope, scope_id, period in (await conn.execute(held)).all():
        found[(scope, scope_id, period)] = 0
    marks = select(BudgetJournalMark.scope, BudgetJournalMark.scope_id, BudgetJournalMark.period,
                   BudgetJournalMark.seq).where(BudgetJournalMark.journal == journal)
    for scope, scope_id, period, seq in (await conn.execute(marks)).all():
        found[(scope, scope_id, period)] = int(seq)
    return found


async def settle(conn: AsyncConnection, dialect: str, now: float, journal: str, key: BudgetKey, unflushed: float,
                 expected: int, last: int) -> float | None:
    """In one transaction: the budget ``key`` gets the spend ``journal`` has past its mark (``unflushed``), minus
    what reclaiming its leases counted as spent; the leases its holders still have are handed back; the mark
    moves to ``last`` with nothing reclaimed. Raises :class:`StaleMarkError` if the mark is not at ``expected``.
    Returns the change of spent (None: no such budget)."""
    scope, scope_id, period = key
    budget = and_(BudgetRow.scope == scope, BudgetRow.scope_id == scope_id, BudgetRow.period == period)
    if (await conn.execute(update(BudgetRow).where(budget).values(updated_at=now))).rowcount == 0:
        return None  # the row locked first, as every write of the budget does
    mark = (await conn.execute(select(BudgetJournalMark.seq, BudgetJournalMark.reclaimed_usd).where(
        _mark(journal, key)))).one_or_none()
    seq, reclaimed = (0, 0.0) if mark is None else (int(mark[0]), float(mark[1]))
    if seq != expected:
        raise StaleMarkError(f"the mark of journal {journal} on {key} is at {seq}, not {expected}")
    leases = and_(BudgetLeaseRow.scope == scope, BudgetLeaseRow.scope_id == scope_id, BudgetLeaseRow.period == period,
                  BudgetLeaseRow.holder.like(f"{journal}/%"))
    back = float(sum((await conn.execute(delete(BudgetLeaseRow).where(leases).returning(
        BudgetLeaseRow.leased_usd))).scalars().all()))
    delta = unflushed - reclaimed
    spent, left = BudgetRow.spent_usd + delta, BudgetRow.leased_usd - back
    await conn.execute(update(BudgetRow).where(budget).values(
        spent_usd=case((spent > 0, spent), else_=0.0), leased_usd=case((left > EPSILON, left), else_=0.0)))
    stmt = _insert(dialect)(BudgetJournalMark).values(journal=journal, scope=scope, scope_id=scope_id, period=period,
                                                      seq=last, reclaimed_usd=0.0)
    await conn.execute(stmt.on_conflict_do_update(index_elements=_INDEX, set_={"seq": last, "reclaimed_usd": 0.0}))
    return delta


async def forget(conn: AsyncConnection, journal: str) -> None:
    """The marks of a journal that is gone (replayed, or its process stopped with everything written)."""
    await conn.execute(delete(BudgetJournalMark).where(BudgetJournalMark.journal == journal))
