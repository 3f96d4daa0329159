from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, select, text

from thinktank.store.db import Database
from thinktank.store.migrate import upgrade_async
from thinktank.store.tables import SYSTEM_USER_ID, User


async def test_migrations_create_every_table_and_are_idempotent(db: Database, db_url: str) -> None:
    await upgrade_async(db_url)  # a second run changes nothing
    async with db.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"users", "teams", "sessions", "api_keys", "budgets", "usage", "alembic_version"} <= tables
    async with db.session() as s:
        system = (await s.execute(select(User).where(User.id == SYSTEM_USER_ID))).scalar_one()
    assert system.password_hash is None and system.role == "admin"


async def test_sqlite_runs_in_wal_mode(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    await upgrade_async(url)
    db = Database(url)
    async with db.engine.connect() as conn:
        mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
        fk = (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one()
    await db.close()
    assert (mode, fk) == ("wal", 1)


def test_head_constant_matches_alembic() -> None:
    from alembic.script import ScriptDirectory

    from thinktank.store.migrate import HEAD, alembic_config

    assert ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() == HEAD


async def test_at_head(db: Database, tmp_path: object) -> None:
    from pathlib import Path

    from thinktank.store.migrate import at_head

    assert await at_head(db)
    assert isinstance(tmp_path, Path)
    fresh = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert not await at_head(fresh)
    await fresh.close()


async def test_every_migrated_table_matches_the_models(db: Database) -> None:
    """What ``alembic check`` checks, for every table the models define (column types included: token
    counts and rate limits are 64-bit on PostgreSQL)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from thinktank.store.tables import Base

    def diffs(connection: Any) -> list[Any]:
        ctx = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": _models_only})
        return list(compare_metadata(ctx, Base.metadata))

    async with db.engine.connect() as conn:
        assert await conn.run_sync(diffs) == []


def _models_only(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Tables made by hand at run time (pgvector's ``kb_vectors``) are not the models'."""
    return not (type_ == "table" and name is not None and name.startswith("kb_vectors"))
