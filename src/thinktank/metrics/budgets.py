"""Budget gauges by owner type (key, user, team, global), read at scrape time.

Not per request: one aggregate query over the ``budgets`` table when a scrape comes (at most every
``max_age`` seconds; a scrape in between gets the figures of the last one). It covers the budgets that spent
or leased something in their current period (a budget's row appears with its first hold of the period).
Run budgets (``max_cost_usd``) are left out: they live as long as their run.

Only the SQL budget store: with Redis (``THINKTANK_REDIS_URL``) the budgets live in Redis hashes that only a
scan of the keyspace could add up, which is not cheap, so these gauges are not exported there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import NamedTuple

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import case, func, select

from ..accounts.budget_backends import period_key
from ..clock import Clock
from ..store.db import Database
from ..store.tables import BudgetRow

__all__ = ["BudgetGauges"]

log = logging.getLogger(__name__)


class _Scope(NamedTuple):
    scope: str
    budgets: int
    limit: float
    remaining: float
    lowest_ratio: float


class BudgetGauges:
    """A prometheus_client collector: :meth:`refresh` (async, before the scrape) reads, :meth:`collect` yields."""

    def __init__(self, db: Database, clock: Clock, *, max_age: float = 10.0) -> None:
        self._db = db
        self._clock = clock
        self._max_age = max_age
        self._read_at: float | None = None
        self._scopes: list[_Scope] = []

    async def refresh(self) -> None:
        """Read the budgets again unless the last read is recent; a failure keeps the last figures."""
        now = self._clock.monotonic()
        if self._read_at is not None and now - self._read_at < self._max_age:
            return
        self._read_at = now
        wall = self._clock.time()
        limit, spent = BudgetRow.limit_usd, BudgetRow.spent_usd
        remaining = case((limit > spent, limit - spent), else_=0.0)
        ratio = case((limit > 0, remaining / limit), else_=0.0)
        stmt = (
            select(BudgetRow.scope, func.count(), func.sum(limit), func.sum(remaining), func.min(ratio))
            .where(BudgetRow.scope != "run",
                   BudgetRow.period.in_([period_key("day", wall), period_key("month", wall), "total"]))
            .group_by(BudgetRow.scope)
        )
        try:
            async with self._db.session() as session:
                rows = (await session.execute(stmt)).all()
        except Exception:  # the scrape goes on without fresh budget figures
            log.warning("reading the budgets for /metrics failed", exc_info=True)
            return
        self._scopes = [_Scope(str(r[0]), int(r[1]), float(r[2] or 0.0), float(r[3] or 0.0), float(r[4] or 0.0))
                        for r in rows]

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        count = GaugeMetricFamily("thinktank_budgets_active", "Budgets with spend or holds in their current "
                                  "period, by owner type.", labels=["scope"])
        limit = GaugeMetricFamily("thinktank_budget_limit_usd", "Sum of the limits of those budgets (USD).",
                                  labels=["scope"])
        remaining = GaugeMetricFamily("thinktank_budget_remaining_usd", "Sum of what those budgets have left in "
                                      "their period (limit - spent, USD).", labels=["scope"])
        lowest = GaugeMetricFamily("thinktank_budget_remaining_ratio_min", "The smallest share of its limit any "
                                   "of those budgets has left (0: one is exhausted).", labels=["scope"])
        for s in self._scopes:
            count.add_metric([s.scope], s.budgets)
            limit.add_metric([s.scope], s.limit)
            remaining.add_metric([s.scope], s.remaining)
            lowest.add_metric([s.scope], s.lowest_ratio)
        yield from (count, limit, remaining, lowest)
