"""Usage: every request recorded (buffered, never lost) and aggregated for reports.

``UsageWriter.record`` only appends to a buffer (no I/O on the request path); a background task
writes the buffer in batches. A failed write keeps the rows for the next attempt, and ``close``
writes whatever is left, so rows are delayed at worst, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy import Integer, case, func, insert, select

from ..clock import Clock
from ..store.db import Database
from ..store.tables import UsageRow
from .principal import Principal

__all__ = ["GroupBy", "UsageEvent", "UsageQuery", "UsageWriter"]

log = logging.getLogger("thinktank.usage")

GroupBy = Literal["model", "key", "user", "day", "deployment"]
SortBy = Literal["cost", "requests", "tokens", "group"]


@dataclass(frozen=True, slots=True)
class UsageEvent:
    request_id: str
    ts: float
    user_id: str | None
    key_id: str | None
    model: str
    deployment: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    status: int
    cache_hit: bool = False
    stream: bool = False


class UsageWriter:
    def __init__(self, db: Database, clock: Clock, *, interval: float = 0.5, batch: int = 2000) -> None:
        self._db = db
        self._clock = clock
        self._interval = interval
        self._batch = batch
        self._buffer: list[UsageEvent] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.written = 0

    def record(self, event: UsageEvent) -> None:
        self._buffer.append(event)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            try:
                await self.flush()
            except Exception:  # keep the rows, try again next round
                log.exception("writing usage rows failed; they stay buffered")

    async def flush(self) -> int:
        async with self._lock:
            written = 0
            while self._buffer:
                rows, self._buffer = self._buffer[: self._batch], self._buffer[self._batch:]
                try:
                    async with self._db.session() as s:
                        await s.execute(insert(UsageRow), [
                            {**asdict(e), "day": int(e.ts // 86400)} for e in rows
                        ])
                except BaseException:
                    self._buffer = rows + self._buffer
                    raise
                written += len(rows)
            self.written += written
            return written

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


_GROUP_COLUMNS = {
    "model": UsageRow.model,
    "key": UsageRow.key_id,
    "user": UsageRow.user_id,
    "day": UsageRow.day,
    "deployment": UsageRow.deployment,
}


class UsageQuery:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def aggregate(
        self, principal: Principal, group_by: GroupBy, start: float | None, end: float | None,
        sort: SortBy = "cost", limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Totals per group over ``[start, end)``; members only ever see their own usage."""
        col = _GROUP_COLUMNS[group_by]
        tokens = func.sum(UsageRow.prompt_tokens + UsageRow.completion_tokens)
        q = select(
            col.label("group"),
            func.count().label("requests"),
            func.sum(UsageRow.prompt_tokens).label("prompt_tokens"),
            func.sum(UsageRow.completion_tokens).label("completion_tokens"),
            func.sum(UsageRow.cost_usd).label("cost_usd"),
            func.avg(UsageRow.latency_ms).label("avg_latency_ms"),
            func.sum(case((UsageRow.status >= 400, 1), else_=0).cast(Integer)).label("errors"),
            func.sum(case((UsageRow.cache_hit, 1), else_=0).cast(Integer)).label("cache_hits"),
        ).group_by(col)
        if not principal.is_admin:
            q = q.where(UsageRow.user_id == principal.user_id)
        if start is not None:
            q = q.where(UsageRow.ts >= start)
        if end is not None:
            q = q.where(UsageRow.ts < end)
        orders: dict[str, Any] = {
            "cost": func.sum(UsageRow.cost_usd).desc(), "requests": func.count().desc(), "tokens": tokens.desc(),
            "group": col.asc(),
        }
        order = orders[sort]
        q = q.order_by(order).limit(limit)
        async with self._db.session() as s:
            rows = (await s.execute(q)).mappings().all()
        out = []
        for r in rows:
            item = dict(r)
            if group_by == "day" and item["group"] is not None:
                item["group"] = _day_iso(int(item["group"]))
            for k in ("prompt_tokens", "completion_tokens", "errors", "cache_hits"):
                item[k] = int(item[k] or 0)
            item["cost_usd"] = float(item["cost_usd"] or 0.0)
            item["avg_latency_ms"] = round(float(item["avg_latency_ms"] or 0.0), 3)
            out.append(item)
        return out


def _day_iso(day: int) -> str:
    import datetime as dt

    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()
