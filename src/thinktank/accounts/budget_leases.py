"""Keeping this process's budget leases alive, and handing back those of processes that died.

Every :class:`~thinktank.accounts.budgets.BudgetLedger` leases under a :class:`Holder` name of its own. The
store records each holder's leases with the time they run out (the store's clock: ``ttl`` seconds after the
last renewal). The :class:`LeaseKeeper` renews them every ``ttl / 5`` seconds and, every ``ttl / 2`` seconds,
hands back to their budgets the leases of holders that ran out. So a process killed while holding a lease
(kill -9, a crash, a lost host) leaves it unusable for at most ``ttl + ttl / 2`` seconds after its last
renewal: 15 s with the default ``ttl`` of 10 s (``THINKTANK_BUDGET_LEASE_TTL``), less if a budget that refuses
a request meanwhile reclaims at once (it does, at most once a second).

The other side: a process spends from its leases only until ``ttl - ttl / 5`` seconds after the start of its
last successful renewal (its monotonic clock; the hot path reads the wall clock, see ``serve_until``). Past
that (the store unreachable, the event loop stalled) its leases may have been reclaimed already: it writes
what it spent against them and hands them back, takes a new holder name and leases anew. So no process
spends a lease the store has given to another, as long as the store's clock does not jump by more than
``ttl / 5``. (Requests admitted before that, still under way, were held on the old leases: if those were
reclaimed meanwhile, their settles are charged all the same, and may take a budget past its limit.)
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
from collections.abc import Awaitable, Callable

from ..clock import Clock
from .budget_backends import BudgetStore, Holder

__all__ = ["DEFAULT_LEASE_TTL", "LeaseKeeper", "new_holder_id"]

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 10.0
"""Seconds a holder's leases outlive its last renewal."""

#: A budget that refuses a request reclaims expired leases at once, but at most this often (seconds).
RECLAIM_ON_REFUSAL_EVERY = 1.0


def new_holder_id() -> str:
    """``host:pid:random``: unique, and says which process it was to someone reading the table."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaseKeeper:
    """This ledger's holder name, how long its leases may be spent from (``live_until``, monotonic), and the
    background renewal and reclaiming (see the module). ``on_lapse(old)`` is awaited when the leases may have
    run out, after a new holder has been taken: it writes what was spent against ``old``'s leases and hands
    them back (the leases ``old`` still has are then handed back by the store too)."""

    def __init__(self, store: BudgetStore, clock: Clock, on_lapse: Callable[[Holder], Awaitable[None]], *,
                 ttl: float = DEFAULT_LEASE_TTL, holder_id: str | None = None, journal: str | None = None) -> None:
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"a lease ttl must be a positive number of seconds, not {ttl!r}")
        self._store = store
        self._clock = clock
        self._on_lapse = on_lapse
        self.ttl = ttl
        self.renew_every = ttl / 5
        self.margin = ttl / 5
        """Spending from the leases stops this long before they could run out (the store's clock may run ahead)."""
        self.reclaim_every = ttl / 2
        self._journal = journal
        self._holders = 0
        self.holder = Holder(holder_id or self._new_id(), ttl)
        self.live_until = -math.inf
        """Monotonic time until which the leases may be spent from."""
        self.serve_until = -math.inf
        """The same on the wall clock, which the reservation's hot path reads anyway (a second clock read there
        measured at 74 ns): a process paused or stalled sees it pass; a wall clock stepped back by x seconds
        would extend it by x, but every renewal (every ``renew_every`` seconds) sets it again."""
        self.used = False
        """The store knows this holder (it renewed or leased)."""
        self._renewed = False
        self._lock = asyncio.Lock()
        self._reclaimed_at = -math.inf

    @property
    def bound(self) -> float:
        """Seconds after a holder's last renewal by which its leases are back in their budgets (the background
        reclaim of some live process runs at least this often)."""
        return self.ttl + self.reclaim_every

    async def keep_alive(self) -> None:
        """Make the leases usable again (``live_until`` in the future): renew them, or, if they may have run
        out, give them up and take a new holder name."""
        async with self._lock:
            if self._clock.monotonic() < self.live_until and self._clock.time() < self.serve_until:
                return
            await self._renew()

    async def _renew(self) -> None:
        """Under the lock."""
        self.used = True
        started, wall = self._clock.monotonic(), self._clock.time()
        if not self._renewed or started < self.live_until:
            await self._store.renew(self.holder)
            if not self._renewed or self._clock.monotonic() < self.live_until:  # in time: nothing ran out
                self._renewed = True
                self._live_from(started, wall)
                return
        await self._new_holder()
        self._live_from(self._clock.monotonic(), self._clock.time())

    def _new_id(self) -> str:
        """A new holder name: ``<journal>/<n>`` for a process with a journal (whose replay settles what reclaiming
        its leases counted as spent), else :func:`new_holder_id`."""
        if self._journal is None:
            return new_holder_id()
        self._holders += 1
        return f"{self._journal}/{self._holders}"

    def _live_from(self, mono: float, wall: float) -> None:
        self.live_until = mono + self.ttl - self.margin
        self.serve_until = wall + self.ttl - self.margin

    async def _new_holder(self) -> None:
        old = self.holder
        self.holder = Holder(self._new_id(), self.ttl)  # from now on every lease is the new holder's
        log.warning("budget leases of %s were not renewed in time (%.0f s); handing them back and leasing as %s",
                    old.id, self.ttl - self.margin, self.holder.id)
        try:
            await self._on_lapse(old)
            await self._store.drop(old)
        except Exception:
            log.warning("handing back the budget leases of %s failed; they run out within %.0f s and are reclaimed",
                        old.id, self.bound, exc_info=True)

    async def reclaim_expired(self, now: float | None = None) -> float:
        """End every lease that ran out, counted as spent until its journal is replayed (``now``: the store's clock
        by default); the USD."""
        return await self._store.reclaim_expired(now)

    async def reclaim_on_refusal(self) -> bool:
        """A budget is about to refuse: reclaim expired leases first (at most once a second). True if some were."""
        mono = self._clock.monotonic()
        if mono - self._reclaimed_at < RECLAIM_ON_REFUSAL_EVERY:
            return False
        self._reclaimed_at = mono
        try:
            return await self._store.reclaim_expired() > 0
        except Exception:
            log.warning("reclaiming expired budget leases failed", exc_info=True)
            return False

    async def run(self) -> None:
        """Renew every ``renew_every`` seconds and reclaim every ``reclaim_every`` seconds (both at once first)."""
        next_renew = next_reclaim = self._clock.monotonic()
        while True:
            now = self._clock.monotonic()
            if now >= next_reclaim:
                next_reclaim = now + self.reclaim_every
                try:
                    back = await self._store.reclaim_expired()
                    if back > 0:
                        log.info("handed back $%.6f of budget leases whose processes stopped renewing them", back)
                except Exception:
                    log.warning("reclaiming expired budget leases failed", exc_info=True)
            if now >= next_renew:
                next_renew = now + self.renew_every
                try:
                    async with self._lock:
                        await self._renew()
                except Exception:
                    log.warning("renewing the budget leases of %s failed", self.holder.id, exc_info=True)
            await self._clock.sleep(max(min(next_renew, next_reclaim) - self._clock.monotonic(), 0.0))

    async def close(self) -> None:
        """The process stops (its leases were handed back): forget the holder in the store."""
        if self.used:
            try:
                await self._store.drop(self.holder)
            except Exception:
                log.warning("forgetting budget holder %s failed; it runs out by itself", self.holder.id,
                            exc_info=True)
