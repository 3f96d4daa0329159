"""Knowledge bases on PostgreSQL with pgvector (a private PostgreSQL 16 from the ``pgserver`` package):
vectors written with the chunks, the HNSW index of a large knowledge base, searches through it."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from thinktank.accounts.principal import Principal
from thinktank.knowledge.embeddings import LOCAL_MODEL, Embedder, LocalEmbedder
from thinktank.knowledge.index import IndexCache
from thinktank.knowledge.ingest import Source
from thinktank.knowledge.pgvector import PgVectors, vector_literal
from thinktank.knowledge.retrieval import Retriever, SearchOptions
from thinktank.knowledge.service import KnowledgeService
from thinktank.store.db import Database
from thinktank.store.migrate import upgrade
from thinktank.store.tables import User

from ..fakes.clock import FakeClock

OWNER = Principal(user_id="usr_owner", role="member", email="owner@example.com")
DOCS = {
    "cats.md": "# Cats\n\nCats are small domesticated felines that purr and hunt mice.\n\n"
               "## Care\n\nFeed a cat twice a day and keep its litter box clean.",
    "rust.md": "# Rust\n\nRust is a systems programming language with a borrow checker that prevents data races.",
    "bread.txt": "Sourdough bread rises thanks to wild yeast and lactic acid bacteria in the starter.",
    "tides.txt": "Ocean tides are caused by the gravitational pull of the moon on the seas.",
}


@pytest.fixture(scope="module")
def pgvector_server() -> Iterator[str]:
    """A private PostgreSQL 16 with pgvector, migrated; its URL."""
    from pgserver.postgres_server import get_server

    # Not under pytest's folder: as root, pgserver runs PostgreSQL as its own user, who must reach the data.
    folder = Path(tempfile.mkdtemp(prefix="tt-pgvector-"))
    folder.chmod(0o755)
    server = get_server(folder, cleanup_mode="delete")
    server.psql("CREATE DATABASE kb;")
    url = server.get_uri("kb")
    upgrade(url)
    yield url
    server.cleanup()


@pytest.fixture
async def pg_db(pgvector_server: str) -> AsyncIterator[Database]:
    db = Database(pgvector_server)
    async with db.session() as s:
        await s.execute(text("TRUNCATE knowledge_bases, users CASCADE"))
        s.add(User(id=OWNER.user_id, email=OWNER.email, role="member", created_at=1.0))
    yield db
    await db.close()


class Shorter:
    """The local model's first 64 components, normalised: another embedding model, of another size."""

    name, dimension = "test/short-64", 64

    def __init__(self, inner: LocalEmbedder) -> None:
        self.inner, self.max_tokens = inner, inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        cut: np.ndarray = (await self.inner.embed(texts))[:, :64]
        out: np.ndarray = cut / np.linalg.norm(cut, axis=1, keepdims=True)
        return out


def service(db: Database, embedder: LocalEmbedder, ann_min_chunks: int) -> KnowledgeService:
    def embedder_for(model: str, _ctx: object = None) -> Embedder:
        assert model in (LOCAL_MODEL, Shorter.name)
        return embedder if model == LOCAL_MODEL else Shorter(embedder)

    retriever = Retriever(db)
    assert retriever.cache.pg is not None
    retriever.cache.pg.ann_min_chunks = ann_min_chunks
    return KnowledgeService(db, FakeClock(), embedder_for, retriever=retriever)


