"""A PostgreSQL queue worker in a process of its own, for the crash tests (``python -m tests.jobs.worker_proc
URL``): it registers the same jobs as the test's own workers, but its runs record that they started and then
hang, until the test kills the process."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from sqlalchemy import text

from thinktank.jobs import RetryPolicy
from thinktank.jobs.postgres import PgQueue
from thinktank.store.db import Database

STALL_AFTER = 3.0
HEARTBEAT = 0.5
RUNS_TABLE = "CREATE TABLE IF NOT EXISTS job_runs (key text, pid integer, phase text)"


async def record(db: Database, key: str, phase: str) -> None:
    async with db.session() as s:
        await s.execute(text("INSERT INTO job_runs VALUES (:k, :p, :phase)"),
                        {"k": key, "p": os.getpid(), "phase": phase})


def register(queue: PgQueue, db: Database, *, hang: bool) -> None:
    """``t.resumable`` may run again after a crash; ``t.fragile`` may not. Both record their start; here (hang)
    they then wait for ever, elsewhere they finish."""

    def job(name: str) -> Any:
        async def run(payload: dict[str, Any]) -> None:
            await record(db, str(payload["key"]), "started")
            if hang:
                await asyncio.Event().wait()
            await record(db, str(payload["key"]), "finished")

        return run

    queue.register("t.resumable", job("t.resumable"), retry=RetryPolicy(attempts=3))
    queue.register("t.fragile", job("t.fragile"))


def worker(url: str, **options: Any) -> PgQueue:
    return PgQueue(url, stall_after=STALL_AFTER, heartbeat=HEARTBEAT, poll=0.5, stall_check_every=1.0, **options)


async def main(url: str) -> None:
    db = Database(url)
    queue = worker(url, concurrency=4)
    register(queue, db, hang=True)
    await queue.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
