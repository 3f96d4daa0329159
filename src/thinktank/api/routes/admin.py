"""``/api/v1/admin``: what the admin page shows. Usage over time and latency for everyone, the latest failed
requests, model health and budgets with what is left. Admins only (403 for anyone else)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ...accounts.budget_report import budget_report
from ...accounts.principal import Principal
from ...accounts.usage import LatencyBy, SeriesBy
from ...bounds import MAX_UNIX_TIME
from ...errors import InvalidRequestError
from ..deps import AdminDep, StateDep
from ..routing import StrictJSONRoute
from ..state import AppState

__all__ = ["DEFAULT_WINDOW", "MAX_BUCKETS", "Buckets", "Since", "Top", "Until", "router", "series_response", "window"]

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], route_class=StrictJSONRoute)

DEFAULT_WINDOW = 86400.0
"""Without ``since``: the last day."""
MAX_BUCKETS = 500

Since = Annotated[float | None, Query(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False,
                                      description="Unix seconds, inclusive (default: a day before until)")]
Until = Annotated[float | None, Query(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False,
                                      description="Unix seconds, exclusive (default: now)")]
Buckets = Annotated[int, Query(ge=1, le=MAX_BUCKETS, description="Equal time buckets over [since, until)")]
Top = Annotated[int, Query(ge=1, le=50, description="Groups shown; the rest are summed as one 'other' group")]


def window(state: AppState, since: float | None, until: float | None) -> tuple[float, float]:
    """``[since, until)`` with the defaults filled in; 400 unless since < until."""
    end = until if until is not None else state.clock.time()
    start = since if since is not None else max(end - DEFAULT_WINDOW, 0.0)
    if not start < end:
        raise InvalidRequestError("since must be before until.", param="since")
    return start, end


async def series_response(
    state: AppState, principal: Principal, by: SeriesBy, since: float | None, until: float | None, buckets: int,
    top: int,
) -> dict[str, Any]:
    start, end = window(state, since, until)
    await state.usage_writer.flush()  # what was just answered is in the chart
    return await state.usage_query.series(principal, by, start, end, buckets, top=top)


@router.get("/usage/series")
async def usage_series(
    admin: AdminDep, state: StateDep, by: SeriesBy = "model", since: Since = None, until: Until = None,
    buckets: Buckets = 48, top: Top = 8,
) -> dict[str, Any]:
    """Everyone's requests, cost, errors and tokens per group and time bucket."""
    return await series_response(state, admin, by, since, until, buckets, top)


@router.get("/usage/latency")
async def usage_latency(
    admin: AdminDep, state: StateDep, by: LatencyBy = "model", since: Since = None, until: Until = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """p50 and p95 latency (successful requests), requests and errors per group."""
    start, end = window(state, since, until)
    await state.usage_writer.flush()
    rows = await state.usage_query.latency(admin, start, end, by, limit=limit)
    return {"by": by, "start": start, "end": end, "data": rows}


@router.get("/errors")
async def recent_errors(
    admin: AdminDep, state: StateDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """The latest failed requests, newest first."""
    await state.usage_writer.flush()
    return {"data": await state.usage_query.recent_errors(admin, limit)}


@router.get("/health")
async def health(_admin: AdminDep, state: StateDep) -> dict[str, Any]:
    """Each deployment: cooldown, failures in a row, its last errors (scrubbed)."""
    return {"now": state.clock.time(), "data": state.router.health_snapshot()}


@router.get("/budgets")
async def budgets(
    _admin: AdminDep, state: StateDep, limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> dict[str, Any]:
    """Every configured budget with spent and remaining in its current period."""
    rows = await budget_report(state.db, state.ledger, state.clock, state.settings.global_daily_budget_usd,
                               limit=limit)
    return {"now": state.clock.time(), "data": rows}
