from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from thinktank.accounts.usage import UsageEvent, UsageWriter
from thinktank.store.db import Database
from thinktank.store.tables import UsageRow

from ..fakes.clock import FakeClock


def event(i: int, ts: float = 1_700_000_000.0) -> UsageEvent:
    return UsageEvent(request_id=f"req-{i}", ts=ts, user_id="u", key_id=None, model="m", deployment="d",
                      prompt_tokens=3, completion_tokens=4, cost_usd=0.5, latency_ms=1.0, status=200)


async def count(db: Database) -> int:
    async with db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(UsageRow)) or 0)


async def test_every_row_arrives_in_batches_and_twice_is_once(db: Database, clock: FakeClock) -> None:
    writer = UsageWriter(db, clock, batch=700)
    for i in range(2345):
        writer.record(event(i))
    assert await writer.flush() == 2345
    for i in range(2000, 2400):  # a batch written again (a retry after a lost answer) adds nothing twice
        writer.record(event(i))
    await writer.flush()
    assert await count(db) == 2400
    async with db.session() as s:
        row = (await s.execute(select(UsageRow).where(UsageRow.request_id == "req-7"))).scalar_one()
    assert (row.day, row.cost_usd, row.prompt_tokens) == (1_700_000_000 // 86400, 0.5, 3)


async def test_close_writes_what_is_buffered(db: Database) -> None:
    from thinktank.clock import SystemClock

    writer = UsageWriter(db, SystemClock(), interval=0.01)
    writer.start()
    for i in range(3000):
        writer.record(event(i))
        if i % 500 == 0:
            await asyncio.sleep(0.005)  # let the background writer run mid-stream
    await writer.close()
    assert await count(db) == 3000 and writer.pending == 0


async def test_a_failed_write_keeps_the_rows(clock: FakeClock, db_url: str) -> None:
    unreachable = ("sqlite+aiosqlite:////nonexistent-dir/x.db" if "sqlite" in db_url
                   else db_url.rsplit("/", 1)[0] + "/no_such_database")
    broken = Database(unreachable)
    writer = UsageWriter(broken, clock)
    writer.record(event(1))
    with pytest.raises(Exception):
        await writer.flush()
    assert writer.pending == 1  # kept for the next attempt, not dropped
    await broken.close()
