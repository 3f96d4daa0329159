"""Real databases for tests: a fresh SQLite file, or a fresh PostgreSQL database cloned from a
migrated template. PostgreSQL must answer at THINKTANK_TEST_PG (default the local server);
a missing server fails the test with a message saying so, never a silent skip."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import asyncpg

from thinktank.store.migrate import upgrade

PG_ADMIN_URL = os.environ.get("THINKTANK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_url(name: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}"


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"PostgreSQL is needed for the persistence tests and does not answer at {PG_ADMIN_URL} ({exc}). "
            "Start it (see ../shared/services.md) or point THINKTANK_TEST_PG at one."
        ) from exc


async def make_pg_template() -> str:
    """A migrated template database for this test run; returns its name."""
    name = f"tt_tmpl_{os.getpid()}_{secrets.token_hex(3)}"
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    import asyncio

    await asyncio.to_thread(upgrade, _pg_url(name))
    return name


async def clone_pg(template: str) -> tuple[str, str]:
    name = f"tt_{secrets.token_hex(6)}"
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    return name, _pg_url(name)


async def make_empty_pg() -> tuple[str, str]:
    """A fresh PostgreSQL database with no tables (for migrating step by step); returns (name, url)."""
    name = f"tt_empty_{secrets.token_hex(6)}"
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, _pg_url(name)


async def drop_pg(name: str) -> None:
    conn = await _admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def make_sqlite(tmp: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp / 'thinktank.db'}"
    upgrade(url)
    return url
