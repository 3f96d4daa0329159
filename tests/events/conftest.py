"""Real PostgreSQL databases and the real Redis for the event bus tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from thinktank.events.pg_bus import PostgresBus, asyncpg_dsn
from thinktank.events.redis_bus import RedisBus


@pytest.fixture
async def pg_url(pg_template: str) -> AsyncIterator[str]:
    """A migrated PostgreSQL database of this test's own."""
    from ..fakes.databases import clone_pg, drop_pg

    name, url = await clone_pg(pg_template)
    try:
        yield url
    finally:
        await drop_pg(name)


@pytest.fixture
async def pg_bus(pg_url: str) -> AsyncIterator[PostgresBus]:
    bus = PostgresBus(asyncpg_dsn(pg_url), keepalive=1.0)
    await bus.start()
    yield bus
    await bus.close()


@pytest.fixture
def redis_prefix() -> str:
    return f"tt-test-{secrets.token_hex(4)}:"


@pytest.fixture
async def redis_bus(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisBus]:
    bus = RedisBus(redis_url, prefix=redis_prefix, keepalive=1.0, client_name=f"tt-events-{secrets.token_hex(4)}")
    await bus.start()
    yield bus
    await bus.close()
