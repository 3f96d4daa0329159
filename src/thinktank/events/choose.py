"""Which bus a process uses (``THINKTANK_EVENT_BUS``)."""

from __future__ import annotations

from typing import Literal

from ..errors import ConfigError
from .bus import EventBus, LocalBus

__all__ = ["BusChoice", "build_bus"]

BusChoice = Literal["auto", "local", "postgres", "redis"]


def build_bus(choice: BusChoice, *, database_url: str, redis_url: str | None, redis_prefix: str = "tt:ev:") -> EventBus:
    """``auto``: Redis when it is configured, else PostgreSQL when the database is, else this process only
    (SQLite: followers in other processes poll the database). Nothing connects before ``start()``."""
    is_pg = database_url.startswith(("postgresql", "postgres:"))
    if choice == "auto":
        choice = "redis" if redis_url else "postgres" if is_pg else "local"
    if choice == "redis":
        if not redis_url:
            raise ConfigError("THINKTANK_EVENT_BUS=redis needs THINKTANK_REDIS_URL.")
        from .redis_bus import RedisBus

        return RedisBus(redis_url, prefix=redis_prefix)
    if choice == "postgres":
        if not is_pg:
            raise ConfigError("THINKTANK_EVENT_BUS=postgres needs a PostgreSQL THINKTANK_DATABASE_URL.")
        from .pg_bus import PostgresBus, asyncpg_dsn

        return PostgresBus(asyncpg_dsn(database_url))
    return LocalBus()
