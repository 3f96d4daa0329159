"""Writes through the database driver itself, for hot paths (usage rows, runs).

SQLAlchemy Core costs tens of microseconds of CPU per row and about a millisecond per statement
(compilation caches, parameter processing, result set-up) on the event loop. The writers here send
constant statements with their values as parameters, in each driver's placeholder style: SQLite
(aiosqlite) gets one multi-row ``INSERT`` per chunk, because every statement is a hand-off to
aiosqlite's thread; PostgreSQL (asyncpg) gets ``executemany``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from .db import Database

__all__ = ["Insert", "RawWriter", "raw_transaction"]

_SQLITE_MAX_PARAMS = 32_766  # SQLite >= 3.32


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


class RawWriter:
    """Statements on one driver connection, inside the transaction :func:`raw_transaction` opened."""

    def __init__(self, dialect: str, driver: Any) -> None:
        self.sqlite = dialect == "sqlite"
        self._driver = driver

    async def insert(self, stmt: Insert, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if not self.sqlite:
            await self._driver.executemany(stmt.dollar, rows)
            return
        step = stmt.rows_per_statement
        for i in range(0, len(rows), step):
            chunk = rows[i : i + step]
            await self._driver.execute(stmt.sqlite(len(chunk)), [v for r in chunk for v in r])

    async def execute(self, sql: str, params: Sequence[Any]) -> None:
        """One statement written with ``?`` placeholders."""
        if self.sqlite:
            await self._driver.execute(sql, params)
        else:
            await self._driver.execute(_dollars(sql), *params)

    async def fetchval(self, sql: str, params: Sequence[Any]) -> Any:
        """The first column of the first row, or None."""
        if not self.sqlite:
            return await self._driver.fetchval(_dollars(sql), *params)
        async with self._driver.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]


@asynccontextmanager
async def raw_transaction(db: Database) -> AsyncIterator[RawWriter]:
    """One transaction on a pooled connection's driver: committed if the block succeeds, rolled
    back if it raises."""
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        writer = RawWriter(db.dialect, driver)
        if writer.sqlite:
            try:
                yield writer
            except BaseException:
                await driver.rollback()
                raise
            await driver.commit()
        else:
            async with driver.transaction():
                yield writer
