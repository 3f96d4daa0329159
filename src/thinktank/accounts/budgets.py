"""Budgets that cannot be overspent: reserve before a request, settle after it.

The store (SQL or Redis, see :mod:`.budget_backends`) only ever grants money that fits under the
limit. A :class:`BudgetLedger` leases a slice of each budget from the store and serves
reservations from that slice in memory, so the hot path rarely touches the store; spend is
flushed and idle leases handed back every ``flush_interval`` seconds. Lease = money set aside, so
whatever the processes hold, ``spent + leased <= limit`` holds in the store, and a request is
admitted only if its worst-case cost fits.

While the lease covers it, a reservation, a settle or a release is a few additions with no await
(nothing else can run in between on the event loop), even while a flush is being written: what a
write in flight will take away (spend recorded, lease handed back) is counted as gone already.
Only leasing more and writing to the store take the budget's lock.

Only a settle whose actual cost exceeds what was reserved can push a budget past its limit (the
money was spent; it is charged, never dropped; later requests are then refused). The router caps every
attempt's ``max_tokens`` at the answer its hold covers, so that takes an upstream that ignores
``max_tokens`` or a prompt that tokenizes to more than 1.5 times its estimate.

Each ledger leases under a holder name of its own, which it keeps renewing (:mod:`.budget_leases`); the
leases of a process that died are handed back by the others within ``ttl * 1.5`` seconds (15 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..clock import Clock
from ..errors import RateLimitError
from ..outages import OutageLog, unavailable
from .budget_backends import (
    EPSILON,
    BudgetSpec,
    BudgetStore,
    Holder,
    Period,
    Scope,
    SqlBudgetStore,
    period_key,
    period_reset_in,
)
from .budget_leases import DEFAULT_LEASE_TTL, LeaseKeeper
from .budget_redis import RedisBudgetStore

if TYPE_CHECKING:
    from .journal import Journal

__all__ = [
    "BudgetExceededError",
    "BudgetLedger",
    "BudgetSpec",
    "BudgetStore",
    "Holder",
    "Period",
    "RedisBudgetStore",
    "Reservation",
    "Scope",
    "SqlBudgetStore",
    "period_key",
    "period_reset_in",
]

log = logging.getLogger(__name__)

_PER = {"day": "per day", "month": "per month", "total": "in total"}


class BudgetExceededError(RateLimitError):
    """429: the request's worst-case cost does not fit in a budget; Retry-After = when it resets."""

    code = "budget_exceeded"

    def __init__(self, spec: BudgetSpec, *, amount: float, remaining: float, retry_after: float) -> None:
        limit = spec.limit_usd or 0.0
        remaining = max(remaining, 0.0)
        super().__init__(
            f"Budget exceeded: {spec.label} may spend ${limit:.2f} {_PER[spec.period]} and this request "
            f"could cost up to ${amount:.4f} (remaining ${remaining:.4f}).",
            retry_after=retry_after,
        )
        self.spec = spec
        self.amount = amount
        self.remaining = remaining


_BudgetId = tuple[str, str, str, str]  # scope, scope_id, period, period key


@dataclass(eq=False)
class _Budget:
    """This process's share of one budget in one period."""

    spec: BudgetSpec
    pkey: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    leased: float = 0.0
    """Leased from the store by this ledger (covers ``reserved`` and ``pending``)."""
    reserved: float = 0.0
    """Held by outstanding reservations."""
    pending: float = 0.0
    """Settled spend not yet written to the store."""
    committing: float = 0.0
    """Of ``pending``, what a store write in flight is recording."""
    returning: float = 0.0
    """Of ``leased``, what a store write in flight is handing back."""
    holds: int = 0
    """Outstanding reservations: flush never forgets an entry that has one."""
    users: int = 0
    """Coroutines working on this entry under its lock; flush forgets an entry only when none is."""
    touched: bool = False
    """Reserved from since the background flush last looked (its lease is then kept)."""
    committed_seq: int = 0
    """The journal's charges on this budget up to this position are in the store (the ledger's journal)."""

    @functools.cached_property
    def key(self) -> tuple[str, str, str]:
        """(scope, scope id, period key): how the journal names it."""
        return (self.spec.scope, self.spec.scope_id, self.pkey)

    @property
    def free(self) -> float:
        """What a new reservation may take: the lease left once the writes in flight are done."""
        return (self.leased - self.returning) - self.reserved - (self.pending - self.committing)


