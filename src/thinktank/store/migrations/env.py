"""Alembic environment: runs the migrations over thinktank's async engine (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from thinktank.store.db import Database, normalize_url
from thinktank.store.tables import Base

config = context.config
target_metadata = Base.metadata

MIGRATION_LOCK = 0x7468696E6B74616E  # "thinktan"
"""The PostgreSQL advisory lock held while migrating (a transaction-scoped lock: released at the commit)."""


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to the migrations")
    return normalize_url(str(url))


def _include(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Autogenerate compares the ORM tables only. Made by hand: ``kb_vectors`` (at run time, where
    pgvector is available), procrastinate's job queue (0011, on PostgreSQL) and, below revision 0005, SQLite's
    FTS5 tables with their shadow tables."""
    return not (type_ == "table" and name is not None
                and name.startswith(("kb_vectors", "kb_chunks_fts", "kb_documents_fts", "procrastinate_")))


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_include,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Servers that start at once on one database (replicas, hosts) migrate one after the other: the
            # others wait here, then read the version the first one committed and have nothing left to do.
            # Without it, all but one fail on a fresh database (the tables already exist).
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def _run_async() -> None:
    db = Database(_url())  # the same engine set-up as the app (SQLite: WAL, foreign keys)
    async with db.engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await db.close()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
