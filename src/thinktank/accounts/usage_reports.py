"""Usage over time for charts: series per time bucket, latency percentiles, the latest failures.

Every query is one statement (two for a series with more groups than shown) computed in SQL, the same on
SQLite and PostgreSQL; members only ever see their own rows. Groups are bounded so a chart stays readable:
the ``top`` groups by cost, the rest summed as one "other" group.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from sqlalchemy import BigInteger, Integer, case, cast, func, literal, literal_column, null, or_, select
from sqlalchemy.sql.elements import ColumnElement

from ..store.db import Database
from ..store.tables import UsageRow
from .principal import Principal

__all__ = ["LatencyBy", "SeriesBy", "latency", "recent_errors", "series"]

SeriesBy = Literal["model", "user", "key"]
LatencyBy = Literal["model", "deployment", "user", "key"]

_COLUMNS: dict[str, Any] = {
    "model": UsageRow.model, "user": UsageRow.user_id, "key": UsageRow.key_id, "deployment": UsageRow.deployment,
}
_METRICS = ("requests", "cost_usd", "errors", "tokens")
PERCENTILES = (0.5, 0.95)
_G: ColumnElement[Any] = literal_column("g")
_B: ColumnElement[Any] = literal_column("b")


def _scope(principal: Principal, start: float, end: float) -> list[ColumnElement[bool]]:
    where = [UsageRow.ts >= start, UsageRow.ts < end]
    if not principal.is_admin:
        where.append(UsageRow.user_id == principal.user_id)
    return where


def _group(by: str) -> ColumnElement[str]:
    """The group's value with NULL (a request made without a key, say) as '' (no id or model name is empty).
    Written without bound parameters, and grouped by its alias: PostgreSQL matches a GROUP BY expression to
    the selected one only if their parameters are the same ones, and the driver numbers each afresh."""
    return func.coalesce(_COLUMNS[by], literal_column("''"))


def _bucket(dialect: str, start: float, width: float) -> ColumnElement[int]:
    """The bucket index of a row, ``floor((ts - start) / width)``. Rows are filtered to ``ts >= start``, so the
    value is never negative: SQLite's CAST truncates, which is floor there (its floor() is optional)."""
    offset = (UsageRow.ts - literal(start)) / literal(width)
    if dialect == "postgresql":
        return cast(func.floor(offset), BigInteger)
    return cast(offset, Integer)


def _sums() -> list[Any]:
    return [
        func.count().label("requests"),
        func.sum(UsageRow.cost_usd).label("cost_usd"),
        func.sum(case((UsageRow.status >= 400, 1), else_=0)).label("errors"),
        func.sum(UsageRow.prompt_tokens + UsageRow.completion_tokens).label("tokens"),
    ]


def _metrics(row: Any) -> dict[str, float | int]:
    return {"requests": int(row.requests or 0), "cost_usd": float(row.cost_usd or 0.0),
            "errors": int(row.errors or 0), "tokens": int(row.tokens or 0)}


async def series(
    db: Database, principal: Principal, by: SeriesBy, start: float, end: float, buckets: int, *, top: int = 8,
) -> dict[str, Any]:
    """Requests, cost, errors (status >= 400) and tokens per group and per time bucket over ``[start, end)``.

    ``buckets`` equal buckets; at most ``top`` groups (the costliest, then the most requests), the rest summed
    in one group marked ``"other": true``.
    """
    if not (end > start and buckets >= 1 and top >= 1):
        raise ValueError("series needs end > start, buckets >= 1 and top >= 1")
    width = (end - start) / buckets
    where = _scope(principal, start, end)
    group = _group(by)
    ranking = (
        select(group.label("g"), *_sums()).where(*where).group_by(_G)
        .order_by(func.sum(UsageRow.cost_usd).desc(), func.count().desc(), _G.asc()).limit(top + 1)
    )
    async with db.session() as s:
        ranked = (await s.execute(ranking)).all()
        shown = [r.g for r in ranked[:top]]
        more = len(ranked) > top
        label: ColumnElement[Any] = case((group.in_(shown), group), else_=null()) if more else group
        bucket = _bucket(db.dialect, start, width)
        rows = (await s.execute(
            select(label.label("g"), bucket.label("b"), *_sums()).where(*where).group_by(_G, _B)
        )).all() if ranked else []
    out: dict[str | None, dict[str, Any]] = {}
    for g in shown:
        out[g] = _empty(g or None, buckets, other=False)
    for r in rows:
        item = out.get(r.g) if r.g is not None else None
        if item is None:
            item = out.setdefault(None, _empty("other", buckets, other=True))
        i = min(max(int(r.b), 0), buckets - 1)  # a row at the very end of a float-rounded bucket
        for name, value in _metrics(r).items():
            item[name][i] += value
            item["total"][name] += value
    return {
        "by": by, "start": start, "end": end, "buckets": buckets, "bucket_seconds": width,
        "times": [start + i * width for i in range(buckets)],
        "groups": list(out.values()),
    }


