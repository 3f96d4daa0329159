"""Chunk vectors in PostgreSQL with pgvector, and an HNSW index per large knowledge base.

Where the ``vector`` extension is available (``CREATE EXTENSION vector`` works, or it is already
there), every chunk's vector is also written to ``kb_vectors`` at ingestion, in the same
transaction. A knowledge base with at least ``ann_min_chunks`` chunks gets an HNSW index of its
own: a partial index (``WHERE kb_id = '<id>'``) over the expression ``vec::vector(<dimension>)``,
so every dimension and every knowledge base has an exact-size index and a search never has to
filter out other knowledge bases' neighbours (which an index shared by all would return first).
Such a knowledge base is searched through the index instead of an in-memory matrix.

Without pgvector (or on SQLite) nothing here is used: every knowledge base is searched exactly in
memory. ``kb_vectors`` is made at run time, not by a migration, because whether the extension can
be created depends on the server; migrations ignore it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ..store.db import Database

__all__ = ["PgVectors", "vector_literal"]

log = logging.getLogger(__name__)

_KB_ID = re.compile(r"^kb_[0-9a-f]{16}$")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kb_vectors ("
    " chunk_id bigint PRIMARY KEY REFERENCES kb_chunks(id) ON DELETE CASCADE,"
    " kb_id varchar(32) NOT NULL,"
    " vec vector NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ix_kb_vectors_kb ON kb_vectors (kb_id)",
)


def vector_literal(vector: np.ndarray) -> str:
    """pgvector's text form, ``[x,y,...]`` (float32 round-trips exactly through ``repr`` of its value)."""
    return "[" + ",".join(map(repr, vector.astype(np.float32).tolist())) + "]"


def _index_name(kb_id: str) -> str:
    return f"kb_vectors_hnsw_{kb_id}"


def _checked(kb_id: str) -> str:
    """A knowledge base id goes into index DDL and partial-index predicates as a literal (a partial
    index is used only when the query names the same constant), so it must be one of ours."""
    if not _KB_ID.match(kb_id):
        raise ValueError(f"not a knowledge base id: {kb_id!r}")
    return kb_id


