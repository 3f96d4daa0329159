"""The journal in a running process: its own segments kept small, and those of processes that died replayed.

:meth:`Recovery.start` opens this process's journal and replays the segments of dead processes sharing the data
directory (``serve --workers N``, or a process restarted after a crash); it looks again every ``scan_every``
seconds (a worker that died while its siblings go on). Every ``tidy_every`` seconds the journal begins a new
segment when due and drops those whose lines the usage writer (and the budget ledger) have committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

from sqlalchemy.engine import make_url

from ..clock import Clock
from ..outages import OutageLog, unavailable
from ..store.db import Database
from .journal import Journal
from .journal_replay import Claim, claim_dead, read
from .usage import UsageWriter, insert_rows

__all__ = ["Recovery", "store_id"]

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
    def __init__(self, journal: Journal, db: Database, usage: UsageWriter, clock: Clock, *, tidy_every: float = 1.0,
                 scan_every: float = 30.0, batch: int = 2000) -> None:
        self.journal = journal
        self._db = db
        self._usage = usage
        self._clock = clock
        self._tidy_every = tidy_every
        self._scan_every = scan_every
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self._outages = OutageLog(clock)
        self.replayed = 0
        """Journals of dead processes replayed by this one."""

    def committed(self) -> int:
        """The journal's lines up to this sequence number are all in the database (and the budget store)."""
        return self._usage.committed_seq

    async def start(self) -> None:
        """Open this process's journal and replay the dead ones; then keep at it in the background."""
        self.journal.open()
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
        claim.release(delete=True)
        if rows:
            log.info("replayed the journal of process %s: %d usage rows (%d rebuilt from their charges)",
                     claim.owner, len(rows), contents.rebuilt)
        return 1

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
        """Stop, after the usage writer and the budget ledger wrote everything: the journal goes with it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.journal.close(self.committed())
