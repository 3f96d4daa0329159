"""The journal in a running process: its own segments kept small, and those of processes that died replayed.

:meth:`Recovery.start` opens this process's journal and replays the segments of dead processes sharing the data
directory (``serve --workers N``, or a process restarted after a crash); it looks again every ``scan_every``
seconds (a worker that died while its siblings go on). Every ``tidy_every`` seconds the journal begins a new
segment when due and drops those whose lines the usage writer and the budget ledger have committed.

Replaying a dead process's journal: its usage rows are inserted (or ignored, if there); then, budget by budget,
its spend past the mark the store keeps for its journal is added, what reclaiming its expired leases counted as
spent is taken off (:meth:`~.budget_backends.BudgetStore.settle_journal`), and the leases its holders still have
are handed back: the budget's spend is then exactly what its usage rows cost. A replay cut short is done again
by the next process to look: rows are inserted once, and the marks say which spend is in already.

A process that stops cleanly, everything written, does the same for itself (:meth:`Recovery.close`): what
reclaiming its leases counted as spent while it was stalled (its leases ran out, it went on) is taken off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from ..clock import Clock
from ..errors import ConfigError
from ..outages import OutageLog, unavailable
from ..store.db import Database
from .budget_marks import StaleMarkError
from .journal import Journal
from .journal_replay import Claim, Contents, claim_dead, read
from .usage import UsageWriter, insert_rows

if TYPE_CHECKING:
    from .budget_backends import BudgetKey, BudgetStore
    from .budgets import BudgetLedger

__all__ = ["Recovery", "reconcile", "settle_budgets", "store_id"]

log = logging.getLogger("thinktank.journal")


def store_id(url: str) -> str:
    """A short fingerprint of a database or Redis URL, its password left out (a journal names where its lines
    belong without writing a secret to disk)."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: a Redis URL with an odd form
        shown = url.split("@", 1)[-1]
    return hashlib.sha256(shown.encode()).hexdigest()[:16]