async def test_vectors_go_to_pgvector_and_a_large_knowledge_base_is_searched_through_hnsw(
    pg_db: Database, local_embedder: LocalEmbedder,
) -> None:
    kb_service = service(pg_db, local_embedder, ann_min_chunks=10)
    pg = kb_service.retriever.cache.pg
    assert pg is not None and await pg.available()
    kb = (await kb_service.create(OWNER, "notes", chunk_tokens=40, chunk_overlap=5)).kb
    await kb_service.add(OWNER, "notes", [Source(n, b.encode()) for n, b in list(DOCS.items())[:2]])
    await kb_service.settle()  # the HNSW index is built in the background
    async with pg_db.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT count(*) FROM kb_vectors"))).scalar_one()
        chunks = (await conn.execute(text("SELECT count(*) FROM kb_chunks"))).scalar_one()
    assert stored == chunks < 10 and await pg.indexed([kb.id]) == set()  # small: searched in memory
    [index] = await kb_service.retriever.cache.indexes([kb.id])
    assert not index.ann and index.vectors.shape == (chunks, 384)

    pg.ann_min_chunks = chunks + 1  # the next upload crosses the threshold
    await kb_service.add(OWNER, "notes", [Source(n, b.encode()) for n, b in list(DOCS.items())[2:]])
    assert await kb_service.queue.active("kb.index") == 1  # the upload did not wait for the index: a job builds it
    await kb_service.settle()
    assert await pg.indexed([kb.id]) == {kb.id}
    async with pg_db.engine.connect() as conn:  # the query's shape can use the index (tiny tables are scanned)
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        await conn.execute(text("SET LOCAL enable_sort = off"))
        plan = "\n".join((await conn.execute(text(
            f"EXPLAIN SELECT chunk_id FROM kb_vectors WHERE kb_id = '{kb.id}' "
            f"ORDER BY (vec::vector(384)) <#> CAST('{vector_literal(np.ones(384, np.float32))}' AS vector(384)) "
            "LIMIT 5"))).scalars().all())
    assert f"kb_vectors_hnsw_{kb.id}" in plan
    [index] = await kb_service.retriever.cache.indexes([kb.id])
    assert index.ann and index.vectors.size == 0  # no copy of the vectors in memory
    exact = Retriever(pg_db, IndexCache(pg_db, use_ann=False))
    for query in ["how do I feed my cat", "borrow checker", "why does the sea rise", "yeast starter"]:
        for mode in ("vector", "hybrid"):
            options = SearchOptions(mode=mode)
            through_index = await kb_service.retriever.search([kb.id], query, local_embedder, options)
            in_memory = await exact.search([kb.id], query, local_embedder, options)
            assert [r.chunk_id for r in through_index] == [r.chunk_id for r in in_memory], (query, mode)
            assert [r.score for r in through_index] == pytest.approx([r.score for r in in_memory], abs=1e-5)
    tides = await kb_service.search(OWNER, ["notes"], "gravitational pull of the moon", SearchOptions(mode="vector"))
    assert tides[0].source == "tides.txt" and tides[0].score == pytest.approx(
        float(np.dot(*(await local_embedder.embed(["gravitational pull of the moon", tides[0].text])))), abs=0.05)


async def test_deleted_and_pending_documents_never_come_back_through_the_index(
    pg_db: Database, local_embedder: LocalEmbedder,
) -> None:
    kb_service = service(pg_db, local_embedder, ann_min_chunks=1)
    kb = (await kb_service.create(OWNER, "notes", chunk_tokens=40, chunk_overlap=5)).kb
    results = await kb_service.add(OWNER, "notes", [Source(n, b.encode()) for n, b in DOCS.items()])
    await kb_service.settle()  # the HNSW index is built in the background
    pg = kb_service.retriever.cache.pg
    assert pg is not None and await pg.indexed([kb.id]) == {kb.id}
    tides = next(r for r in results if r.source == "tides.txt")
    assert tides.document_id is not None
    await kb_service.delete_document(OWNER, "notes", tides.document_id)
    async with pg_db.engine.connect() as conn:
        left = (await conn.execute(text("SELECT count(*) FROM kb_vectors v JOIN kb_chunks c ON c.id = v.chunk_id "
                                        "WHERE c.document_id = :d"), {"d": tides.document_id})).scalar_one()
        orphans = (await conn.execute(text(
            "SELECT count(*) FROM kb_vectors WHERE chunk_id NOT IN (SELECT id FROM kb_chunks)"))).scalar_one()
    assert left == orphans == 0
    for mode in ("vector", "hybrid"):
        found = await kb_service.search(OWNER, ["notes"], "ocean tides and the moon", SearchOptions(mode=mode))
        assert "tides.txt" not in {r.source for r in found}, mode
    async with pg_db.session() as s:  # withdraw a document from search, as a rejected contribution is
        await s.execute(text("UPDATE kb_chunks SET searchable = false WHERE document_id IN "
                             "(SELECT id FROM kb_documents WHERE source = 'bread.txt')"))
        await s.execute(text("UPDATE kb_documents SET status = 'rejected' WHERE source = 'bread.txt'"))
        await s.execute(text("UPDATE knowledge_bases SET index_version = index_version + 1"))
    found = await kb_service.search(OWNER, ["notes"], "sourdough yeast bread", SearchOptions(mode="vector"))
    assert found and "bread.txt" not in {r.source for r in found}


