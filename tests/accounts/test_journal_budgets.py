"""Budgets exact across a process's death: reclaiming a dead holder's lease counts all of it as spent (it may have
spent it), so a budget is never overspent; replaying the dead process's journal then sets the exact spend (what
it settled and had not written, not what it held for requests under way) and hands the rest back; replayed
twice, or cut short and done again, nothing counts twice. On SQLite, PostgreSQL and Redis (``backend``)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from thinktank.accounts.budget_marks import StaleMarkError
from thinktank.accounts.budgets import BudgetExceededError, BudgetLedger, period_key
from thinktank.accounts.journal import Journal, JournalAccount
from thinktank.accounts.journal_replay import claim_dead, read
from thinktank.accounts.recovery import reconcile, settle_budgets
from thinktank.gateway.router import UsageRecord

from .conftest import TOL, Backend, spec


def later(seconds: float) -> float:
    """A time ``seconds`` from now (the stores' clocks are this machine's)."""
    return time.time() + seconds


def call(cost: float) -> UsageRecord:
    return UsageRecord("m", "d", 10, 20, cost, 0.1, 200, False, 1)


class Process:
    """A ledger and its journal, as a server process has them: each settle's charge line written first."""

    def __init__(self, backend: Backend, directory: Path, *, ttl: float = 10.0) -> None:
        self.journal = Journal(directory, backend.clock)
        self.journal.open()
        self.ledger = BudgetLedger(backend.other_store(), backend.clock, lease_fraction=0.5, lease_ttl=ttl,
                                   journal=self.journal)
        self.requests = 0

    async def answer(self, cost: float, hold: float = 0.1) -> None:
        """A request: hold, call, charge line, settle."""
        self.requests += 1
        reservation = await self.ledger.reserve([spec(1.0)], hold)
        account = JournalAccount(self.journal, f"req-{self.requests}", "u1", "k1", "m")

        class Held:
            budget_keys = reservation.budget_keys

        account.charged(call(cost), Held, False)
        await self.ledger.settle(reservation, cost)

    def die(self) -> None:
        """SIGKILL: its journal's files stay, unlocked; nothing is flushed or handed back."""
        self.journal.close(committed=0)


async def replay(backend: Backend, directory: Path) -> float:
    """What a process starting on the dead one's data directory does to budgets: the change of spent."""
    total = 0.0
    for claim in claim_dead(directory, "someone-else"):
        try:
            total += await settle_budgets(backend.store, claim.owner, read(claim))
        finally:
            claim.release(delete=False)  # (kept: the tests replay again)
    return total


async def test_a_dead_holders_lease_is_spent_until_its_journal_gives_back_what_it_did_not_spend(
        backend: Backend, tmp_path: Path) -> None:
    s = spec(1.0)
    directory = tmp_path / "journal"
    dead = Process(backend, directory)
    await dead.answer(0.1)
    await dead.ledger.flush()  # $0.10 written
    await dead.answer(0.15)  # $0.15 settled, not written
    await dead.ledger.reserve([s], 0.2)  # a request under way: held, never settled
    assert (await backend.check_invariant(s))[1:] == pytest.approx((0.1, 0.5))
    dead.die()

    alive = BudgetLedger(backend.store, backend.clock, lease_ttl=10)
    assert await alive.reclaim_expired(later(11)) == pytest.approx(0.5)
    # All of the dead lease counts as spent: what it settled, held and had left. Never more than the limit.
    assert (await backend.check_invariant(s))[1:] == pytest.approx((0.6, 0.0), abs=TOL)
    with pytest.raises(BudgetExceededError):
        await alive.reserve([s], 0.5)

    kept = tmp_path / "kept"
    shutil.copytree(directory, kept)
    assert await replay(backend, directory) == pytest.approx(0.15 - 0.5)  # its unwritten spend, less the lease
    assert (await backend.check_invariant(s))[1:] == pytest.approx((0.25, 0.0), abs=TOL)  # exactly what it settled
    shutil.rmtree(directory)
    shutil.copytree(kept, directory)  # a replay cut short before its files went: done again, nothing twice
    assert await replay(backend, directory) == pytest.approx(0.0, abs=TOL)
    assert (await backend.check_invariant(s))[1:] == pytest.approx((0.25, 0.0), abs=TOL)

    everything = await alive.reserve([s], 0.75)  # the rest of the budget, to the cent
    await alive.settle(everything, 0.75)
    await alive.close()
    assert await backend.read(s) == pytest.approx((1.0, 1.0, 0.0), abs=TOL)


async def test_a_replay_before_the_lease_ran_out_hands_it_back_and_nothing_is_reclaimed_later(
        backend: Backend, tmp_path: Path) -> None:
    s = spec(1.0)
    dead = Process(backend, tmp_path / "journal")
    await dead.answer(0.05)
    await dead.answer(0.05)
    dead.die()  # restarted at once: its lease has not run out
    assert await replay(backend, tmp_path / "journal") == pytest.approx(0.1)
    assert (await backend.check_invariant(s))[1:] == pytest.approx((0.1, 0.0), abs=TOL)
    assert await backend.store.reclaim_expired(later(60)) == 0.0  # its lease is gone: nothing counted twice
    assert (await backend.check_invariant(s))[1:] == pytest.approx((0.1, 0.0), abs=TOL)


async def test_a_stalled_process_whose_lease_was_reclaimed_is_exact_once_it_stops(
        backend: Backend, tmp_path: Path) -> None:
    s = spec(1.0)
    process = Process(backend, tmp_path / "journal")
    await process.answer(0.1)
    await process.ledger.flush()
    await process.answer(0.2)  # settled, not written, when the process stalls past its lease's ttl
    assert await backend.store.reclaim_expired(later(11)) == pytest.approx(0.5)  # another process reclaims
    assert (await backend.check_invariant(s))[1:] == pytest.approx((0.6, 0.0), abs=TOL)
    backend.clock.advance(9)  # the stalled process goes on: its leases may have run out, it writes what it spent
    await process.answer(0.05)
    await process.ledger.close()
    _, spent, _ = await backend.check_invariant(s)
    assert spent >= 0.35 - TOL  # never less than spent; the reclaimed lease still counts until it stops
    await reconcile(process.ledger, process.journal.owner)  # a clean stop, everything written
    assert (await backend.check_invariant(s))[1:] == pytest.approx((0.35, 0.0), abs=TOL)
    process.journal.close(process.ledger.committed_seq())


async def test_a_replay_that_finds_its_mark_moved_is_refused(backend: Backend, tmp_path: Path) -> None:
    s = spec(1.0)
    process = Process(backend, tmp_path / "journal")
    await process.answer(0.1)
    await process.ledger.flush()
    key = ("key", "k1", period_key("day", backend.clock.time()))
    marks = await backend.store.journal_budgets(process.journal.owner)
    assert marks == {key: process.journal.seq}
    with pytest.raises(StaleMarkError):
        await backend.store.settle_journal(process.journal.owner, key, 0.1, 0, 99)
    assert (await backend.check_invariant(s))[1] == pytest.approx(0.1)
    await process.ledger.close()
    await backend.store.forget_journal(process.journal.owner)
    assert await backend.store.journal_budgets(process.journal.owner) == {}
    process.journal.close(process.ledger.committed_seq())
