"""Raw-driver write batches on SQLite and PostgreSQL: multi-statement chunks, conflicts, rollback."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest
from sqlalchemy import text

from thinktank.errors import ConfigError
from thinktank.store.db import Database
from thinktank.store.raw import Batch, Insert, write

_DOCS = Insert("run_documents", ("run_id", "name", "content", "created_at"))
_RUNS = Insert("runs", (
    "id", "user_id", "kind", "name", "status", "question", "request", "config", "cost_usd", "prompt_tokens",
    "completion_tokens", "cancel_requested", "created_at", "heartbeat_at",
))


def _run(run_id: str) -> tuple[object, ...]:
    return (run_id, "usr_1", "ensemble", "t", "running", "q", '{"a": 1}', "{}", 0.0, 0, 0, False, 1.0, 1.0)


async def _count(db: Database, table: str) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def test_rows_beyond_one_statement_are_all_written(db: Database) -> None:
    rows = [("run_a", f"doc{i}.md", f"text {i}", float(i)) for i in range(_DOCS.rows_per_statement * 2 + 7)]
    batch = Batch()
    batch.insert(_RUNS, [_run("run_a")])
    batch.insert(_DOCS, rows)
    batch.insert(_DOCS, [])  # nothing to do
    assert await write(db, batch) == []
    assert await _count(db, "run_documents") == len(rows)
    async with db.engine.connect() as conn:
        got = (await conn.execute(text(
            "SELECT content, created_at FROM run_documents WHERE name = 'doc1000.md'"))).one()
    assert tuple(got) == ("text 1000", 1000.0)


async def test_statements_take_question_mark_placeholders_and_values_come_back_in_order(db: Database) -> None:
    batch = Batch()
    batch.insert(_RUNS, [_run("run_a")])
    batch.execute("UPDATE runs SET status = ?, cost_usd = ? WHERE id = ?", ("completed", 0.25, "run_a"))
    batch.value("SELECT cost_usd FROM runs WHERE id = ? AND status = ?", ("run_a", "completed"))
    batch.value("SELECT status FROM runs WHERE id = ?", ("run_missing",))
    batch.value("SELECT status FROM runs WHERE id = ?", ("run_a",))
    assert await write(db, batch) == [0.25, None, "completed"]
    assert await write(db, Batch()) == []


async def test_a_failure_rolls_back_everything_the_batch_wrote(db: Database) -> None:
    batch = Batch()
    batch.insert(_RUNS, [_run("run_a")])
    batch.insert(_DOCS, [("run_a", "plan.md", "x", 1.0), ("run_a", "plan.md", "y", 1.0)])  # the same key twice
    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)) as info:
        await write(db, batch)
    assert "unique" in str(info.value).lower() or "duplicate" in str(info.value).lower()
    assert isinstance(info.value, sqlite3.IntegrityError) == (db.dialect == "sqlite")
    assert await _count(db, "runs") == 0 and await _count(db, "run_documents") == 0
    # The writer (its thread and connection, or the pooled connection) is usable afterwards.
    again = Batch()
    again.insert(_RUNS, [_run("run_b")])
    await write(db, again)
    assert await _count(db, "runs") == 1


async def test_ignore_conflict_skips_rows_already_there(db: Database) -> None:
    usage = Insert("usage", ("request_id", "ts", "day", "model", "prompt_tokens", "completion_tokens", "cost_usd",
                             "latency_ms", "status", "cache_hit", "stream"), ignore_conflict=("request_id",))
    row = ("req_1", 1.0, 0, "m", 1, 2, 0.5, 3.0, 200, False, False)
    first, second = Batch(), Batch()
    first.insert(usage, [row])
    second.insert(usage, [row, ("req_2", *row[1:])])
    await write(db, first)
    await write(db, second)
    assert await _count(db, "usage") == 2


async def test_foreign_keys_hold_on_the_sqlite_writer_too(db: Database) -> None:
    batch = Batch()
    batch.insert(_DOCS, [("run_nowhere", "plan.md", "x", 1.0)])
    with pytest.raises((sqlite3.IntegrityError, asyncpg.ForeignKeyViolationError)):
        await write(db, batch)


def test_sqlite_needs_a_file() -> None:
    with pytest.raises(ConfigError, match="needs a database file"):
        Database("sqlite:///:memory:")