class Reservation:
    """Money set aside for one request in each of its budgets. Settle or release it exactly once."""

    __slots__ = ("_budgets", "amount", "budget_keys", "charged", "state")

    def __init__(self, amount: float, budgets: tuple[_Budget, ...], keys: list[tuple[str, str, str]]) -> None:
        self.amount = amount
        self._budgets = budgets
        self.budget_keys = keys
        """(scope, scope id, period key) of each budget it holds money in (how the journal names them)."""
        self.state: Literal["active", "settled", "released"] = "active"
        self.charged = 0.0

    @property
    def specs(self) -> tuple[BudgetSpec, ...]:
        return tuple(b.spec for b in self._budgets)

    def __repr__(self) -> str:
        return f"Reservation(amount={self.amount!r}, state={self.state!r}, budgets={len(self._budgets)})"


def _budget_id(spec: BudgetSpec, pkey: str) -> _BudgetId:
    return (spec.scope, spec.scope_id, spec.period, pkey)


class BudgetLedger:
    """The per-process fast path in front of a :class:`BudgetStore`.

    ``lease_fraction`` of a budget's limit is leased at a time (at least what a request needs);
    ``flush_interval`` is how often :meth:`start`'s background task writes spend and hands back
    idle leases. Other processes see this process's unspent lease as used until then. ``lease_ttl``:
    seconds the leases outlive the last renewal (see :mod:`.budget_leases`).
    """

    def __init__(self, store: BudgetStore, clock: Clock, *, lease_fraction: float = 0.05,
                 flush_interval: float = 1.0, lease_ttl: float = DEFAULT_LEASE_TTL,
                 holder_id: str | None = None, journal: Journal | None = None) -> None:
        if not 0 <= lease_fraction <= 1:
            raise ValueError("lease_fraction must be between 0 and 1")
        self.store = store
        self._store = store
        self._clock = clock
        self.journal = journal
        """Where each settle's charge line is (``thinktank.accounts.journal``): every write of spend carries the
        journal position it covers, and the holders are named after it."""
        self.keeper = LeaseKeeper(store, clock, self._lapsed, ttl=lease_ttl, holder_id=holder_id,
                                  journal=journal.owner if journal is not None else None)
        """This ledger's holder name and the renewal of its leases."""
        self._keeping: asyncio.Task[None] | None = None
        self._lease_fraction = lease_fraction
        self._flush_interval = flush_interval
        self._budgets: dict[_BudgetId, _Budget] = {}
        self._task: asyncio.Task[None] | None = None
        self._flushing: asyncio.Future[None] | None = None
        self._stray: set[asyncio.Future[object]] = set()
        self._closed = False
        self._outages = OutageLog(clock)
        self.listeners: list[Callable[[BudgetSpec, str, float], None]] = []
        """Told ``(spec, period key, spent)`` after each write of spend to the store, with what the store holds
        as spent after it (every process's writes): budget alerts, with no query of their own."""
        self.refusal_listeners: list[Callable[[BudgetSpec, str, float], None]] = []
        """Told ``(spec, period key, spent)`` when the budget refuses a reservation: it is exhausted for what is
        asked of it, usually before its spend reaches the limit (a request is admitted only if its worst case
        fits)."""

    # -- helpers --------------------------------------------------------------------------------

    def _entry(self, spec: BudgetSpec, pkey: str) -> _Budget:
        bid = _budget_id(spec, pkey)
        budget = self._budgets.get(bid)
        if budget is None:
            budget = self._budgets[bid] = _Budget(spec, pkey)
        return budget

    @contextlib.asynccontextmanager
    async def _using(self, budget: _Budget) -> AsyncIterator[_Budget]:
        budget.users += 1  # before any await: flush must not forget an entry someone waits on
        try:
            async with budget.lock:
                yield budget
        finally:
            budget.users -= 1

    async def _take(self, budget: _Budget, amount: float) -> bool:
        """Under the budget's lock: set ``amount`` aside, leasing more from the store if needed."""
        if amount <= 0:
            budget.reserved += amount
            return True
        limit = budget.spec.limit_usd or 0.0
        reclaimed = False
        while amount > budget.free + EPSILON:
            shortfall = amount - budget.free
            want = max(shortfall, limit * self._lease_fraction)
            for ask in (want, shortfall) if want > shortfall else (shortfall,):
                if await self._lease(budget, ask):
                    break
            else:
                # Before refusing: leases of processes that died may be due back.
                if reclaimed or not await self.keeper.reclaim_on_refusal():
                    return False
                reclaimed = True
            # Reservations served from the lease meanwhile may have taken some of it: look again.
        budget.reserved += amount
        return True

    async def _lease(self, budget: _Budget, ask: float) -> bool:
        """Lease ``ask`` from the store. If the caller is cancelled meanwhile, a grant still counts."""
        holder = self.keeper.holder
        task = asyncio.ensure_future(self._store.acquire(budget.spec, budget.pkey, ask, holder))
        try:
            granted = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(functools.partial(self._late_lease, budget, ask, holder))
            raise
        if granted and holder is not self.keeper.holder:
            # Granted to a holder given up meanwhile (its leases may run out): back, and lease as the new one.
            self._background(self._store.commit(budget.spec, budget.pkey, 0.0, ask, holder))
            return await self._lease(budget, ask)
        if granted:
            budget.leased += ask
        return granted

    def _late_lease(self, budget: _Budget, ask: float, holder: Holder, task: asyncio.Future[bool]) -> None:
        if task.cancelled() or task.exception() is not None or not task.result():
            return
        if self._closed or holder is not self.keeper.holder:  # nobody will flush it: hand it straight back
            self._background(self._store.commit(budget.spec, budget.pkey, 0.0, ask, holder))
            return
        self._budgets.setdefault(_budget_id(budget.spec, budget.pkey), budget).leased += ask

    def _background(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._stray.add(task)
        task.add_done_callback(self._stray.discard)

    async def _exceeded(self, budget: _Budget, amount: float, now: float) -> BudgetExceededError:
        try:
            remaining, spent = await self._remaining(budget.spec, budget.pkey)
        except Exception:  # the message is best effort; the refusal is not
            log.exception("reading %s for the budget message failed", budget.spec.label)
            remaining, spent = 0.0, None
        if spent is not None:
            for listener in self.refusal_listeners:
                listener(budget.spec, budget.pkey, spent)
        return BudgetExceededError(budget.spec, amount=amount, remaining=remaining,
                                   retry_after=period_reset_in(budget.spec.period, now))

    async def _remaining(self, spec: BudgetSpec, pkey: str) -> tuple[float, float]:
        """What is left to lease of the budget, and its spend as the store has it."""
        _, spent, leased = await self._store.read(spec, pkey)
        own = self._budgets.get(_budget_id(spec, pkey))
        free_here = max(own.free, 0.0) if own is not None else 0.0
        return max((spec.limit_usd or 0.0) - spent - leased + free_here, 0.0), spent

    @staticmethod
    def _give_back(budgets: Sequence[_Budget], amount: float) -> None:
        for budget in budgets:
            budget.reserved -= amount
            budget.holds -= 1

    # -- the API --------------------------------------------------------------------------------

    async def reserve(self, specs: Sequence[BudgetSpec], amount: float) -> Reservation:
        """Set ``amount`` aside in every budget of ``specs``, all or nothing.

        Raises :class:`BudgetExceededError` naming the first budget it does not fit in; what was
        already set aside in the others is released. Unlimited specs are skipped; an amount of 0
        never touches the store.
        """
        if not (amount >= 0 and amount != float("inf")):
            raise ValueError(f"a reservation must be a finite amount >= 0, not {amount!r}")
        if self._closed:
            raise RuntimeError("the budget ledger is closed")
        now = self._clock.time()
        keeper = self.keeper
        live = now < keeper.serve_until  # the leases may be spent from
        done: list[_Budget] = []
        keys: list[tuple[str, str, str]] = []
        try:
            for spec in specs:
                if spec.limit_usd is None:
                    continue
                budget = self._entry(spec, period_key(spec.period, now))
                budget.spec = spec  # the newest limit wins
                budget.touched = True
                if amount <= budget.free + EPSILON and live:
                    budget.reserved += amount  # the lease covers it: no await, nothing in between
                    budget.holds += 1
                else:
                    if amount > 0 and not live:
                        await keeper.keep_alive()  # not under a budget's lock: a new holder flushes them all
                        live = True
                        budget = self._entry(spec, budget.pkey)  # which may have forgotten this one
                        budget.spec, budget.touched = spec, True
                    async with self._using(budget):
                        if not await self._take(budget, amount):
                            raise await self._exceeded(budget, amount, now)
                        budget.holds += 1
                done.append(budget)
                keys.append(budget.key)
        except BaseException:
            self._give_back(done, amount)
            raise
        return Reservation(amount, tuple(done), keys)

    async def settle(self, reservation: Reservation, actual_cost: float) -> None:
        """Free the reservation and charge ``actual_cost`` to each of its budgets (once).

        A cost above the reservation is charged in full: more lease is taken if the budget has
        it, and the spend is recorded even if it has not.
        """
        if not (actual_cost >= 0 and actual_cost != float("inf")):
            raise ValueError(f"a cost must be a finite amount >= 0, not {actual_cost!r}")
        if reservation.state != "active":
            return
        reservation.state = "settled"
        reservation.charged = actual_cost
        amount = reservation.amount
        journal = self.journal
        for budget in reservation._budgets:
            if journal is not None and budget.pending <= EPSILON and not budget.committing:
                budget.committed_seq = journal.seq - 1  # nothing unwritten before this settle's charge line
            budget.reserved -= amount
            budget.holds -= 1
            budget.pending += actual_cost
            if self._closed or -budget.free > EPSILON:
                await self._after_settle(budget)

    async def _after_settle(self, budget: _Budget) -> None:
        """A settle that overran the lease (lease the overrun) or came after close (write it now)."""
        async with self._using(budget):
            deficit = -budget.free
            if deficit > EPSILON and not self._closed:
                try:
                    await self._lease(budget, deficit)
                except Exception:
                    log.exception("leasing the overrun of %s failed; it is charged at flush", budget.spec.label)
            if self._closed:
                await self._flush_one(budget, return_all=True)

    async def release(self, reservation: Reservation) -> None:
        """Free the reservation, charging nothing (the request failed or never ran). Idempotent."""
        if reservation.state != "active":
            return
        reservation.state = "released"
        self._give_back(reservation._budgets, reservation.amount)
        if self._closed:
            for budget in reservation._budgets:
                async with self._using(budget):
                    await self._flush_one(budget, return_all=True)

    async def remaining(self, spec: BudgetSpec) -> float:
        """What a new request could still reserve in ``spec``'s current period (inf: unlimited)."""
        if spec.limit_usd is None:
            return float("inf")
        return (await self._remaining(spec, period_key(spec.period, self._clock.time())))[0]

    async def standing(self, spec: BudgetSpec) -> tuple[float, float, float]:
        """``spec``'s current period as (spent, remaining, available): spent as the store has it plus what this
        process settled and has not written yet; remaining = limit - spent (at least 0); available = what a new
        request could reserve now (leases other processes hold are not available)."""
        pkey = period_key(spec.period, self._clock.time())
        _, spent, _ = await self._store.read(spec, pkey)
        own = self._budgets.get(_budget_id(spec, pkey))
        if own is not None:
            spent += max(own.pending - own.committing, 0.0)
        limit = spec.limit_usd or 0.0
        return spent, max(limit - spent, 0.0), (await self._remaining(spec, pkey))[0]

    # -- flushing -------------------------------------------------------------------------------

    async def _flush_one(self, budget: _Budget, *, return_all: bool, keep_used: bool = False,
                         holder: Holder | None = None) -> None:
        """Under the budget's lock: write pending spend, hand back the lease it used and idle lease.

        ``keep_used``: a budget reserved from since the last such flush keeps its lease (the
        background flush: a busy budget should not go back to the store for a lease each round).
        """
        spent = budget.pending - budget.committing  # what a write still in flight records is not ours
        leased = budget.leased - budget.returning
        idle = budget.reserved <= EPSILON and not (keep_used and budget.touched)
        if keep_used:
            budget.touched = False
        give = leased if return_all or idle else min(spent, leased - budget.reserved)
        spent, give = max(spent, 0.0), max(give, 0.0)
        journal = self.journal
        upto = journal.seq if journal is not None else 0  # every charge line settled so far is in ``spent``
        if spent <= 0 and give <= 0:
            if budget.pending <= EPSILON and not budget.committing:
                budget.committed_seq = upto
            return
        # Counted as done from now on: reservations served meanwhile see the lease that will be left.
        budget.committing += spent
        budget.returning += give
        mark = (journal.owner, upto) if journal is not None else None
        task: asyncio.Future[float | None] = asyncio.ensure_future(
            self._store.commit(budget.spec, budget.pkey, spent, give, holder or self.keeper.holder, mark))
        apply = functools.partial(self._committed, budget, spent, give, upto)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(apply)  # if the store took it, so must we
            raise
        apply(task)

    def _committed(self, budget: _Budget, spent: float, give: float, upto: int,
                   task: asyncio.Future[float | None]) -> None:
        budget.committing -= spent
        budget.returning -= give
        if abs(budget.committing) <= EPSILON:
            budget.committing = 0.0
        if abs(budget.returning) <= EPSILON:
            budget.returning = 0.0
        if task.cancelled() or task.exception() is not None:
            return
        budget.committed_seq = max(budget.committed_seq, upto)
        budget.pending -= spent
        budget.leased -= give
        if abs(budget.leased) <= EPSILON:
            budget.leased = 0.0
        if abs(budget.pending) <= EPSILON:
            budget.pending = 0.0
        total = task.result()
        if spent > 0 and total is not None:
            for listener in self.listeners:
                try:
                    listener(budget.spec, budget.pkey, total)
                except Exception:
                    log.exception("a budget listener failed")

    async def flush(self, *, return_all: bool = False, keep_used: bool = False, holder: Holder | None = None
                    ) -> None:
        """Write accumulated spend to the store and hand back leases no reservation is using.

        ``return_all`` hands back every lease, even those backing outstanding reservations (their
        settles are then written by later flushes); ``keep_used`` keeps the lease of a budget
        reserved from since the last ``keep_used`` flush (the background flush does this). Every
        budget is tried; the first failure is raised after the others were flushed. ``holder``: the
        holder the leases are written for (default: this ledger's).
        """
        error: Exception | None = None
        for bid, budget in list(self._budgets.items()):
            async with self._using(budget):
                try:
                    await self._flush_one(budget, return_all=return_all, keep_used=keep_used, holder=holder)
                except Exception as exc:
                    error = error or exc
                    continue
                idle = (budget.leased == 0 and budget.pending == 0 and abs(budget.reserved) <= EPSILON
                        and budget.holds == 0 and budget.committing == 0 and budget.returning == 0)
                if idle and budget.users == 1 and self._budgets.get(bid) is budget:
                    del self._budgets[bid]  # nobody refers to it: forget it (old periods go this way)
        if error is not None:
            raise error

    def committed_seq(self) -> int:
        """The journal's charge lines up to this position are all in the store (0 without a journal)."""
        journal = self.journal
        if journal is None:
            return 0
        low = journal.seq
        for budget in self._budgets.values():
            if budget.pending > EPSILON or budget.committing:
                low = min(low, budget.committed_seq)
        return low

    def settled(self, key: tuple[str, str, str]) -> bool:
        """Nothing of budget ``key`` (scope, scope id, period key) is unwritten or held here."""
        for budget in self._budgets.values():
            if budget.key == key:
                return budget.pending <= EPSILON and not budget.committing and budget.holds <= 0
        return True

    async def _lapsed(self, old: Holder) -> None:
        """The leases of ``old`` may have run out (the keeper took a new holder): write what was spent against
        them and hand them back, all of them (those backing reservations still out too: their settles lease
        anew)."""
        await self.flush(return_all=True, holder=old)

    async def reclaim_expired(self, now: float | None = None) -> float:
        """Hand the leases of every process that stopped renewing them (died) back to their budgets: the USD.
        ``now`` defaults to the store's own clock. :meth:`start` does this every ``lease_ttl / 2`` seconds; a
        job queue may call it too."""
        return await self.keeper.reclaim_expired(now)

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._flush_interval)
            self._flushing = asyncio.ensure_future(self.flush(keep_used=True))
            try:
                await asyncio.shield(self._flushing)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                down = unavailable(exc)
                if down is None:
                    log.exception("flushing budgets failed; retrying in %ss", self._flush_interval)
                else:  # the store (Redis or the database) is down: said once in a while
                    self._outages.failed(down, "flushing budgets")

    def start(self) -> None:
        """Flush every ``flush_interval`` seconds (on the injected clock) in the background until :meth:`close`,
        renew this process's leases and reclaim those of processes that died (:mod:`.budget_leases`)."""
        if self._task is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name="budget-flush")
            self._keeping = loop.create_task(self.keeper.run(), name="budget-leases")

    async def close(self) -> None:
        """Stop the background flush, write all spend and hand back every lease.

        Reservations still outstanding may be settled or released afterwards; each is then written
        to the store at once.
        """
        self._closed = True
        for task in (self._task, self._keeping):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._keeping = None
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing  # a flush the cancel interrupted finishes first
            self._flushing = None
        await self.flush(return_all=True)
        await self.keeper.close()
