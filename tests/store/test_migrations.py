from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import inspect, select, text

import thinktank.store
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
    """Tables made by hand at run time (pgvector's ``kb_vectors``) and procrastinate's (the job queue) are not
    the models'."""
    return not (type_ == "table" and name is not None and name.startswith(("kb_vectors", "procrastinate_")))


def test_migrations_import_no_thinktank_code() -> None:
    """A migration does what it did when it was written: it may not reach into live code that changes later."""
    versions = sorted((Path(thinktank.store.__file__).parent / "migrations" / "versions").glob("*.py"))
    assert len(versions) >= 7
    for path in versions:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "thinktank" or n.startswith("thinktank.") for n in names), (path.name, names)
            assert not (isinstance(node, ast.ImportFrom) and node.level), (path.name, "relative import")


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no tables yet: SQLite file, then a real PostgreSQL database."""
    from ..fakes.databases import drop_pg, make_empty_pg

    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    name, url = await make_empty_pg()
    try:
        yield url
    finally:
        await drop_pg(name)


async def test_0005_counts_the_terms_of_existing_documents(empty_db_url: str) -> None:
    """Documents stored before 0005 get their BM25 terms, counts and length from the migration itself: folded
    (case, diacritics, compatibility forms), split on letters and digits, stop words left out of the terms but
    counted in the length, Porter-stemmed, distinct terms in order of first appearance."""
    await upgrade_async(empty_db_url, "0004")
    db = Database(empty_db_url)
    try:
        async with db.engine.begin() as conn:
            owner = (await conn.execute(text("SELECT id FROM users"))).scalars().first()
            await conn.execute(text(
                "INSERT INTO knowledge_bases (id, owner_id, name, description, embedding_model, chunk_tokens, "
                "chunk_overlap, index_version, created_at, updated_at) "
                "VALUES ('kb1', :owner, 'kb', '', 'emb', 256, 32, 1, 0, 0)"), {"owner": owner})
            for doc in ("d1", "d2"):
                await conn.execute(text(
                    "INSERT INTO kb_documents (id, kb_id, source, title, kind, content_hash, size_bytes, chunk_count, "
                    "status, submitted_by, created_at, updated_at) "
                    "VALUES (:id, 'kb1', :id, :id, 'text', 'h', 1, 0, 'ready', :owner, 0, 0)"),
                    {"id": doc, "owner": owner})
            await conn.execute(text(
                "INSERT INTO kb_document_texts (document_id, kb_id, title, body) VALUES "
                "('d1', 'kb1', 'Cats and Mice', 'The cats chased the mice. Café owners were running; CATS! "
                "Naïve_42 x²'), ('d2', 'kb1', '', '')"))
        await upgrade_async(empty_db_url, "0005")
        async with db.engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT document_id, terms, term_counts, length FROM kb_document_texts ORDER BY document_id"))).all()
    finally:
        await db.close()
    counted = {doc: (terms, np.frombuffer(counts, "<u4").tolist(), length) for doc, terms, counts, length in rows}
    assert counted == {
        "d1": ("cat mice chase cafe owner were run naiv 42 x2", [3, 2, 1, 1, 1, 1, 1, 1, 1, 1], 16),
        "d2": ("", [], 0),
    }