async def test_reembedding_replaces_the_vectors_and_the_index(pg_db: Database, local_embedder: LocalEmbedder) -> None:
    kb_service = service(pg_db, local_embedder, ann_min_chunks=1)
    kb = (await kb_service.create(OWNER, "notes", chunk_tokens=40, chunk_overlap=5)).kb
    await kb_service.add(OWNER, "notes", [Source(n, b.encode()) for n, b in DOCS.items()])
    await kb_service.settle()  # the HNSW index is built in the background
    pg = kb_service.retriever.cache.pg
    assert pg is not None and await pg.indexed([kb.id]) == {kb.id}
    view = await kb_service.reembed(OWNER, "notes", Shorter.name)
    await kb_service.settle()  # the HNSW index is built in the background
    assert (view.kb.embedding_model, view.kb.dimension) == (Shorter.name, 64)
    async with pg_db.engine.connect() as conn:
        dims = (await conn.execute(text("SELECT DISTINCT vector_dims(vec) FROM kb_vectors"))).scalars().all()
        indexdef = (await conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"),
                                       {"n": f"kb_vectors_hnsw_{kb.id}"})).scalar_one()
    assert dims == [64] and "vector(64)" in indexdef and await pg.indexed([kb.id]) == {kb.id}
    [index] = await kb_service.retriever.cache.indexes([kb.id])
    assert index.ann and index.dimension == 64
    shorter = Shorter(local_embedder)
    exact = Retriever(pg_db, IndexCache(pg_db, use_ann=False))
    for query in ("how do I feed my cat", "why does the sea rise"):
        through_index = await kb_service.retriever.search([kb.id], query, shorter, SearchOptions(mode="vector"))
        in_memory = await exact.search([kb.id], query, shorter, SearchOptions(mode="vector"))
        assert [r.chunk_id for r in through_index] == [r.chunk_id for r in in_memory]
    found = await kb_service.search(OWNER, ["notes"], "gravitational pull of the moon", SearchOptions())
    assert found[0].source == "tides.txt"


async def test_knowledge_base_ids_are_checked_before_they_reach_sql(pg_db: Database) -> None:
    pg = PgVectors(pg_db)
    for bad in ("kb_1' OR '1'='1", "kb_ABC", "x"):
        with pytest.raises(ValueError):
            await pg.build_index(bad, 384)
        with pytest.raises(ValueError):
            await pg.search(bad, np.ones(384, np.float32), 5)


async def test_without_pgvector_everything_is_searched_in_memory(tmp_path: Path) -> None:
    """The system PostgreSQL here has no pgvector: nothing is set up, nothing fails."""
    from ..fakes.databases import clone_pg, drop_pg, make_pg_template

    template = await make_pg_template()
    name, url = await clone_pg(template)
    db = Database(url)
    try:
        pg = PgVectors(db)
        assert not await pg.available() and await pg.indexed(["kb_0123456789abcdef"]) == set()
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("SELECT to_regclass('kb_vectors')"))).scalar_one() is None
    finally:
        await db.close()
        await drop_pg(name)
        await drop_pg(template)
    await asyncio.sleep(0)


async def test_the_run_time_table_does_not_upset_alembic_check(pg_db: Database, pgvector_server: str) -> None:
    from alembic import command

    from thinktank.store.migrate import alembic_config

    assert await PgVectors(pg_db).available()  # kb_vectors and its index exist
    await asyncio.to_thread(command.check, alembic_config(pgvector_server))  # raises on any difference
