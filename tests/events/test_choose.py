"""Which bus a process uses (``THINKTANK_EVENT_BUS``), and the settings that cannot work."""

from __future__ import annotations

import pytest

from thinktank.errors import ConfigError
from thinktank.events import build_bus
from thinktank.events.bus import LocalBus
from thinktank.events.pg_bus import PostgresBus, pg_channel
from thinktank.events.redis_bus import RedisBus
from thinktank.settings import Settings

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/x"
SQLITE = "sqlite+aiosqlite:////tmp/x.db"
REDIS = "redis://127.0.0.1:6379/0"


def test_auto_prefers_redis_then_postgres_then_this_process() -> None:
    assert isinstance(build_bus("auto", database_url=PG, redis_url=REDIS), RedisBus)
    assert isinstance(build_bus("auto", database_url=PG, redis_url=None), PostgresBus)
    assert isinstance(build_bus("auto", database_url=SQLITE, redis_url=None), LocalBus)
    assert isinstance(build_bus("auto", database_url=SQLITE, redis_url=REDIS), RedisBus)
    assert isinstance(build_bus("postgres", database_url=PG, redis_url=REDIS), PostgresBus)
    assert isinstance(build_bus("local", database_url=PG, redis_url=REDIS), LocalBus)


def test_a_bus_without_its_server_is_refused_with_the_setting_to_fix() -> None:
    with pytest.raises(ConfigError, match="THINKTANK_REDIS_URL"):
        build_bus("redis", database_url=PG, redis_url=None)
    with pytest.raises(ConfigError, match="PostgreSQL THINKTANK_DATABASE_URL"):
        build_bus("postgres", database_url=SQLITE, redis_url=None)


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINKTANK_EVENT_BUS", "postgres")
    assert Settings().event_bus == "postgres"
    monkeypatch.setenv("THINKTANK_EVENT_BUS", "kafka")
    with pytest.raises(ValueError, match="event_bus"):
        Settings()


def test_postgres_channel_names_fit_an_identifier() -> None:
    assert pg_channel("run.run_0123456789abcdef") == "tt:run.run_0123456789abcdef"
    long = pg_channel("x" * 200)
    assert len(long.encode()) <= 63 and long != pg_channel("x" * 201)
    assert pg_channel("spaces and ünïcode") != pg_channel("spaces and unicode")