class Recovery:
    def __init__(self, journal: Journal, db: Database, usage: UsageWriter, clock: Clock, *,
                 ledger: BudgetLedger | None = None, tidy_every: float = 1.0, scan_every: float = 5.0,
                 batch: int = 2000) -> None:
        self.journal = journal
        self._db = db
        self._usage = usage
        self._ledger = ledger
        self._clock = clock
        self._tidy_every = tidy_every
        self._scan_every = scan_every
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self._outages = OutageLog(clock)
        self.replayed = 0
        """Journals of dead processes replayed by this one."""

    def committed(self) -> int:
        """The journal's lines up to this sequence number are all in the database and the budget store."""
        usage = self._usage.committed_seq
        return usage if self._ledger is None else min(usage, self._ledger.committed_seq())

    async def start(self) -> None:
        """Open this process's journal and replay the dead ones; then keep at it in the background."""
        try:
            self.journal.open()
        except OSError as exc:
            raise ConfigError(
                f"The accounting journal cannot be written in {self.journal.directory} ({exc}). Make the data "
                "directory writable (THINKTANK_DATA_DIR), or turn the journal off with THINKTANK_JOURNAL=false "
                "(usage rows and budget spend of answered requests are then lost if a process is killed)."
            ) from exc
        await self.replay()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="journal")

    async def replay(self) -> int:
        """Replay the journals of every dead process of this data directory; how many were."""
        done = 0
        claims = claim_dead(self.journal.directory, self.journal.owner)
        try:
            for claim in claims:
                try:
                    done += await self._replay(claim)
                except Exception as exc:
                    claim.release(delete=False)  # left for the next look (here or in another process)
                    down = unavailable(exc)
                    if down is None:
                        log.exception("replaying the journal of process %s failed; it is tried again", claim.owner)
                    else:
                        self._outages.failed(down, f"replaying the journal of process {claim.owner}")
        finally:
            for claim in claims:  # those not reached (cancelled): unlocked, untouched
                claim.release(delete=False)
        self.replayed += done
        return done

    async def _replay(self, claim: Claim) -> int:
        contents = read(claim)
        ours = (self.journal.database, self.journal.budgets)
        if contents.stores and contents.stores != {ours}:
            log.warning("the journal of process %s belongs to another database or budget store: left alone",
                        claim.owner)
            claim.release(delete=False)
            return 0
        rows = contents.rows
        for start in range(0, len(rows), self._batch):
            await insert_rows(self._db, rows[start:start + self._batch])
        spend = await self._settle_budgets(claim.owner, contents)
        claim.release(delete=True)
        if self._ledger is not None:
            await self._ledger.store.forget_journal(claim.owner)  # (a crash just before: marks left, at its end)
        if rows or spend:
            log.info("replayed the journal of process %s: %d usage rows (%d rebuilt from their charges), budgets "
                     "%+.6f USD against what reclaiming its leases had counted", claim.owner, len(rows),
                     contents.rebuilt, spend)
        return 1

    async def _settle_budgets(self, journal: str, contents: Contents) -> float:
        return 0.0 if self._ledger is None else await settle_budgets(self._ledger.store, journal, contents)

    async def _run(self) -> None:
        since_scan = 0.0
        while True:
            await self._clock.sleep(self._tidy_every)
            try:
                self.journal.tidy(self.committed())
            except OSError:
                log.exception("tidying the journal failed")
            since_scan += self._tidy_every
            if since_scan >= self._scan_every:
                since_scan = 0.0
                await self.replay()

    async def close(self) -> None:
        """Stop, after the usage writer and the budget ledger wrote everything: the journal goes with it (and its
        marks in the budget store), or stays for a replay if something is not written."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        ledger = self._ledger
        if ledger is not None:
            try:
                await self._reconcile(ledger)
            except Exception:
                log.warning("settling what reclaiming this process's budget leases counted as spent failed; the "
                            "replay of its journal will", exc_info=True)
        if self.journal.close(self.committed()) and ledger is not None:
            try:
                await ledger.store.forget_journal(self.journal.owner)
            except Exception:
                log.warning("forgetting this process's journal marks failed (they are left, settled)", exc_info=True)

    async def _reconcile(self, ledger: BudgetLedger) -> None:
        await reconcile(ledger, self.journal.owner)


async def settle_budgets(store: BudgetStore, journal: str, contents: Contents) -> float:
    """Each budget a dead process's journal spent on or leased from gets its exact spend (see the module): the
    spend past the journal's mark, minus what reclaiming its leases counted; its leases still there handed back.
    Returns the change of spent over all of them."""
    charged: dict[BudgetKey, list[tuple[int, float]]] = {}
    for charge in contents.charges:
        for key in charge.budgets:
            charged.setdefault(key, []).append((charge.seq, charge.cost))
    for attempt in range(3):
        marks = await store.journal_budgets(journal)
        total = 0.0
        try:
            for key in sorted(set(marks) | set(charged)):
                seq = marks.get(key, 0)
                unflushed = math.fsum(cost for at, cost in charged.get(key, ()) if at > seq)
                delta = await store.settle_journal(journal, key, unflushed, seq, max(seq, contents.last_seq))
                total += delta or 0.0
        except StaleMarkError:
            if attempt == 2:
                raise
            continue  # another replay moved a mark meanwhile: look again
        return total
    return 0.0


async def reconcile(ledger: BudgetLedger, journal: str) -> None:
    """A live process's budgets with nothing unwritten or held in ``ledger``: what reclaiming its leases counted as
    spent (its leases ran out while it was stalled, and it went on) is taken off, as all of its spend is in the
    store; the marks stay where they are. For a clean stop."""
    store = ledger.store
    for key, seq in (await store.journal_budgets(journal)).items():
        if ledger.settled(key):
            await store.settle_journal(journal, key, 0.0, seq, seq)