class PgVectors:
    def __init__(self, db: Database, *, ann_min_chunks: int = 200_000, m: int = 24, ef_construction: int = 128,
                 ef_search: int = 200) -> None:
        self.db = db
        self.ann_min_chunks = ann_min_chunks
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self._available: bool | None = None

    async def available(self) -> bool:
        """PostgreSQL with pgvector (the extension is created and ``kb_vectors`` made on the first call)."""
        if self._available is None:
            self._available = self.db.dialect == "postgresql" and await self._setup()
        return self._available

    async def _setup(self) -> bool:
        try:
            async with self.db.engine.begin() as conn:
                installed = (await conn.execute(text(
                    "SELECT count(*) FROM pg_extension WHERE extname = 'vector'"))).scalar_one()
                if not installed:
                    offered = (await conn.execute(text(
                        "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"))).scalar_one()
                    if not offered:
                        log.info("PostgreSQL has no pgvector: knowledge bases are searched in memory")
                        return False
                    await conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
                for statement in _SCHEMA:
                    await conn.execute(text(statement))
        except DBAPIError as exc:
            log.warning("pgvector could not be set up (%s): knowledge bases are searched in memory", exc.orig)
            return False
        return True

    async def add(self, s: AsyncSession, kb_id: str, chunk_ids: Sequence[int], vectors: np.ndarray) -> None:
        """Write chunk vectors in the caller's transaction."""
        if not len(chunk_ids):
            return
        rows = [{"c": int(c), "k": kb_id, "v": vector_literal(v)} for c, v in zip(chunk_ids, vectors, strict=True)]
        await s.execute(text("INSERT INTO kb_vectors (chunk_id, kb_id, vec) VALUES (:c, :k, CAST(:v AS vector))"),
                        rows)

    async def replace(self, s: AsyncSession, kb_id: str, chunk_ids: Sequence[int], vectors: np.ndarray) -> None:
        """A knowledge base's vectors, all new (a re-embedding), in the caller's transaction. Its HNSW
        index goes in the same transaction (it is for the old vectors' size); build it again after."""
        await s.execute(text(f'DROP INDEX IF EXISTS "{_index_name(_checked(kb_id))}"'))
        await s.execute(text("DELETE FROM kb_vectors WHERE kb_id = :k"), {"k": kb_id})
        await self.add(s, kb_id, chunk_ids, vectors)

    async def indexed(self, kb_ids: Sequence[str]) -> set[str]:
        """Those of ``kb_ids`` that have a valid HNSW index."""
        if not kb_ids or not await self.available():
            return set()
        names = {_index_name(k): k for k in kb_ids}
        async with self.db.engine.connect() as conn:
            found = (await conn.execute(text(
                "SELECT c.relname FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
                "WHERE c.relname = ANY(:names) AND i.indisvalid"), {"names": list(names)})).scalars().all()
        return {names[n] for n in found}

    async def build_index(self, kb_id: str, dimension: int) -> None:
        """The knowledge base's HNSW index, built without blocking writes or searches (CONCURRENTLY).
        An invalid leftover of an interrupted build is dropped first."""
        kb = _checked(kb_id)
        name = _index_name(kb)
        async with self.db.engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            invalid = (await auto.execute(text(
                "SELECT count(*) FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
                "WHERE c.relname = :name AND NOT i.indisvalid"), {"name": name})).scalar_one()
            if invalid:
                await auto.execute(text(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"'))
            await auto.execute(text(
                f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON kb_vectors '
                f"USING hnsw ((vec::vector({int(dimension)})) vector_ip_ops) "
                f"WITH (m = {int(self.m)}, ef_construction = {int(self.ef_construction)}) "
                f"WHERE kb_id = '{kb}'"
            ))

    async def maybe_index(self, kb_id: str, dimension: int | None, chunks: int) -> bool:
        """Build the index once the knowledge base is large enough; True if it was built now."""
        if dimension is None or chunks < self.ann_min_chunks or not await self.available():
            return False
        if kb_id in await self.indexed([kb_id]):
            return False
        await self.build_index(kb_id, dimension)
        return True

    async def search(self, kb_id: str, query: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``limit`` nearest searchable chunks by inner product (vectors are unit length, so it is
        the cosine), through the knowledge base's HNSW index: chunk ids and cosines, best first."""
        kb = _checked(kb_id)
        dim = len(query)
        async with self.db.engine.connect() as conn:
            await conn.execute(text(f"SET LOCAL hnsw.ef_search = {max(int(self.ef_search), limit)}"))
            rows = (await conn.execute(text(
                f"SELECT v.chunk_id, (v.vec::vector({dim})) <#> CAST(:q AS vector({dim})) AS d "  # noqa: S608
                f"FROM kb_vectors v WHERE v.kb_id = '{kb}' "
                f"ORDER BY (v.vec::vector({dim})) <#> CAST(:q AS vector({dim})) LIMIT :limit"
            ), {"q": vector_literal(query), "limit": limit})).all()
            await conn.rollback()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, -np.array([r[1] for r in rows], dtype=np.float32)  # <#> is the negative inner product

    async def cosines(self, conn: AsyncConnection, chunk_ids: Sequence[int], query: np.ndarray) -> dict[int, float]:
        """The cosine of given chunks (no index needed: they are looked up by id)."""
        if not chunk_ids:
            return {}
        dim = len(query)
        rows = (await conn.execute(text(
            f"SELECT chunk_id, -((vec::vector({dim})) <#> CAST(:q AS vector({dim}))) FROM kb_vectors "  # noqa: S608
            "WHERE chunk_id = ANY(:ids)"), {"q": vector_literal(query), "ids": [int(c) for c in chunk_ids]})).all()
        return {int(c): float(v) for c, v in rows}
