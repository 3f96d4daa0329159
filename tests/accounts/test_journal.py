"""The accounting journal in one process, on real files and real databases (SQLite, PostgreSQL): what a process
killed before its usage writer ran leaves behind is replayed by another, exactly once; the segments of a live
process are never touched; segments go once committed; a record still open is carried into each new segment."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

from thinktank.accounts.journal import Journal
from thinktank.accounts.journal_replay import INTERRUPTED, claim_dead, read, segment_lines
from thinktank.accounts.recovery import Recovery, store_id
from thinktank.accounts.usage import UsageEvent, UsageWriter
from thinktank.gateway.router import UsageRecord
from thinktank.store.db import Database
from thinktank.store.tables import UsageRow

from ..fakes.clock import FakeClock


def event(request_id: str, cost: float = 0.25) -> UsageEvent:
    return UsageEvent(request_id=request_id, ts=1_700_000_000.0, user_id="u1", key_id="k1", model="m",
                      deployment="d", prompt_tokens=10, completion_tokens=20, cost_usd=cost, latency_ms=12.5,
                      status=200, stream=True)


def call(cost: float, prompt: int = 5, completion: int = 7, deployment: str = "d1") -> UsageRecord:
    return UsageRecord("m", deployment, prompt, completion, cost, 0.1, 200, False, 1)


class Held:
    """A hold as the journal sees one: the budgets it is settled on."""

    def __init__(self, *budget_keys: list[str]) -> None:
        self.budget_keys = list(budget_keys)


def journal(directory: Path, clock: FakeClock, db: Database, **kw: float) -> Journal:
    return Journal(directory, clock, database=store_id(db.url), budgets=store_id(db.url), **kw)  # type: ignore[arg-type]


async def rows(db: Database) -> dict[str, tuple[float, int, int, int]]:
    async with db.session() as s:
        found = (await s.execute(select(UsageRow.request_id, UsageRow.cost_usd, UsageRow.status,
                                        UsageRow.prompt_tokens, UsageRow.completion_tokens))).all()
    return {r[0]: (float(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in found}


async def count(db: Database) -> int:
    async with db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(UsageRow)) or 0)


async def test_rows_a_killed_process_had_not_written_are_replayed_once(
        db: Database, clock: FakeClock, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    dead = journal(directory, clock, db)
    dead.open()
    writer = UsageWriter(db, clock, journal=dead)
    for i in range(3):
        writer.record(event(f"req-{i}"))
    await writer.flush()  # three written ...
    for i in range(3, 8):
        writer.record(event(f"req-{i}"))  # ... five only buffered when the process dies
    run = dead.account("run-1", "u1", "k1", "ensemble/council")
    run.charged(call(0.5), Held(["key", "k1", "total"]), True)
    run.charged(call(0.25, deployment="d2"), Held(["key", "k1", "total"]), True)
    dead.close(committed=0)  # what SIGKILL leaves: the files, unlocked

    live = journal(directory, clock, db)
    recovery = Recovery(live, db, UsageWriter(db, clock, journal=live), clock)
    kept = {p.name: p.read_bytes() for p in directory.iterdir()}
    await recovery.start()
    assert recovery.replayed == 1
    found = await rows(db)
    assert sorted(found) == sorted([f"req-{i}" for i in range(8)] + ["run-1"])
    assert found["req-5"] == (0.25, 200, 10, 20)
    assert found["run-1"] == (0.75, INTERRUPTED, 10, 14)  # rebuilt from its two charges
    assert [p.name for p in directory.iterdir()] == [p.name for p in live.segments]  # the dead one's are gone

    # A replayer that died after writing, before deleting: the next one does it all again, and nothing twice.
    for name, data in kept.items():
        (directory / name).write_bytes(data)
    assert await recovery.replay() == 1
    assert await count(db) == 9
    await recovery.close()
    assert list(directory.iterdir()) == []  # everything committed: nothing left


async def test_the_segments_of_a_live_process_are_left_alone(db: Database, clock: FakeClock, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    alive = journal(directory, clock, db)
    alive.open()
    alive.usage(event("req-live"))
    other = journal(directory, clock, db)
    recovery = Recovery(other, db, UsageWriter(db, clock, journal=other), clock)
    await recovery.start()
    assert recovery.replayed == 0 and await count(db) == 0
    assert len(alive.segments) == 1 and alive.segments[0].exists()
    alive.close(committed=0)  # it dies now
    assert await recovery.replay() == 1
    assert await count(db) == 1
    await recovery.close()


async def test_segments_go_once_committed_and_open_records_are_carried_forward(
        db: Database, clock: FakeClock, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    j = journal(directory, clock, db, rotate_every=10.0)
    j.open()
    writer = UsageWriter(db, clock, journal=j)
    run = j.account("run-9", "u1", None, "debate/panel")
    run.charged(call(0.125), None, True)
    writer.record(event("req-a"))
    first = j.segments[0]
    clock.advance(11)
    j.tidy(writer.committed_seq)  # due: a new segment begins; the first holds a row not yet written
    assert len(j.segments) == 2
    run.charged(call(0.5), None, True)
    j.tidy(writer.committed_seq)
    assert first.exists()
    await writer.flush()
    j.tidy(writer.committed_seq)  # the row is in the database: the first segment goes
    assert not first.exists() and len(j.segments) == 1
    head = [orjson.loads(line) for line in segment_lines(j.segments[0])]
    assert [line[0] for line in head] == ["v", "a", "c"]
    assert head[1][3] == "run-9" and head[1][10] == 0.125  # the charges before the new segment, summed
    j.close(committed=0)

    other = journal(directory, clock, db)
    claims = claim_dead(directory, other.owner)
    assert len(claims) == 1
    contents = read(claims[0])
    claims[0].release(delete=False)
    assert [(r.request_id, r.cost_usd, r.status) for r in contents.rows] == [("run-9", 0.625, INTERRUPTED)]


async def test_an_idle_process_keeps_one_small_segment(db: Database, clock: FakeClock, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    j = journal(directory, clock, db, rotate_every=5.0)
    j.open()
    writer = UsageWriter(db, clock, journal=j)
    for i in range(50):
        writer.record(event(f"req-{i}"))
    await writer.flush()
    for _ in range(3):
        clock.advance(6)
        j.tidy(writer.committed_seq)
    assert len(j.segments) == 1
    assert [orjson.loads(line)[0] for line in segment_lines(j.segments[0])] == ["v"]
    j.close(writer.committed_seq)
    assert list(directory.iterdir()) == []


async def test_a_line_cut_short_is_skipped_and_the_rest_replayed(
        db: Database, clock: FakeClock, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    dead = journal(directory, clock, db)
    dead.open()
    dead.usage(event("req-1"))
    dead.usage(event("req-2"))
    path = dead.segments[0]
    dead.close(committed=0)
    with path.open("ab") as f:
        f.write(b'["u", 4, "req-3", 1700000000.0, "u1"')  # a line cut short (no newline), zeros after it
        f.write(bytes(100))
    other = journal(directory, clock, db)
    recovery = Recovery(other, db, UsageWriter(db, clock, journal=other), clock)
    await recovery.start()
    assert sorted(await rows(db)) == ["req-1", "req-2"]
    await recovery.close()


async def test_a_journal_of_another_database_is_left_alone(db: Database, clock: FakeClock, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    elsewhere = Journal(directory, clock, database="another-database", budgets="another-database")
    elsewhere.open()
    elsewhere.usage(event("req-x"))
    kept = elsewhere.segments
    elsewhere.close(committed=0)
    here = journal(directory, clock, db)
    recovery = Recovery(here, db, UsageWriter(db, clock, journal=here), clock)
    await recovery.start()
    assert await count(db) == 0 and all(p.exists() for p in kept)
    await recovery.close()


async def test_a_segment_unlinked_by_a_replayer_is_not_replayed_again(
        db: Database, clock: FakeClock, tmp_path: Path) -> None:
    """Two replayers: the second opened the file before the first deleted it, and locks it once the first let go.
    It sees the file unlinked and leaves it."""
    directory = tmp_path / "journal"
    dead = journal(directory, clock, db)
    dead.open()
    dead.usage(event("req-1"))
    path = dead.segments[0]
    dead.close(committed=0)
    first = claim_dead(directory, "first")
    assert len(first) == 1
    late = os.open(path, os.O_RDONLY)  # the second replayer's open, before the first deletes
    first[0].release(delete=True)
    try:
        from thinktank.accounts.journal import lock

        assert lock(late) and os.fstat(late).st_nlink == 0  # what claim_dead checks after locking
    finally:
        os.close(late)
    assert claim_dead(directory, "second") == []


async def test_a_usage_row_recorded_through_the_gate_is_journaled_before_it_is_written(
        db: Database, clock: FakeClock, tmp_path: Path) -> None:
    from thinktank.accounts.budgets import BudgetLedger, SqlBudgetStore
    from thinktank.accounts.governance import Gate
    from thinktank.accounts.principal import Principal
    from thinktank.accounts.ratelimit import RateLimiter

    directory = tmp_path / "journal"
    j = journal(directory, clock, db)
    j.open()
    writer = UsageWriter(db, clock, journal=j)
    gate = Gate(RateLimiter(None, {}), BudgetLedger(SqlBudgetStore(db, clock), clock), writer, clock, journal=j)
    principal = Principal(user_id="u1", key_id="k1", role="member", is_admin_key=False)

    async def answer(cost: float, status: int) -> str:
        async with gate.admitted(principal, "127.0.0.1", "m", 10) as admission:
            account = admission.ctx.account
            assert account is not None and admission.ctx.child("run-x").account is account
            account.charged(call(cost), None, False)
            admission.ctx.records.append(call(cost))
            admission.record(status)  # before the answer is sent
        return admission.request_id

    answered = await answer(0.3, 200)
    failed = await answer(0.2, 502)
    lines = [orjson.loads(line) for line in segment_lines(j.segments[0])]
    # One direct charge answered with 200: its charge line is its row. Another status: a row line too.
    assert [(line[0], line[2] if line[0] == "u" else line[3]) for line in lines[1:]] == [
        ("c", answered), ("c", failed), ("u", failed)]
    assert writer.pending == 2  # each recorded once, though the block's end finished it again
    j.close(committed=0)  # killed before the writer ran
    other = journal(directory, clock, db)
    recovery = Recovery(other, db, UsageWriter(db, clock, journal=other), clock)
    await recovery.start()
    assert await rows(db) == {answered: (0.3, 200, 5, 7), failed: (0.2, 502, 5, 7)}
    await recovery.close()
    shutil.rmtree(directory, ignore_errors=True)


async def test_a_full_segment_is_followed_at_once_and_nothing_counts_twice(
        db: Database, clock: FakeClock, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    dead = journal(directory, clock, db, capacity=4096)  # at least 64 KiB: a few hundred lines a segment
    dead.open()
    run = dead.account("run-1", "u1", "k1", "ensemble/council")
    for i in range(2000):
        run.charged(call(0.01, prompt=1, completion=2), None, True)
        dead.usage(event(f"req-{i}", cost=0.5))
    assert len(dead.segments) >= 4
    dead.close(committed=0)
    live = journal(directory, clock, db)
    recovery = Recovery(live, db, UsageWriter(db, clock, journal=live), clock)
    await recovery.start()
    found = await rows(db)
    assert len(found) == 2001
    cost, status, prompt, completion = found["run-1"]
    assert cost == pytest.approx(20.0) and (status, prompt, completion) == (INTERRUPTED, 2000, 4000)  # each once
    await recovery.close()
