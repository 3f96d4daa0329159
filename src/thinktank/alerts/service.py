"""Alerts: a budget crossing a threshold, a deployment starting to cool down.

Nothing here runs on a request's path. Budget alerts listen to the budget ledger's writes (``BudgetLedger.
listeners``): each write of spend to the store already returns the budget's spent as the store has it, every
worker's writes included, so seeing a threshold crossed costs a few comparisons in memory and no query. The
ledger writes every ``flush_interval`` (a second), so an alert starts at most that long after the spend that
crossed the threshold was settled (plus the worker's own flush, which also runs at shutdown). Cooldown alerts
listen to the router's :class:`~thinktank.gateway.health.Cooldowns`.

An alert seen is claimed (:mod:`.claims`: a row inserted or a Redis key set, atomically) and sent only by the
worker whose claim succeeds: once per (budget, threshold, period) across workers and restarts, and at most once
per deployment per ``cooldown_interval``. Delivery runs in tasks of its own, at most ``max_pending`` at a time;
it never blocks or fails a request. The claim comes before the delivery: a worker that dies between them loses
that alert (at most once, never twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..accounts.budget_backends import EPSILON, BudgetSpec, period_reset_in
from ..clock import Clock
from ..gateway.health import Cooldowns
from .claims import Claims, RedisClaims, SqlClaims
from .config import AlertsConfig, resolve_env
from .delivery import EmailSender, Sender, WebhookSender
from .events import Alert, budget_alert, cooldown_alert

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..accounts.budgets import BudgetLedger
    from ..store.db import Database

__all__ = ["BUDGET_SCOPES", "Alerts", "build_alerts"]

log = logging.getLogger("thinktank.alerts")

BUDGET_SCOPES = frozenset({"key", "user", "team", "global"})
"""The budgets alerted on (a run's ``max_cost_usd`` is the caller's own cap, not an operator's budget)."""

CLAIM_AFTER_PERIOD = 86400.0
"""A budget claim is kept this long after its period ended (a late write of that period's spend sends nothing)."""

_SEEN_MAX = 100_000
"""Thresholds remembered as claimed in this process; past it, all are forgotten (the claims still hold)."""


class Alerts:
    """Watches budgets and cooldowns; claims and sends the alerts. ``close`` waits a little for deliveries."""

    def __init__(self, config: AlertsConfig, claims: Claims, senders: Sequence[Sender], clock: Clock) -> None:
        self._config = config
        self._claims = claims
        self._senders = list(senders)
        self._clock = clock
        self._thresholds = tuple(config.budget_thresholds)
        self._seen: set[tuple[str, str, str, float]] = set()
        """(scope, scope id, period key, threshold) this process has claimed, or found claimed."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- what is watched ------------------------------------------------------------------------

    def watch(self, ledger: BudgetLedger, cooldowns: Cooldowns | None = None, allowed_fails: int = 1) -> None:
        """Listen to ``ledger``'s writes and to ``cooldowns`` (which cools a deployment down after
        ``allowed_fails`` failures in a row)."""
        if self._thresholds:
            ledger.listeners.append(self.budget_written)
            ledger.refusal_listeners.append(self.budget_refused)
        if cooldowns is not None and self._config.cooldowns:
            def started(deployment: str, seconds: float) -> None:
                self.cooldown_started(deployment, seconds, cooldowns.failures(deployment), allowed_fails)

            cooldowns.listeners.append(started)

    def budget_written(self, spec: BudgetSpec, period_key: str, spent: float) -> None:
        """The ledger wrote spend: ``spent`` is the budget's total in the store now. No await: a few comparisons."""
        self._check(spec, period_key, spent, refused=False)

    def budget_refused(self, spec: BudgetSpec, period_key: str, spent: float) -> None:
        """The budget refused a request: it is exhausted for what is asked of it, so its last threshold counts as
        reached (a budget refuses before its spend reaches the limit, since a request must fit its worst case)."""
        self._check(spec, period_key, spent, refused=True)

    def _check(self, spec: BudgetSpec, period_key: str, spent: float, *, refused: bool) -> None:
        limit = spec.limit_usd
        if limit is None or limit <= 0 or spec.scope not in BUDGET_SCOPES:
            return
        crossed = []
        last = self._thresholds[-1]
        for threshold in self._thresholds:
            if spent + EPSILON < threshold * limit and not (refused and threshold == last):
                continue
            seen = (spec.scope, spec.scope_id, period_key, threshold)
            if seen not in self._seen:
                crossed.append(threshold)
        if not crossed:
            return
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        told = {(spec.scope, spec.scope_id, period_key, t) for t in crossed}
        self._seen |= told
        if not self._spawn(self._budget(spec, period_key, spent, crossed, refused=refused)):
            self._seen -= told  # dropped: the next write tries again

    def cooldown_started(self, deployment: str, seconds: float, failures: int, allowed_fails: int) -> None:
        """A deployment starts a cooldown after ``failures`` in a row. Only the first cooldown of an episode (the
        failures since its last success) counts: the one at ``allowed_fails`` failures."""
        if failures > allowed_fails:
            return  # the same episode going on (a failure after a cooldown cools it down again)
        self._spawn(self._cooldown(deployment, seconds, failures))

    # -- claiming and sending -------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run ``work`` in a task of its own; False if it was dropped (closed, or too many under way)."""
        if self._closed or len(self._tasks) >= self._config.max_pending:
            work.close()
            log.warning("an alert was dropped: %s", "alerts are closed" if self._closed else
                        f"{len(self._tasks)} are being delivered already (alerts.max_pending)")
            return False
        task = asyncio.get_running_loop().create_task(work, name="alert")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _budget_until(self, spec: BudgetSpec) -> float | None:
        if spec.period == "total":
            return None
        now = self._clock.time()
        return now + period_reset_in(spec.period, now) + CLAIM_AFTER_PERIOD

    async def _budget(
        self, spec: BudgetSpec, period_key: str, spent: float, crossed: list[float], *, refused: bool = False,
    ) -> None:
        for threshold in crossed:  # in order: 50 % is told before 80 %
            key = f"budget:{spec.scope}:{spec.scope_id}:{period_key}:{threshold:g}"
            try:
                if not await self._claims.claim(key, self._budget_until(spec)):
                    continue  # another worker (or this one before a restart) has sent it
            except Exception:
                self._seen.discard((spec.scope, spec.scope_id, period_key, threshold))  # the next write tries again
                log.exception("claiming a budget alert failed")
                continue
            reached = spent + EPSILON >= threshold * (spec.limit_usd or 0.0)
            await self._send(budget_alert(spec, period_key, threshold, spent, self._clock.time(),
                                          refused=refused and not reached))

    async def _cooldown(self, deployment: str, seconds: float, failures: int) -> None:
        until = self._clock.time() + self._config.cooldown_interval
        try:
            if not await self._claims.claim(f"cooldown:{deployment}", until):
                return
        except Exception:
            log.exception("claiming a cooldown alert failed")
            return
        await self._send(cooldown_alert(deployment, seconds, failures, self._clock.time()))

    async def _send(self, alert: Alert) -> None:
        log.info("alert %s: %s", alert.id, alert.summary)
        results = await asyncio.gather(*(s.send(alert) for s in self._senders), return_exceptions=True)
        for sender, result in zip(self._senders, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("%s alert %s: %s", sender.name, alert.id, type(result).__name__)

    # -- lifecycle ------------------------------------------------------------------------------

    async def idle(self) -> None:
        """Wait until every alert seen so far is claimed and delivered (or given up)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self, grace: float = 5.0) -> None:
        """Give deliveries under way ``grace`` seconds (real time) to finish, then stop them; close the senders."""
        self._closed = True
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if pending:
                log.warning("%d alerts were still being delivered at shutdown and were given up", len(pending))
        for sender in self._senders:
            await sender.close()


def build_alerts(
    config: AlertsConfig, clock: Clock, *, db: Database, redis: Redis | None = None,
    environ: Mapping[str, str] | None = None,
) -> Alerts:
    """Alerts as configured, their secrets read from the environment now (a variable not set: ConfigError).
    Claims live in Redis when the budgets do (``redis``), else in the database."""
    senders: list[Sender] = []
    if config.webhook is not None:
        secret = resolve_env("alerts: webhook: secret_env", config.webhook.secret_env, environ)
        senders.append(WebhookSender(config.webhook, secret, clock))
    if config.email is not None:
        password = None
        if config.email.password_env is not None:
            password = resolve_env("alerts: email: password_env", config.email.password_env, environ)
        senders.append(EmailSender(config.email, password, clock))
    claims: Claims = RedisClaims(redis, clock) if redis is not None else SqlClaims(db, clock)
    return Alerts(config, claims, senders, clock)
