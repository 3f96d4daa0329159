"""The raw-driver writer on SQLite and PostgreSQL: multi-statement chunks, conflicts, rollback."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest
from sqlalchemy import text

from thinktank.store.db import Database
from thinktank.store.raw import Insert, raw_transaction

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
    async with raw_transaction(db) as tx:
        await tx.insert(_RUNS, [_run("run_a")])
        await tx.insert(_DOCS, rows)
        await tx.insert(_DOCS, [])  # nothing to do
    assert await _count(db, "run_documents") == len(rows)
    async with db.engine.connect() as conn:
        got = (await conn.execute(text(
            "SELECT content, created_at FROM run_documents WHERE name = 'doc1000.md'"))).one()
    assert tuple(got) == ("text 1000", 1000.0)


async def test_execute_and_fetchval_take_question_mark_placeholders(db: Database) -> None:
    async with raw_transaction(db) as tx:
        await tx.insert(_RUNS, [_run("run_a")])
        await tx.execute("UPDATE runs SET status = ?, cost_usd = ? WHERE id = ?", ("completed", 0.25, "run_a"))
        assert await tx.fetchval("SELECT cost_usd FROM runs WHERE id = ? AND status = ?",
                                 ("run_a", "completed")) == 0.25
        assert await tx.fetchval("SELECT status FROM runs WHERE id = ?", ("run_missing",)) is None


async def test_a_failure_rolls_back_everything_the_transaction_wrote(db: Database) -> None:
    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)) as info:
        async with raw_transaction(db) as tx:
            await tx.insert(_RUNS, [_run("run_a")])
            await tx.insert(_DOCS, [("run_a", "plan.md", "x", 1.0), ("run_a", "plan.md", "y", 1.0)])  # same key
    assert "unique" in str(info.value).lower() or "duplicate" in str(info.value).lower()
    assert isinstance(info.value, sqlite3.IntegrityError) == (db.dialect == "sqlite")
    assert await _count(db, "runs") == 0 and await _count(db, "run_documents") == 0
    # The pooled connection is usable afterwards.
    async with raw_transaction(db) as tx:
        await tx.insert(_RUNS, [_run("run_b")])
    assert await _count(db, "runs") == 1


async def test_ignore_conflict_skips_rows_already_there(db: Database) -> None:
    usage = Insert("usage", ("request_id", "ts", "day", "model", "prompt_tokens", "completion_tokens", "cost_usd",
                             "latency_ms", "status", "cache_hit", "stream"), ignore_conflict=("request_id",))
    row = ("req_1", 1.0, 0, "m", 1, 2, 0.5, 3.0, 200, False, False)
    async with raw_transaction(db) as tx:
        await tx.insert(usage, [row])
    async with raw_transaction(db) as tx:
        await tx.insert(usage, [row, ("req_2", *row[1:])])
    assert await _count(db, "usage") == 2
