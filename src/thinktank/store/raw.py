"""Writes through the database driver itself, for hot paths (usage rows, runs).

SQLAlchemy Core costs tens of microseconds of CPU per row and about a millisecond per statement
(compilation caches, parameter processing, result set-up) on the event loop. A :class:`Batch`
holds constant statements with their values as parameters; :func:`write` runs it as one
transaction:

- PostgreSQL: asyncpg on the event loop, ``executemany`` for rows;
- SQLite: the whole batch in one hand-off to a writer thread of its own with a plain ``sqlite3``
  connection, multi-row ``INSERT`` statements. aiosqlite would hand every statement, the commit
  and the pool's reset to its thread and back, each a pair of thread wake-ups, and on this kind of
  machine a wake-up costs more CPU than the statement.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .db import Database

__all__ = ["Batch", "GuardFailed", "Insert", "SqliteWriter", "write"]

_SQLITE_MAX_PARAMS = 32_766  # SQLite >= 3.32


class GuardFailed(Exception):
    """A batch's guard changed no row: nothing of the batch was written."""


@dataclass(frozen=True, slots=True)
class Insert:
    """``INSERT INTO table (columns) VALUES ...``; with ``ignore_conflict`` (the unique columns), a row
    that is already there is skipped (``INSERT OR IGNORE`` / ``ON CONFLICT (...) DO NOTHING``)."""

    table: str
    columns: tuple[str, ...]
    ignore_conflict: tuple[str, ...] = ()

    @property
    def dollar(self) -> str:
        return _dollar_insert(self)

    @property
    def rows_per_statement(self) -> int:
        return min(500, _SQLITE_MAX_PARAMS // len(self.columns))

    def sqlite(self, rows: int) -> str:
        return _sqlite_insert(self, rows)


@functools.lru_cache(maxsize=64)
def _dollar_insert(stmt: Insert) -> str:
    values = ", ".join(f"${i + 1}" for i in range(len(stmt.columns)))
    # Table and column names are constants of this code; values always travel as parameters.
    sql = f"INSERT INTO {stmt.table} ({', '.join(stmt.columns)}) VALUES ({values})"  # noqa: S608
    if stmt.ignore_conflict:
        sql += f" ON CONFLICT ({', '.join(stmt.ignore_conflict)}) DO NOTHING"
    return sql


@functools.lru_cache(maxsize=256)
def _sqlite_insert(stmt: Insert, rows: int) -> str:
    row = "(" + ", ".join("?" * len(stmt.columns)) + ")"
    verb = "INSERT OR IGNORE" if stmt.ignore_conflict else "INSERT"
    return f"{verb} INTO {stmt.table} ({', '.join(stmt.columns)}) VALUES " + ", ".join([row] * rows)


@functools.lru_cache(maxsize=64)
def _dollars(sql: str) -> str:
    """``?`` placeholders as asyncpg's ``$1, $2, ...`` (the statements here hold no literal ``?``)."""
    parts = sql.split("?")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


@dataclass(slots=True)
class Batch:
    """Statements for one transaction, run in order by :func:`write`. Statements other than inserts
    are written with ``?`` placeholders."""

    steps: list[tuple[str, Any, Any]] = field(default_factory=list)

    def insert(self, stmt: Insert, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.steps.append(("insert", stmt, rows))

    def execute(self, sql: str, params: Sequence[Any]) -> None:
        self.steps.append(("execute", sql, params))

    def guard(self, sql: str, params: Sequence[Any]) -> None:
        """An UPDATE that must change a row, or :func:`write` raises GuardFailed and writes nothing."""
        self.steps.append(("guard", sql, params))

    def value(self, sql: str, params: Sequence[Any]) -> None:
        """A query whose first column of the first row (or None) is returned by :func:`write`."""
        self.steps.append(("value", sql, params))


async def write(db: Database, batch: Batch) -> list[Any]:
    """Run ``batch`` as one transaction on ``db``: all of it or, if a statement fails, none of it.
    Returns the values its queries asked for."""
    if not batch.steps:
        return []
    if db.dialect == "sqlite":
        return await db.sqlite_writer.run(batch)
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        values: list[Any] = []
        async with driver.transaction():
            for kind, a, b in batch.steps:
                if kind == "insert":
                    await driver.executemany(a.dollar, b)
                elif kind == "execute":
                    await driver.execute(_dollars(a), *b)
                elif kind == "guard":
                    status = await driver.execute(_dollars(a), *b)  # "UPDATE <rows>"
                    if status.rsplit(" ", 1)[-1] == "0":
                        raise GuardFailed(a)
                else:
                    values.append(await driver.fetchval(_dollars(a), *b))
        return values


class SqliteWriter:
    """One thread with its own ``sqlite3`` connection to the database file, for :func:`write`."""

    def __init__(self, path: str, pragmas: Sequence[str]) -> None:
        self._path = path
        self._pragmas = tuple(pragmas)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thinktank-sqlite-writer")
        self._conn: sqlite3.Connection | None = None  # opened and used only in the executor's thread

    async def run(self, batch: Batch) -> list[Any]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, batch)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None)  # transactions are explicit below
            for pragma in self._pragmas:
                conn.execute(pragma)
            self._conn = conn
        return self._conn

    def _run(self, batch: Batch) -> list[Any]:
        conn = self._connection()
        values: list[Any] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for kind, a, b in batch.steps:
                if kind == "insert":
                    step = a.rows_per_statement
                    for i in range(0, len(b), step):
                        chunk = b[i : i + step]
                        conn.execute(a.sqlite(len(chunk)), [v for r in chunk for v in r])
                elif kind == "execute":
                    conn.execute(a, b)
                elif kind == "guard":
                    if conn.execute(a, b).rowcount == 0:
                        raise GuardFailed(a)
                else:
                    row = conn.execute(a, b).fetchone()
                    values.append(None if row is None else row[0])
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return values

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)
