"""Budget leases of a process that died: per-holder leases, renewal, reclaiming (a dead holder's lease counts as
spent until its journal's replay gives back what it did not spend), on SQLite, PostgreSQL and Redis (the
``backend`` fixture). Expiry is the store's own clock: a test that wants a lease expired asks
``reclaim_expired`` for a time past it instead of waiting, or gives the holder a short ttl and waits for it
with a deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from thinktank.accounts.budgets import BudgetExceededError, BudgetLedger, Holder, period_key

from ..fakes.clock import FakeClock
from .conftest import TOL, Backend, spec


class TickingClock(FakeClock):
    """Sleeps really (briefly) without moving time: background loops run, and time moves only when told."""

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0.005)


def later(seconds: float) -> float:
    """A time ``seconds`` from now (the stores' clocks are this machine's)."""
    return time.time() + seconds


async def test_a_dead_ledgers_lease_is_reclaimed_as_spent_and_its_journal_gives_back_the_rest(backend: Backend) -> None:
    s, pk = spec(1.0), period_key("day", backend.clock.time())
    dead = BudgetLedger(backend.store, backend.clock, lease_fraction=0.5, lease_ttl=10, holder_id="p-1-ab/1")
    await dead.reserve([s], 0.1)  # leases 0.5, then "dies": never settles, flushes or closes
    assert (await backend.check_invariant(s))[2] == pytest.approx(0.5)
    alive = BudgetLedger(backend.other_store(), backend.clock, lease_ttl=10)
    with pytest.raises(BudgetExceededError):  # only 0.5 is free while the dead lease counts
        await alive.reserve([s], 0.6)
    assert await alive.reclaim_expired() == 0.0  # not run out yet (the store's clock)
    assert (await backend.check_invariant(s))[2] == pytest.approx(0.5)
    assert await alive.reclaim_expired(later(11)) == pytest.approx(0.5)  # 11 s on: it has
    # It may have spent all of it: counted as spent, against its journal ("p-1-ab"), never beyond the limit.
    assert (await backend.check_invariant(s))[1:] == pytest.approx((0.5, 0.0), abs=TOL)
    with pytest.raises(BudgetExceededError):
        await alive.reserve([s], 0.6)
    # Its journal's replay says it spent nothing (see test_journal_budgets.py): all of it comes back.
    assert await backend.store.journal_budgets("p-1-ab") == {("key", "k1", pk): 0}
    assert await backend.store.settle_journal("p-1-ab", ("key", "k1", pk), 0.0, 0, 3) == pytest.approx(-0.5)
    everything = await alive.reserve([s], 1.0)  # the whole budget
    await alive.settle(everything, 1.0)
    await alive.close()
    assert await backend.read(s) == pytest.approx((1.0, 1.0, 0.0), abs=TOL)


async def test_reclaiming_takes_only_the_expired_holders_lease(backend: Backend) -> None:
    s, pk = spec(1.0), period_key("day", backend.clock.time())
    short, long = Holder("short-lived", 1.0), Holder("long-lived", 60.0)
    assert await backend.store.acquire(s, pk, 0.3, short)
    assert await backend.store.acquire(s, pk, 0.2, long)
    assert await backend.store.acquire(s, pk, 0.1)  # a lease of no holder (an older version's): never reclaimed
    assert await backend.store.reclaim_expired(later(5)) == pytest.approx(0.3)
    assert (await backend.check_invariant(s))[2] == pytest.approx(0.3)
    assert await backend.store.reclaim_expired(later(5)) == 0.0  # once
    assert await backend.store.drop(long) == pytest.approx(0.2)  # given up: back at once
    assert (await backend.check_invariant(s))[2] == pytest.approx(0.1)


async def test_a_holder_never_hands_back_more_than_it_holds(backend: Backend) -> None:
    s, pk = spec(1.0), period_key("day", backend.clock.time())
    a, b = Holder("a", 60.0), Holder("b", 60.0)
    assert await backend.store.acquire(s, pk, 0.3, a)
    assert await backend.store.acquire(s, pk, 0.2, b)
    assert await backend.store.commit(s, pk, 0.1, 0.5, a) == pytest.approx(0.1)  # a believes it held 0.5
    assert (await backend.check_invariant(s))[1:] == pytest.approx((0.1, 0.2))  # b's lease is untouched
    assert await backend.store.commit(s, pk, 0.0, 0.05, b) == pytest.approx(0.1)
    assert await backend.store.drop(b) == pytest.approx(0.15)
    assert await backend.store.drop(a) == 0.0
    assert (await backend.check_invariant(s))[1:] == pytest.approx((0.1, 0.0), abs=TOL)


async def test_renewing_keeps_a_lease_and_stopping_lets_it_run_out(backend: Backend) -> None:
    s, pk = spec(1.0), period_key("day", backend.clock.time())
    holder = Holder("renewing", 0.5)
    assert await backend.store.acquire(s, pk, 0.4, holder)
    for _ in range(8):  # 1.2 s of renewals every 0.15 s: past the ttl, still held
        await asyncio.sleep(0.15)
        await backend.store.renew(holder)
        assert await backend.store.reclaim_expired() == 0.0
    assert (await backend.check_invariant(s))[2] == pytest.approx(0.4)
    deadline = time.monotonic() + 10
    back = 0.0
    while back == 0.0 and time.monotonic() < deadline:  # no more renewals: it runs out
        await asyncio.sleep(0.1)
        back = await backend.store.reclaim_expired()
    assert back == pytest.approx(0.4)
    assert (await backend.check_invariant(s))[2] == pytest.approx(0.0, abs=TOL)


async def test_a_ledger_whose_leases_may_have_run_out_writes_its_spend_and_leases_anew(backend: Backend) -> None:
    s = spec(1.0)
    ledger = BudgetLedger(backend.store, backend.clock, lease_fraction=0.5, lease_ttl=10)
    first = ledger.keeper.holder
    r = await ledger.reserve([s], 0.1)
    await ledger.settle(r, 0.1)  # spent, not written yet
    outstanding = await ledger.reserve([s], 0.2)  # a request under way
    backend.clock.advance(9)  # no renewal for 9 s: past ttl - ttl/5 its leases may not be spent from
    r = await ledger.reserve([s], 0.1)
    assert ledger.keeper.holder != first
    # The old holder's spend was written and its lease handed back; the new one leased afresh (for the
    # outstanding request too, whose hold the old lease no longer backs).
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(0.1) and leased == pytest.approx(0.5)
    assert await backend.store.drop(first) == 0.0  # nothing left under the old name
    await ledger.settle(r, 0.1)
    await ledger.settle(outstanding, 0.2)
    await ledger.close()
    assert await backend.read(s) == pytest.approx((1.0, 0.4, 0.0), abs=TOL)


async def test_a_ledger_renews_in_the_background_and_close_forgets_its_holder(backend: Backend) -> None:
    s = spec(10.0)
    clock = TickingClock(backend.clock.time())
    ledger = BudgetLedger(backend.store, clock, lease_ttl=10)
    ledger.start()  # renews now and every 2 s, reclaims every 5 s
    r = await ledger.reserve([s], 0.3)
    assert ledger.keeper.used
    assert await backend.store.reclaim_expired(later(5)) == 0.0
    await ledger.settle(r, 0.3)
    await ledger.close()
    assert await backend.store.drop(ledger.keeper.holder) == 0.0
    assert await backend.read(s) == pytest.approx((10.0, 0.3, 0.0), abs=TOL)


async def test_a_refused_reservation_reclaims_expired_leases_first(backend: Backend) -> None:
    s, pk = spec(1.0), period_key("day", backend.clock.time())
    assert await backend.store.acquire(s, pk, 0.9, Holder("gone/1", 0.2))  # a process that died holding 0.9
    ledger = BudgetLedger(backend.store, backend.clock, lease_ttl=10)
    deadline = time.monotonic() + 10
    while (await backend.read(s))[2] > TOL and time.monotonic() < deadline:
        with pytest.raises(BudgetExceededError):  # refused: reclaiming makes the dead lease spent, not free
            await ledger.reserve([s], 0.5)
        await asyncio.sleep(0.1)
        backend.clock.advance(1.0)  # the refusal path reclaims at most once a second (the ledger's clock)
    assert await backend.read(s) == pytest.approx((1.0, 0.9, 0.0), abs=TOL)
    await backend.store.settle_journal("gone", ("key", "k1", pk), 0.0, 0, 1)  # its journal: it spent nothing
    admitted = await ledger.reserve([s], 0.5)
    await ledger.settle(admitted, 0.5)
    await ledger.close()
    assert await backend.read(s) == pytest.approx((1.0, 0.5, 0.0), abs=TOL)
