#!/usr/bin/env python3
"""What the owner guard costs a turn's event writes (issue 17): a running turn stores its new events every
quarter of a second; each write now also updates the turn's heartbeat where its owner is this process (the
fence that stops a stalled process from writing over a turn another one took up).

    python bench/turn_flush.py --writes 400 --events 5

On SQLite (a file) and on PostgreSQL (a fresh database), each migrated: ``--writes`` writes of ``--events``
events to one turn, alternating the write as it was (the events' insert) and as it is (guard, then insert),
timed one by one. Reported per database: the median and 90th percentile of each, and their difference.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_process_events import PG_ADMIN

from thinktank.store.db import Database
from thinktank.store.migrate import upgrade_async
from thinktank.store.raw import Batch, Insert, write
from thinktank.store.tables import Thread, User

_EVENT = Insert("thread_turn_events", ("turn_id", "seq", "type", "data"))
_OWNED = "UPDATE thread_turns SET heartbeat_at = ? WHERE id = ? AND owner = ?"


async def measure(url: str, writes: int, events: int) -> tuple[list[float], list[float]]:
    await upgrade_async(url)
    db = Database(url)
    try:
        now = time.time()
        async with db.session() as s:
            s.add(User(id="usr_bench", email="bench@example.com", role="member", created_at=now))
        async with db.session() as s:
            s.add(Thread(id="thr_bench", user_id="usr_bench", title="", model="m", archived=False, created_at=now,
                         updated_at=now))
        setup = Batch()
        setup.execute("INSERT INTO thread_turns (id, thread_id, started_at, owner, heartbeat_at, attempts) "
                      "VALUES (?, ?, ?, ?, ?, ?)", ("turn_bench", "thr_bench", now, "me", now, 0))
        await write(db, setup)
        before: list[float] = []
        after: list[float] = []
        seq = 0
        for i in range(writes * 2):
            batch = Batch()
            guarded = i % 2 == 1
            if guarded:
                batch.guard(_OWNED, (time.time(), "turn_bench", "me"))
            batch.insert(_EVENT, [("turn_bench", seq + k + 1, "delta", '{"content": "word "}') for k in range(events)])
            seq += events
            started = time.perf_counter()
            await write(db, batch)
            (after if guarded else before).append(time.perf_counter() - started)
        return before, after
    finally:
        await db.close()


def report(name: str, before: list[float], after: list[float]) -> None:
    def pct(values: list[float], p: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000

    b50, a50 = statistics.median(before) * 1000, statistics.median(after) * 1000
    print(f"{name:<10} without guard p50 {b50:.3f} ms p90 {pct(before, 90):.3f} ms | with guard p50 {a50:.3f} ms "
          f"p90 {pct(after, 90):.3f} ms | +{a50 - b50:.3f} ms a write")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report("SQLite", *await measure(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", args.writes, args.events))
    db = f"tt_bench_flush_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'CREATE DATABASE "{db}"')
    try:
        report("PostgreSQL", *await measure(PG_ADMIN.rsplit("/", 1)[0] + "/" + db, args.writes, args.events))
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=400)
    parser.add_argument("--events", type=int, default=5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
