"""The conversation tables as the migrations make them are the tables of the ORM (what ``alembic check``
checks), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from thinktank.store.db import Database
from thinktank.store.tables import Base

TABLES = {"chat_personas", "threads", "thread_messages", "thread_summaries", "memory_facts", "memory_settings"}


def _table_of(diff: Any) -> str | None:
    """The table a diff from ``compare_metadata`` is about (diffs of columns come in lists)."""
    item = diff[0] if isinstance(diff, list) else diff
    for part in item[1:]:
        name = getattr(part, "name", None) if not isinstance(part, str) else None
        table = getattr(part, "table", None)
        if table is not None and getattr(table, "name", None):
            return str(table.name)
        if name and name in TABLES:
            return str(name)
        if isinstance(part, str) and part in TABLES:
            return part
    return None


async def test_the_migrated_tables_match_the_models(db: Database) -> None:
    def diffs(connection: Any) -> tuple[set[str], list[Any]]:
        ctx = MigrationContext.configure(connection, opts={"compare_type": True})
        found = [d for d in compare_metadata(ctx, Base.metadata) if _table_of(d) in TABLES]
        return set(inspect(connection).get_table_names()), found

    async with db.engine.connect() as conn:
        tables, found = await conn.run_sync(diffs)
    assert tables >= TABLES
    assert found == []
