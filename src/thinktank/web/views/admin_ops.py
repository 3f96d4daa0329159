"""The admin dashboard pages: usage over time (by model, user or key), latency and errors; model health;
budgets with what is left. The numbers come from the services the ``/api/v1/admin`` routes use."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...accounts.budget_report import budget_report
from ...accounts.usage import SeriesBy
from ...api.deps import StateDep
from ...api.state import AppState
from ...store.tables import SYSTEM_USER_ID
from ..charts import bar_chart, line_chart
from ..render import money
from ..session import AdminPage
from .common import pages

__all__ = ["WINDOWS", "router"]

router = APIRouter()

WINDOWS: dict[str, tuple[str, float, int]] = {
    "1h": ("last hour", 3600.0, 12),
    "24h": ("last 24 hours", 86400.0, 24),
    "7d": ("last 7 days", 7 * 86400.0, 28),
    "30d": ("last 30 days", 30 * 86400.0, 30),
}
"""name: (label, seconds, buckets)."""
GROUPINGS: dict[str, str] = {"model": "Model", "user": "User", "key": "Key"}


def fmt_ms(value: float | None) -> str:
    """Milliseconds for a table: whole above 10, one decimal below (the demo models answer in under 1 ms)."""
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


async def _labels(state: AppState, by: str, user: AdminPage) -> dict[str | None, str]:
    """What a group id is called on the page: a user's email, a key's name and prefix."""
    if by == "user":
        return await _emails(state)
    if by == "key":
        keys = await state.keys.list(user.principal, include_revoked=True)
        return {k.id: f"{k.name or 'unnamed'} ({k.prefix}…)" for k in keys}
    return {}


async def _emails(state: AppState) -> dict[str | None, str]:
    """Each user's email, and what requests made with the server's admin key are recorded under."""
    return {SYSTEM_USER_ID: "the admin key", **{u.id: u.email for u in await state.users.list_users()}}


def _tick_format(seconds: float) -> str:
    return "%H:%M" if seconds <= 86400 else "%m-%d"


def _charts(series: dict[str, Any], labels: dict[str | None, str], window_s: float) -> dict[str, Any]:
    times: list[float] = series["times"]
    fmt = _tick_format(window_s)
    step = max(1, len(times) // 6)
    ticks = [(float(i), dt.datetime.fromtimestamp(times[i], dt.UTC).strftime(fmt)) for i in range(0, len(times), step)]

    def name(group: dict[str, Any]) -> str:
        if group["other"]:
            return "other"
        return labels.get(group["group"], group["group"] or "(none)")

    groups = series["groups"]
    requests = {name(g): [(float(i), float(v)) for i, v in enumerate(g["requests"])] for g in groups}
    cost = {name(g): [(float(i), float(v)) for i, v in enumerate(g["cost_usd"])] for g in groups}
    errors = {name(g): [(float(i), float(v)) for i, v in enumerate(g["errors"])] for g in groups}
    totals = [{"name": name(g), **g["total"]} for g in groups]
    return {
        "requests_chart": line_chart(requests, title="Requests over time", x_labels=ticks),
        "cost_chart": line_chart(cost, title="Spend over time (USD)", x_labels=ticks, y_format=money),
        "errors_chart": line_chart(errors, title="Errors over time", x_labels=ticks)
        if any(g["total"]["errors"] for g in groups) else None,
        "totals": totals,
    }


@router.get("/admin/usage")
async def usage_page(request: Request, user: AdminPage, state: StateDep) -> Response:
    by = request.query_params.get("by", "model")
    by = by if by in GROUPINGS else "model"
    window = request.query_params.get("window", "24h")
    window = window if window in WINDOWS else "24h"
    label, seconds, buckets = WINDOWS[window]
    end = state.clock.time()
    start = end - seconds
    await state.usage_writer.flush()  # what was just answered is in the charts
    # The reports read in parallel (each on its own connection): the page waits for the slowest, not the sum.
    series, latency, errors, labels = await asyncio.gather(
        state.usage_query.series(user.principal, cast(SeriesBy, by), start, end, buckets, top=8),
        state.usage_query.latency(user.principal, start, end, cast(SeriesBy, by), limit=20),
        state.usage_query.recent_errors(user.principal, 20),
        _labels(state, by, user),
    )
    emails = labels if by == "user" else await _emails(state)
    p95 = [(labels.get(r["group"], r["group"] or "(none)"), float(r["p95_ms"])) for r in latency
           if r["p95_ms"] is not None]
    return pages(request).render(
        request, "admin/usage.html", user, title="Usage", by=by, window=window, window_label=label,
        groupings=GROUPINGS, windows=WINDOWS, labels=labels, emails=emails, latency=latency, errors=errors,
        latency_chart=bar_chart(p95, title="p95 latency (ms)", value_format=fmt_ms) if p95 else None, ms=fmt_ms,
        **_charts(series, labels, seconds),
    )


@router.get("/admin/health")
async def health_page(request: Request, user: AdminPage, state: StateDep) -> Response:
    deployments = state.router.health_snapshot()
    return pages(request).render(request, "admin/health.html", user, title="Model health", deployments=deployments,
                                 now=state.clock.time(), ms=fmt_ms,
                                 failing=sum(1 for d in deployments if d["status"] != "ok"))


@router.get("/admin/budgets")
async def budgets_page(request: Request, user: AdminPage, state: StateDep) -> Response:
    rows = await budget_report(state.db, state.ledger, state.clock, state.settings.global_daily_budget_usd,
                               limit=500)
    used = [(f"{r['scope']} {r['name'] or r['scope_id']}", r["spent_usd"] / r["limit_usd"] if r["limit_usd"] else 0.0)
            for r in rows]
    return pages(request).render(
        request, "admin/budgets.html", user, title="Budgets", budgets=rows,
        chart=bar_chart(used[:30], title="Share of each budget spent", max_value=1.0,
                        value_format=lambda v: f"{v:.0%}") if used else None,
    )
