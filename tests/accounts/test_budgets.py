"""Budgets against real stores: a fresh SQLite file, a fresh PostgreSQL database and the local Redis
(the ``backend`` fixture of this package's conftest runs each test once per store)."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from thinktank.accounts.budget_backends import BudgetKey, Mark
from thinktank.accounts.budgets import (
    BudgetExceededError,
    BudgetLedger,
    BudgetSpec,
    BudgetStore,
    Holder,
    RedisBudgetStore,
    Reservation,
    period_key,
    period_reset_in,
)

from ..fakes.clock import FakeClock
from .conftest import TOL, Backend, at, spec


def outcomes(results: list[Reservation | BaseException]) -> tuple[list[Reservation], list[BudgetExceededError]]:
    admitted = [r for r in results if isinstance(r, Reservation)]
    refused = [r for r in results if isinstance(r, BudgetExceededError)]
    assert len(admitted) + len(refused) == len(results), [r for r in results if isinstance(r, BaseException)]
    return admitted, refused


# -- periods ------------------------------------------------------------------------------------


def test_period_keys_and_reset_times() -> None:
    t = datetime(2026, 11, 21, 13, 0, tzinfo=UTC).timestamp()
    assert period_key("day", t) == "2026-11-21"
    assert period_key("month", t) == "2026-11"
    assert period_key("total", t) == "total"
    assert period_reset_in("day", t) == 11 * 3600
    assert period_reset_in("month", t) == (9 * 24 + 11) * 3600
    assert period_reset_in("total", t) == 3600
    dec31 = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC).timestamp()
    assert period_key("month", dec31) == "2026-12"
    assert period_reset_in("month", dec31) == 30
    assert period_reset_in("day", dec31) == 30
    feb = datetime(2028, 2, 28, 0, 0, tzinfo=UTC).timestamp()
    assert period_reset_in("month", feb) == 2 * 86400  # a leap year


# -- (a) concurrency in one process ---------------------------------------------------------------


async def test_fifty_simultaneous_reserves_on_a_new_budget_admit_exactly_one(backend: Backend) -> None:
    s = spec(1.0)
    ledger = BudgetLedger(backend.store, backend.clock)
    results = await asyncio.gather(*(ledger.reserve([s], 0.6) for _ in range(50)), return_exceptions=True)
    admitted, refused = outcomes(results)
    assert len(admitted) == 1 and len(refused) == 49
    await backend.check_invariant(s)
    await ledger.settle(admitted[0], 0.55)
    await ledger.flush()
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(0.55) and leased == pytest.approx(0.0, abs=TOL)


async def test_fifty_simultaneous_reserves_on_a_budget_with_spend_admit_exactly_one(backend: Backend) -> None:
    s = spec(1.0)
    await backend.prime(s, 0.7)  # remaining 0.3; each request needs 0.2 > half of it
    ledger = BudgetLedger(backend.store, backend.clock)
    results = await asyncio.gather(*(ledger.reserve([s], 0.2) for _ in range(50)), return_exceptions=True)
    admitted, refused = outcomes(results)
    assert len(admitted) == 1 and len(refused) == 49
    assert refused[0].spec == s
    await ledger.settle(admitted[0], 0.2)
    await ledger.close()
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(0.9) and leased == pytest.approx(0.0, abs=TOL)


# -- (b) two processes -----------------------------------------------------------------------------


@pytest.mark.parametrize("with_spend", [False, True], ids=["new-budget", "with-spend"])
@pytest.mark.parametrize("connections", ["shared", "separate"])
async def test_two_ledgers_racing_admit_exactly_one(backend: Backend, connections: str, with_spend: bool) -> None:
    s = spec(1.0)
    amount = 0.6
    if with_spend:
        await backend.prime(s, 0.7)
        amount = 0.2
    other = backend.store if connections == "shared" else backend.other_store()
    a = BudgetLedger(backend.store, backend.clock)
    b = BudgetLedger(other, backend.clock)
    results = await asyncio.gather(*((a if i % 2 else b).reserve([s], amount) for i in range(50)),
                                   return_exceptions=True)
    admitted, refused = outcomes(results)
    assert len(admitted) == 1 and len(refused) == 49
    await backend.check_invariant(s)
    winner = a if admitted[0] in results[1::2] else b
    await winner.settle(admitted[0], amount)
    await a.close()
    await b.close()
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx((0.7 if with_spend else 0.0) + amount)
    assert leased == pytest.approx(0.0, abs=TOL)


async def test_many_small_requests_across_two_processes_never_overspend(backend: Backend) -> None:
    s = spec(1.0)
    a = BudgetLedger(backend.store, backend.clock, lease_fraction=0.1)
    b = BudgetLedger(backend.other_store(), backend.clock, lease_fraction=0.1)
    rng = random.Random(7)
    amount = 0.013
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            await backend.check_invariant(s)
            await asyncio.sleep(0)

    async def request(ledger: BudgetLedger) -> float:
        try:
            r = await ledger.reserve([s], amount)
        except BudgetExceededError:
            return 0.0
        await asyncio.sleep(0)
        cost = round(amount * rng.random(), 6)
        await ledger.settle(r, cost)
        if rng.random() < 0.1:
            await ledger.flush()
        return cost

    watcher = asyncio.create_task(watch())
    costs = await asyncio.gather(*(request(a if rng.random() < 0.5 else b) for _ in range(120)))
    stop.set()
    await watcher
    await a.close()
    await b.close()
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(sum(costs), abs=TOL)
    assert leased == pytest.approx(0.0, abs=TOL)


# -- (c) idempotency and exact charging -----------------------------------------------------------


async def test_settle_and_release_charge_exactly_once(backend: Backend) -> None:
    s = spec(1.0)
    ledger = BudgetLedger(backend.store, backend.clock)
    r = await ledger.reserve([s], 0.1)
    await ledger.settle(r, 0.07)
    await ledger.settle(r, 0.5)  # ignored: already settled
    await ledger.release(r)  # ignored too
    assert r.state == "settled" and r.charged == 0.07

    failed = await ledger.reserve([s], 0.2)  # e.g. every deployment failed, or a fallback answered
    await ledger.release(failed)
    await ledger.release(failed)
    await ledger.settle(failed, 0.9)  # ignored: released requests are never charged
    assert failed.state == "released" and failed.charged == 0.0

    await ledger.flush()
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(0.07) and leased == pytest.approx(0.0, abs=TOL)
    assert await ledger.remaining(s) == pytest.approx(0.93)


async def test_a_cost_above_the_reservation_is_still_charged(backend: Backend) -> None:
    s = spec(1.0)
    ledger = BudgetLedger(backend.store, backend.clock, lease_fraction=0.0)
    r = await ledger.reserve([s], 0.1)
    await ledger.settle(r, 0.3)  # the estimate was low: the money was spent all the same
    await ledger.flush()
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(0.3) and leased == pytest.approx(0.0, abs=TOL)


# -- (d) several budgets per request --------------------------------------------------------------


async def test_reserving_several_budgets_is_all_or_nothing(backend: Backend) -> None:
    key = spec(10.0, scope="key", scope_id="k1", label="key 'ci-bot' (tt-abcd…)")
    team = spec(50.0, scope="team", scope_id="t1", period="month", label="team 'ml'")
    user = spec(1.0, scope="user", scope_id="u1", period="month", label="user ada@example.com")
    await backend.prime(user, 0.95)
    ledger = BudgetLedger(backend.store, backend.clock)
    with pytest.raises(BudgetExceededError) as info:
        await ledger.reserve([key, team, user], 0.1)
    assert info.value.spec == user
    assert "user ada@example.com may spend $1.00 per month" in info.value.message
    assert "team" not in info.value.message and "key" not in info.value.message
    # What was set aside in the key and team budgets went back: all of both is available.
    assert await ledger.remaining(key) == pytest.approx(10.0)
    assert await ledger.remaining(team) == pytest.approx(50.0)
    ok = await ledger.reserve([key, team], 0.1)
    await ledger.settle(ok, 0.05)
    await ledger.close()
    for s, want in ((key, 0.05), (team, 0.05), (user, 0.95)):
        _limit, spent, leased = await backend.check_invariant(s)
        assert spent == pytest.approx(want) and leased == pytest.approx(0.0, abs=TOL)


async def test_zero_amounts_and_unlimited_budgets_never_touch_the_store(clock: FakeClock) -> None:
    class Exploding:
        async def acquire(self, spec: BudgetSpec, period_key: str, amount: float, holder: Holder | None = None
                          ) -> bool:
            raise AssertionError("the store was used")

        async def commit(self, spec: BudgetSpec, period_key: str, spent_delta: float, lease_delta: float,
                         holder: Holder | None = None, mark: Mark | None = None) -> None:
            raise AssertionError("the store was used")

        async def read(self, spec: BudgetSpec, period_key: str) -> tuple[float, float, float]:
            raise AssertionError("the store was used")

        async def renew(self, holder: Holder) -> None:
            raise AssertionError("the store was used")

        async def reclaim_expired(self, now: float | None = None) -> float:
            raise AssertionError("the store was used")

        async def drop(self, holder: Holder) -> float:
            raise AssertionError("the store was used")

        async def journal_budgets(self, journal: str) -> dict[BudgetKey, int]:
            raise AssertionError("the store was used")

        async def settle_journal(self, journal: str, key: BudgetKey, unflushed: float, expected: int, last: int
                                 ) -> float | None:
            raise AssertionError("the store was used")

        async def forget_journal(self, journal: str) -> None:
            raise AssertionError("the store was used")

    ledger = BudgetLedger(Exploding(), clock)
    unlimited = spec(None)
    r = await ledger.reserve([unlimited], 5.0)
    await ledger.settle(r, 4.0)
    r = await ledger.reserve([spec(1.0)], 0.0)
    await ledger.release(r)
    r = await ledger.reserve([spec(1.0), unlimited], 0.0)
    await ledger.settle(r, 0.0)
    assert await ledger.remaining(unlimited) == float("inf")
    await ledger.flush()
    await ledger.close()


# -- (e) periods roll over ------------------------------------------------------------------------


@pytest.mark.parametrize(("period", "step"), [("day", 86400.0), ("month", 31 * 86400.0)])
async def test_a_new_period_is_a_fresh_budget(backend: Backend, period: str, step: float) -> None:
    at(backend.clock, 2026, 11, 21, 12, 0)
    s = spec(1.0, period=period)
    ledger = BudgetLedger(backend.store, backend.clock)
    r = await ledger.reserve([s], 0.9)
    await ledger.settle(r, 0.9)
    with pytest.raises(BudgetExceededError):
        await ledger.reserve([s], 0.2)
    old_key = period_key(s.period, backend.clock.time())
    backend.clock.advance(step)
    assert period_key(s.period, backend.clock.time()) != old_key
    r = await ledger.reserve([s], 0.9)  # fresh
    await ledger.settle(r, 0.5)
    await ledger.close()
    assert await backend.store.read(s, old_key) == pytest.approx((1.0, 0.9, 0.0), abs=TOL)
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(0.5) and leased == pytest.approx(0.0, abs=TOL)


# -- (f) the 429 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("period", "per", "reset"),
                         [("day", "per day", 3600.0), ("month", "per month", 9 * 86400 + 3600.0),
                          ("total", "in total", 3600.0)])
async def test_the_429_names_the_budget_and_when_it_resets(backend: Backend, period: str, per: str,
                                                          reset: float) -> None:
    at(backend.clock, 2026, 11, 21, 23, 0)
    s = spec(5.0, period=period, label="key 'ci-bot' (tt-abcd…)")
    await backend.prime(s, 4.996)
    ledger = BudgetLedger(backend.store, backend.clock)
    with pytest.raises(BudgetExceededError) as info:
        await ledger.reserve([s], 0.0123)
    err = info.value
    assert err.message == (f"Budget exceeded: key 'ci-bot' (tt-abcd…) may spend $5.00 {per} and this request "
                           "could cost up to $0.0123 (remaining $0.0040).")
    assert err.status == 429 and err.code == "budget_exceeded"
    assert err.to_body()["error"]["type"] == "rate_limit_error"
    assert err.retry_after == pytest.approx(reset)
    assert err.headers() == {"Retry-After": str(int(reset))}
    await backend.check_invariant(s)


# -- (g) flush and close hand leases back ----------------------------------------------------------


async def test_flush_and_close_hand_back_leases(backend: Backend) -> None:
    s = spec(10.0)
    ledger = BudgetLedger(backend.store, backend.clock, lease_fraction=0.2)
    costs = [0.11, 0.2, 0.05, 0.0]
    for cost in costs:
        r = await ledger.reserve([s], 0.3)
        await ledger.settle(r, cost)
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == 0.0 and leased == pytest.approx(2.0)  # one lease of 20% served all four
    await ledger.flush()
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(sum(costs)) and leased == pytest.approx(0.0, abs=TOL)

    outstanding = await ledger.reserve([s], 0.5)
    done = await ledger.reserve([s], 0.5)
    await ledger.settle(done, 0.25)
    await ledger.flush()  # keeps what backs the outstanding reservation, writes the spend
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(sum(costs) + 0.25) and leased >= 0.5 - TOL
    await ledger.close()  # hands back every lease
    _limit, spent, leased = await backend.check_invariant(s)
    assert leased == pytest.approx(0.0, abs=TOL)
    await ledger.settle(outstanding, 0.4)  # a request that finished during shutdown is still charged
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(sum(costs) + 0.25 + 0.4) and leased == pytest.approx(0.0, abs=TOL)
    with pytest.raises(RuntimeError):
        await ledger.reserve([s], 0.1)


class TickingClock(FakeClock):
    """Sleeps really (briefly) without moving time, so a background loop does not race the date."""

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0.005)


async def test_the_background_task_flushes(backend: Backend) -> None:
    s = spec(10.0)
    ledger = BudgetLedger(backend.store, TickingClock(backend.clock.time()), flush_interval=0.5)
    ledger.start()
    r = await ledger.reserve([s], 0.3)
    await ledger.settle(r, 0.12)
    for _ in range(400):
        _limit, spent, leased = await backend.check_invariant(s)
        if spent > 0 and leased == 0:
            break
        await asyncio.sleep(0.005)
    assert spent == pytest.approx(0.12) and leased == pytest.approx(0.0, abs=TOL)
    r = await ledger.reserve([s], 0.3)
    await ledger.close()
    _limit, spent, leased = await backend.check_invariant(s)
    assert leased == pytest.approx(0.0, abs=TOL)
    await ledger.release(r)
    assert await backend.read(s) == pytest.approx((10.0, 0.12, 0.0), abs=TOL)


# -- (h) leases held elsewhere ----------------------------------------------------------------------


async def test_a_lease_held_by_one_process_cannot_be_spent_by_another(backend: Backend) -> None:
    s = spec(1.0)
    a = BudgetLedger(backend.store, backend.clock, lease_fraction=0.5)
    b = BudgetLedger(backend.other_store(), backend.clock, lease_fraction=0.5)
    ra = await a.reserve([s], 0.1)  # a now holds a lease of 0.5
    assert (await backend.check_invariant(s))[2] == pytest.approx(0.5)
    with pytest.raises(BudgetExceededError) as info:
        await b.reserve([s], 0.6)
    assert info.value.remaining == pytest.approx(0.5)
    rb = await b.reserve([s], 0.5)
    await backend.check_invariant(s)
    ra2 = await a.reserve([s], 0.3)  # from a's own lease
    with pytest.raises(BudgetExceededError):
        await a.reserve([s], 0.2)  # 0.1 left in a's lease, nothing in the store
    with pytest.raises(BudgetExceededError):
        await b.reserve([s], 0.01)
    await backend.check_invariant(s)
    await a.settle(ra, 0.1)
    await a.settle(ra2, 0.3)
    await b.settle(rb, 0.5)
    await a.flush()
    await b.flush()
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(0.9) and leased == pytest.approx(0.0, abs=TOL)
    assert await b.remaining(s) == pytest.approx(0.1)
    await a.close()
    await b.close()


# -- the stores themselves ------------------------------------------------------------------------


async def test_the_store_follows_a_changed_limit(backend: Backend) -> None:
    pk = period_key("day", backend.clock.time())
    assert await backend.store.acquire(spec(1.0), pk, 0.5)
    assert not await backend.store.acquire(spec(1.0), pk, 0.6)
    assert await backend.store.read(spec(1.0), pk) == pytest.approx((1.0, 0.0, 0.5))
    assert await backend.store.acquire(spec(2.0), pk, 0.6)  # raised
    assert await backend.store.read(spec(2.0), pk) == pytest.approx((2.0, 0.0, 1.1))
    assert not await backend.store.acquire(spec(0.5), pk, 0.1)  # lowered below what is out
    assert (await backend.store.read(spec(0.5), pk))[0] == pytest.approx(0.5)
    await backend.store.commit(spec(0.5), pk, 0.2, 5.0)  # leases never go below zero
    assert await backend.store.read(spec(0.5), pk) == pytest.approx((0.5, 0.2, 0.0))


async def test_redis_budgets_expire_after_their_period(redis_url: str, clock: FakeClock) -> None:
    at(clock, 2026, 11, 21, 23, 0)
    prefix = f"tt:test:{uuid.uuid4().hex}"
    client = aioredis.from_url(redis_url)
    store = RedisBudgetStore(client, clock, prefix=prefix)
    try:
        day, total = spec(1.0, period="day"), spec(1.0, scope_id="k2", period="total")
        assert await store.acquire(day, period_key("day", clock.time()), 0.1)
        assert await store.acquire(total, "total", 0.1)
        ttl = await client.ttl(store.key(day, period_key("day", clock.time())))
        assert 3600 < ttl <= 3600 + 3600
        assert await client.ttl(store.key(total, "total")) == -1
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


# -- (i) the hot path does not wait for the store ------------------------------------------------------


class GatedStore:
    """A real store whose commits wait until the test opens the gate (a slow database, say)."""

    def __init__(self, store: BudgetStore) -> None:
        self.store = store
        self.gate = asyncio.Event()
        self.committing = asyncio.Event()
        self.acquires = 0

    async def acquire(self, spec: BudgetSpec, period_key: str, amount: float, holder: Holder | None = None) -> bool:
        self.acquires += 1
        return await self.store.acquire(spec, period_key, amount, holder)

    async def commit(self, spec: BudgetSpec, period_key: str, spent_delta: float, lease_delta: float,
                     holder: Holder | None = None, mark: Mark | None = None) -> None:
        self.committing.set()
        await self.gate.wait()
        await self.store.commit(spec, period_key, spent_delta, lease_delta, holder, mark)

    async def read(self, spec: BudgetSpec, period_key: str) -> tuple[float, float, float]:
        return await self.store.read(spec, period_key)

    async def renew(self, holder: Holder) -> None:
        await self.store.renew(holder)

    async def reclaim_expired(self, now: float | None = None) -> float:
        return await self.store.reclaim_expired(now)

    async def drop(self, holder: Holder) -> float:
        return await self.store.drop(holder)

    async def journal_budgets(self, journal: str) -> dict[BudgetKey, int]:
        return await self.store.journal_budgets(journal)

    async def settle_journal(self, journal: str, key: BudgetKey, unflushed: float, expected: int, last: int
                             ) -> float | None:
        return await self.store.settle_journal(journal, key, unflushed, expected, last)

    async def forget_journal(self, journal: str) -> None:
        await self.store.forget_journal(journal)


async def test_reservations_go_on_while_a_flush_is_being_written(backend: Backend) -> None:
    s = spec(10.0)
    gated = GatedStore(backend.store)
    ledger = BudgetLedger(gated, backend.clock, lease_fraction=0.2)
    outstanding = await ledger.reserve([s], 0.3)  # the lease is kept for it: only spend is written
    first = await ledger.reserve([s], 0.3)
    await ledger.settle(first, 0.25)
    flushing = asyncio.create_task(ledger.flush())
    await asyncio.wait_for(gated.committing.wait(), 5)
    costs = [0.25]
    for i in range(8):  # all served from the lease while the write waits; none of them waits
        r = await asyncio.wait_for(ledger.reserve([s], 0.1), 1)
        await asyncio.wait_for(ledger.settle(r, 0.01 * i), 1)
        costs.append(0.01 * i)
    big = asyncio.create_task(ledger.reserve([s], 9.9))  # beyond the lease: waits for the store
    await asyncio.sleep(0.01)
    assert not flushing.done() and not big.done()
    gated.gate.set()
    await flushing
    with pytest.raises(BudgetExceededError):  # 0.25 spent + 2.0 leased + 8.48 more > 10
        await big
    await ledger.settle(outstanding, 0.3)
    costs.append(0.3)
    await ledger.close()
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(sum(costs)) and leased == pytest.approx(0.0, abs=TOL)


async def test_a_reservation_during_a_flush_that_hands_the_lease_back_leases_anew(backend: Backend) -> None:
    s = spec(1.0)
    gated = GatedStore(backend.store)
    ledger = BudgetLedger(gated, backend.clock, lease_fraction=0.5)
    r = await ledger.reserve([s], 0.2)
    await ledger.settle(r, 0.2)
    flushing = asyncio.create_task(ledger.flush())  # nothing outstanding: the whole lease goes back
    await asyncio.wait_for(gated.committing.wait(), 5)
    later = asyncio.create_task(ledger.reserve([s], 0.2))  # must not count on the lease going back
    await asyncio.sleep(0.01)
    assert not later.done()
    gated.gate.set()
    await flushing
    r2 = await later
    assert gated.acquires == 2
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(0.2) and leased == pytest.approx(0.5)
    await ledger.settle(r2, 0.2)
    await ledger.close()
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(0.4) and leased == pytest.approx(0.0, abs=TOL)


async def test_the_background_flush_keeps_the_lease_of_a_busy_budget(backend: Backend) -> None:
    s = spec(10.0)
    counting = GatedStore(backend.store)
    counting.gate.set()
    ledger = BudgetLedger(counting, backend.clock, lease_fraction=0.1)
    for i in range(5):  # a request between every two flushes: one lease serves them all
        r = await ledger.reserve([s], 0.1)
        await ledger.settle(r, 0.05)
        await ledger.flush(keep_used=True)  # writes the spend with the lease it used; keeps the rest
        _limit, spent, leased = await backend.check_invariant(s)
        assert leased == pytest.approx(1.0 - 0.05 * (i + 1))
    assert counting.acquires == 1 and spent == pytest.approx(0.25)
    await ledger.flush(keep_used=True)  # a whole round unused: handed back
    assert await backend.read(s) == pytest.approx((10.0, 0.25, 0.0), abs=TOL)
    await ledger.close()


async def test_a_zero_reservation_outstanding_across_a_flush_is_still_charged(backend: Backend) -> None:
    s = spec(1.0)
    ledger = BudgetLedger(backend.store, backend.clock)
    r = await ledger.reserve([s], 0.0)  # nothing set aside, but the request is under way
    await ledger.flush()  # must not forget the budget the reservation points at
    await ledger.settle(r, 0.05)
    await ledger.close()
    _limit, spent, leased = await backend.check_invariant(s)
    assert spent == pytest.approx(0.05) and leased == pytest.approx(0.0, abs=TOL)
