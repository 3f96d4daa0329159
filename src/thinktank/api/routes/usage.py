"""``/api/v1/usage``: totals by model, key, user, deployment or day, and series over time (members see their
own)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ...accounts.usage import GroupBy, SeriesBy, SortBy
from ...bounds import MAX_UNIX_TIME
from ..deps import PrincipalDep, StateDep
from ..routing import StrictJSONRoute
from .admin import Buckets, Since, Top, Until, series_response

router = APIRouter(prefix="/api/v1/usage", tags=["usage"], route_class=StrictJSONRoute)


@router.get("")
async def usage(
    principal: PrincipalDep,
    state: StateDep,
    group_by: GroupBy = "model",
    start: Annotated[float | None, Query(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False,
                                         description="Unix seconds, inclusive")] = None,
    end: Annotated[float | None, Query(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False,
                                       description="Unix seconds, exclusive")] = None,
    sort: SortBy = "cost",
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> dict[str, Any]:
    await state.usage_writer.flush()  # what was just answered is in the report
    rows = await state.usage_query.aggregate(principal, group_by, start, end, sort, limit)
    return {"group_by": group_by, "start": start, "end": end, "data": rows}


@router.get("/series")
async def usage_series(
    principal: PrincipalDep, state: StateDep, by: SeriesBy = "model", since: Since = None, until: Until = None,
    buckets: Buckets = 48, top: Top = 8,
) -> dict[str, Any]:
    """Requests, cost, errors and tokens per group and time bucket: a member's own, an admin's everyone's."""
    return await series_response(state, principal, by, since, until, buckets, top)
