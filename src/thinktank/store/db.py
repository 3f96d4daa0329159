"""Engines and sessions.

SQLite (the embedded default) runs in WAL mode with a busy timeout so several processes can
share one file; PostgreSQL is used as it is. The same migrations serve both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from ..errors import ConfigError
from .raw import SqliteWriter

__all__ = ["SQLITE_PRAGMAS", "Database", "default_database_url", "normalize_url"]


def default_database_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'thinktank.db'}"


def normalize_url(url: str) -> str:
    """Accept the usual spellings and pick the async driver: ``postgresql://`` -> asyncpg."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.split(":///", 1)[1]
    return url


SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON", "PRAGMA busy_timeout=10000",
)


CONNECT_TIMEOUT = 10.0
"""Seconds to open a PostgreSQL connection (asyncpg's default is 60): a server that does not answer at all (a
host gone, packets dropped) fails the request with a 503 after this long rather than holding it for a minute."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


class Database:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {}
        self._sqlite_path: str | None = None
        self._sqlite_writer: SqliteWriter | None = None
        if self.dialect == "sqlite":
            if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file:"):
                raise ConfigError(f"SQLite needs a database file, e.g. sqlite:///data/thinktank.db (got {url!r})")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self._sqlite_path = parsed.database
        else:
            # pool_pre_ping: a connection the server dropped (a restart, a failover) is replaced when next taken
            # from the pool, so the pool recovers on its own once the server answers again.
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
            if parsed.get_driver_name() == "asyncpg":  # an unreachable server fails a request in bounded time
                kwargs["connect_args"] = {"timeout": CONNECT_TIMEOUT}
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed on success, rolled back on any error."""
        async with self.sessions() as session, session.begin():
            yield session

    @property
    def sqlite_writer(self) -> SqliteWriter:
        """The thread that runs raw-driver write batches on SQLite (:func:`.raw.write`)."""
        if self._sqlite_path is None:
            raise RuntimeError("not a SQLite database")
        if self._sqlite_writer is None:
            self._sqlite_writer = SqliteWriter(self._sqlite_path, SQLITE_PRAGMAS)
        return self._sqlite_writer

    async def close(self) -> None:
        if self._sqlite_writer is not None:
            await self._sqlite_writer.close()
            self._sqlite_writer = None
        await self.engine.dispose()