def _empty(name: str | None, buckets: int, *, other: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"group": name, "other": other, "total": dict.fromkeys(_METRICS, 0)}
    item["total"]["cost_usd"] = 0.0
    for metric in _METRICS:
        item[metric] = [0.0 if metric == "cost_usd" else 0] * buckets
    return item


async def latency(
    db: Database, principal: Principal, start: float, end: float, by: LatencyBy = "model", *, limit: int = 50,
) -> list[dict[str, Any]]:
    """Per group (the ``limit`` with most requests): requests, errors, and the 50th and 95th percentile of
    ``latency_ms`` over the successful requests (status < 400), linearly interpolated between the two nearest
    ranks (PostgreSQL's ``percentile_cont``); ``None`` for a group with no successful request."""
    where = _scope(principal, start, end)
    group = _group(by)
    ok = UsageRow.status < 400
    counts = (
        select(group.label("g"), func.count().label("requests"),
               func.sum(case((UsageRow.status >= 400, 1), else_=0)).label("errors"))
        .where(*where).group_by(_G).order_by(func.count().desc(), _G.asc()).limit(limit)
    )
    async with db.session() as s:
        ranked = (await s.execute(counts)).all()
        names = [r.g for r in ranked]
        found: dict[str, dict[float, float]] = {}
        if names:
            if db.dialect == "postgresql":
                found = await _percentiles_pg(s, group, [*where, ok, group.in_(names)])
            else:
                found = await _percentiles_ranked(s, group, [*where, ok, group.in_(names)])
    out = []
    for r in ranked:
        values = found.get(r.g, {})
        out.append({
            "group": r.g or None, "requests": int(r.requests), "errors": int(r.errors or 0),
            "p50_ms": _rounded(values.get(0.5)), "p95_ms": _rounded(values.get(0.95)),
        })
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def _percentiles_pg(s: Any, group: ColumnElement[str], where: list[Any]) -> dict[str, dict[float, float]]:
    cols = [func.percentile_cont(p).within_group(UsageRow.latency_ms.asc()).label(f"p{i}")
            for i, p in enumerate(PERCENTILES)]
    rows = (await s.execute(select(group.label("g"), *cols).where(*where).group_by(_G))).all()
    return {r.g: {p: float(getattr(r, f"p{i}")) for i, p in enumerate(PERCENTILES)} for r in rows}


def _position(p: float, n: int) -> float:
    """The 1-based rank of the ``p`` percentile among ``n`` sorted values, as ``percentile_cont`` places it."""
    return 1 + p * (n - 1)


async def _percentiles_ranked(s: Any, group: ColumnElement[str], where: list[Any]) -> dict[str, dict[float, float]]:
    """SQLite has no percentile function: rank each group's latencies (window functions) and fetch only the
    rows next to each percentile's position (a few per group, however many rows there are)."""
    ranked = select(
        group.label("g"), UsageRow.latency_ms.label("v"),
        func.row_number().over(partition_by=group, order_by=UsageRow.latency_ms.asc()).label("rn"),
        func.count().over(partition_by=group).label("n"),
    ).where(*where).subquery()
    # Within 1.5 of the position: both neighbours, whatever the float rounding of p * (n - 1) on either side.
    near = or_(*(func.abs(ranked.c.rn - (1 + p * (ranked.c.n - 1))) < 1.5 for p in PERCENTILES))
    rows = (await s.execute(select(ranked.c.g, ranked.c.v, ranked.c.rn, ranked.c.n).where(near))).all()
    by_group: dict[str, tuple[int, dict[int, float]]] = {}
    for r in rows:
        by_group.setdefault(r.g, (int(r.n), {}))[1][int(r.rn)] = float(r.v)
    out: dict[str, dict[float, float]] = {}
    for g, (n, values) in by_group.items():
        out[g] = {}
        for p in PERCENTILES:
            pos = _position(p, n)
            lo, hi = math.floor(pos), math.ceil(pos)
            out[g][p] = values[lo] + (values[hi] - values[lo]) * (pos - lo)
    return out


async def recent_errors(db: Database, principal: Principal, limit: int = 50) -> list[dict[str, Any]]:
    """The latest failed requests (status >= 400), newest first: when, which model and deployment, the status,
    how long it took, and (for admins, who see everyone's) the user and key. Usage rows hold no prompt text."""
    q = select(UsageRow.ts, UsageRow.request_id, UsageRow.model, UsageRow.deployment, UsageRow.status,
               UsageRow.latency_ms, UsageRow.user_id, UsageRow.key_id, UsageRow.stream).where(UsageRow.status >= 400)
    if not principal.is_admin:
        q = q.where(UsageRow.user_id == principal.user_id)
    q = q.order_by(UsageRow.ts.desc(), UsageRow.id.desc()).limit(limit)
    async with db.session() as s:
        rows = (await s.execute(q)).all()
    return [{
        "ts": r.ts, "request_id": r.request_id, "model": r.model, "deployment": r.deployment, "status": r.status,
        "latency_ms": round(float(r.latency_ms), 3), "user_id": r.user_id, "key_id": r.key_id,
        "stream": bool(r.stream),
    } for r in rows]
