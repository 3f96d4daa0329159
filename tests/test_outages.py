"""``thinktank.outages.unavailable``: which failures mean the database or Redis is down (a 503), which are bugs
(a 500 as ever). Every failure here is real: a refused connection, a server shut down under a query, a statement
PostgreSQL refuses."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from deploy.multihost.services import PrivatePostgres, free_port
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, ProgrammingError

from thinktank.outages import OutageLog, unavailable
from thinktank.store.db import Database

from .fakes.clock import FakeClock


async def _failure(coro: object) -> BaseException:
    try:
        await coro  # type: ignore[misc]
    except Exception as exc:
        return exc
    raise AssertionError("it did not fail")


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    yield server
    server.close()


async def test_a_refused_database_connection_is_the_database_unavailable() -> None:
    db = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    try:
        async def query() -> None:
            async with db.session() as s:
                await s.execute(text("SELECT 1"))

        exc = await _failure(query())
    finally:
        await db.close()
    assert isinstance(exc, OSError)  # neither SQLAlchemy nor asyncpg wraps it
    down = unavailable(exc)
    assert down is not None
    assert (down.status, down.type, down.code, down.dependency) == (
        503, "service_unavailable", "database_unavailable", "database")
    assert int(down.headers()["Retry-After"]) >= 1
    assert "database" in down.message
    assert "127.0.0.1" not in down.to_body()["error"]["message"]  # where it runs is for the log, not the client


async def test_a_session_ended_by_a_shutdown_is_the_database_unavailable_and_a_bad_statement_is_not(
        pg: PrivatePostgres) -> None:
    db = Database(pg.url)
    try:
        async def sleep() -> None:
            async with db.session() as s:
                await s.execute(text("SELECT pg_sleep(5)"))

        async def bad() -> None:
            async with db.session() as s:
                await s.execute(text("SELEC 1"))

        async def twice() -> None:
            async with db.session() as s:
                await s.execute(text("CREATE TEMP TABLE t (id int PRIMARY KEY)"))
                await s.execute(text("INSERT INTO t VALUES (1)"))
                await s.execute(text("INSERT INTO t VALUES (1)"))

        syntax = await _failure(bad())
        duplicate = await _failure(twice())
        sleeping = asyncio.create_task(_failure(sleep()))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(pg.stop, "fast")
        try:
            ended = await sleeping
            refused = await _failure(bad())
        finally:
            await asyncio.to_thread(pg.start)
        after = await _failure(bad())  # the pool replaced its dead connections: PostgreSQL's own answer again
    finally:
        await db.close()
    assert isinstance(syntax, ProgrammingError) and unavailable(syntax) is None
    assert isinstance(duplicate, IntegrityError) and unavailable(duplicate) is None
    assert isinstance(after, ProgrammingError) and unavailable(after) is None
    for exc in (ended, refused):
        down = unavailable(exc)
        assert down is not None and down.code == "database_unavailable", repr(exc)


async def test_redis_refusing_connections_is_redis_unavailable_and_other_errors_are_not() -> None:
    client = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        exc = await _failure(client.ping())
    finally:
        await client.aclose()
    down = unavailable(exc)
    assert down is not None and (down.code, down.dependency) == ("redis_unavailable", "redis")
    assert unavailable(ConnectionRefusedError("raised by thinktank's own code, not a client's")) is None
    assert unavailable(ValueError("a bug")) is None


def test_outages_are_logged_once_in_a_while(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    outages = OutageLog(clock, every=10)
    down = unavailable(_refused_redis())
    assert down is not None
    with caplog.at_level("WARNING", "thinktank.outage"):
        for _ in range(5):
            outages.failed(down, "GET /x")
        clock.advance(11)
        outages.failed(down, "GET /x")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "GET /x: Redis is unavailable (ConnectionError" in lines[0]
    assert "4 more requests failed" in lines[1]


def _refused_redis() -> BaseException:
    async def ping() -> BaseException:
        client = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")
        try:
            return await _failure(client.ping())
        finally:
            await client.aclose()

    return asyncio.run(ping())
