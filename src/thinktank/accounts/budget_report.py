"""Every configured budget with what was spent and what is left in its current period (for admins)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from ..clock import Clock
from ..store.db import Database
from ..store.tables import ApiKey, Team, User
from .budget_backends import BudgetSpec, Period, period_key, period_reset_in
from .budgets import BudgetLedger

__all__ = ["budget_report", "configured_budgets"]


def _period(value: str) -> Period:
    return value if value in ("day", "month", "total") else "month"  # type: ignore[return-value]


async def configured_budgets(
    db: Database, global_daily_budget: float | None = None, *, limit: int = 1000,
) -> list[tuple[BudgetSpec, dict[str, Any]]]:
    """The budgets that apply to requests, as the authenticator makes them (teams, users and keys not revoked
    with a limit, and the global daily cap), each with what names its owner. At most ``limit`` of each kind."""
    out: list[tuple[BudgetSpec, dict[str, Any]]] = []
    if global_daily_budget is not None:
        out.append((BudgetSpec("global", "all", global_daily_budget, "day", "the global daily cap"),
                    {"name": "global daily cap"}))
    async with db.session() as s:
        teams = (await s.execute(
            select(Team).where(Team.budget_usd.is_not(None)).order_by(Team.name).limit(limit))).scalars().all()
        users = (await s.execute(
            select(User).where(User.budget_usd.is_not(None), User.revoked_at.is_(None))
            .order_by(User.email).limit(limit))).scalars().all()
        keys = (await s.execute(
            select(ApiKey, User.email).join(User, ApiKey.owner_id == User.id)
            .where(ApiKey.budget_usd.is_not(None), ApiKey.revoked_at.is_(None), User.revoked_at.is_(None))
            .order_by(User.email, ApiKey.created_at).limit(limit))).all()
    for t in teams:
        out.append((BudgetSpec("team", t.id, t.budget_usd, _period(t.budget_period), f"team '{t.name}'"),
                    {"name": t.name}))
    for u in users:
        out.append((BudgetSpec("user", u.id, u.budget_usd, _period(u.budget_period), f"user {u.email}"),
                    {"name": u.email}))
    for k, email in keys:
        out.append((BudgetSpec("key", k.id, k.budget_usd, _period(k.budget_period), f"key '{k.name or k.id}'"),
                    {"name": k.name, "prefix": k.prefix, "owner_id": k.owner_id, "owner_email": email}))
    return out


async def budget_report(
    db: Database, ledger: BudgetLedger, clock: Clock, global_daily_budget: float | None = None, *,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Each configured budget now: its limit and period, spent, remaining (limit - spent), available (what a
    request could reserve now: other processes' unspent leases are not) and when the period resets."""
    now = clock.time()
    out = []
    for spec, who in await configured_budgets(db, global_daily_budget, limit=limit):
        spent, remaining, available = await ledger.standing(spec)
        out.append({
            "scope": spec.scope, "scope_id": spec.scope_id, **who, "period": spec.period,
            "period_key": period_key(spec.period, now), "limit_usd": spec.limit_usd, "spent_usd": round(spent, 9),
            "remaining_usd": round(remaining, 9), "available_usd": round(available, 9),
            "resets_in_s": None if spec.period == "total" else round(period_reset_in(spec.period, now), 3),
        })
    return out
