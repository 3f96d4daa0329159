"""A knowledge base's search index, in memory: its searchable chunk vectors and the BM25
statistics of its approved documents. Access is decided before this module: it searches exactly the
knowledge bases it is given.

- Vectors: every searchable chunk vector is held as one float32 matrix and searched exactly with
  one matrix product (100,000 chunks x 384 is 150 MB and a few milliseconds).
- Keywords: BM25 over whole documents (``bm25.Bm25Index``), from the term counts stored at
  ingestion. The same code and the same scores on SQLite and PostgreSQL.

An index is loaded on its knowledge base's first search (in a worker thread) and reloaded when the
knowledge base's ``index_version`` moves, so every process sees a change made by another on its
next search.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import null, select, text

from ..store.db import Database
from ..store.tables import KbChunk, KbDocument, KbDocumentText, KnowledgeBase
from .bm25 import Bm25Index
from .embeddings import vectors_from_bytes
from .pgvector import PgVectors

__all__ = ["Filters", "Hit", "IndexCache", "KbIndex", "filtered_chunk_ids"]


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: int
    score: float


@dataclass(frozen=True, slots=True)
class Filters:
    """Metadata filters; every given one must hold."""

    document_ids: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    source_prefix: str | None = None
    pages: tuple[int, int] | None = None
    """First and last page, inclusive."""

    @property
    def empty(self) -> bool:
        return not (self.document_ids or self.kinds or self.source_prefix or self.pages)


def _in(column: str, values: Sequence[str], name: str, params: dict[str, object]) -> str:
    """``column IN (:name0, :name1, ...)`` with the values bound in ``params``."""
    for i, value in enumerate(values):
        params[f"{name}{i}"] = value
    return f"{column} IN ({', '.join(f':{name}{i}' for i in range(len(values)))})"


def _filter_sql(filters: Filters, params: dict[str, object]) -> str:
    """SQL conditions for ``filters`` over documents ``d`` and chunks ``c``."""
    clauses: list[str] = []
    if filters.document_ids:
        clauses.append(_in("d.id", filters.document_ids, "doc", params))
    if filters.kinds:
        clauses.append(_in("d.kind", filters.kinds, "kind", params))
    if filters.source_prefix:
        params["prefix"] = filters.source_prefix
        clauses.append("substr(d.source, 1, length(:prefix)) = :prefix")
    if filters.pages:
        params["page_lo"], params["page_hi"] = filters.pages
        clauses.append("c.page BETWEEN :page_lo AND :page_hi")
    return "".join(f" AND {c}" for c in clauses)


def _kb_sql(kb_ids: Sequence[str], params: dict[str, object], alias: str = "c") -> str:
    return _in(f"{alias}.kb_id", kb_ids, "kb", params)


async def filtered_chunk_ids(db: Database, kb_ids: Sequence[str], filters: Filters) -> np.ndarray:
    params: dict[str, object] = {}
    where = f"{_kb_sql(kb_ids, params)} AND c.searchable{_filter_sql(filters, params)}"
    sql = "SELECT c.id FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id WHERE " + where  # noqa: S608
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text(sql), params)).all()
    return np.array(sorted(int(r[0]) for r in rows), dtype=np.int64)




@dataclass(slots=True)
class KbIndex:
    """One knowledge base's searchable chunks (ids ascending, unit vectors, each chunk's document as a
    position in ``documents``) and its approved documents' BM25 statistics (by the same positions)."""

    kb_id: str
    version: int
    dimension: int | None
    ann: bool
    """Its vectors are searched through its pgvector HNSW index (``vectors`` is then empty)."""
    ids: np.ndarray
    vectors: np.ndarray
    doc_index: np.ndarray
    documents: list[str]
    bm25: Bm25Index

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.vectors.nbytes + self.doc_index.nbytes) + self.bm25.nbytes


def _build(kb_id: str, version: int, dimension: int | None, ann: bool, docs: Sequence[tuple[str, str, bytes, int]],
           chunks: Sequence[tuple[int, str, bytes | None]]) -> KbIndex:
    positions = {doc_id: i for i, (doc_id, *_rest) in enumerate(docs)}
    kept = [(chunk_id, positions[doc], blob) for chunk_id, doc, blob in chunks
            if (ann or blob is not None) and doc in positions]
    width = 0 if ann else dimension or 0
    return KbIndex(
        kb_id, version, dimension, ann,
        np.array([c[0] for c in kept], dtype=np.int64),
        vectors_from_bytes([c[2] or b"" for c in kept], width) if width else np.zeros((0, 0), np.float32),
        np.array([c[1] for c in kept], dtype=np.int64),
        [d[0] for d in docs],
        Bm25Index(((t, c, n) for _doc, t, c, n in docs), len(docs)),
    )


@dataclass
class IndexCache:
    """The index of each knowledge base searched, in memory, reloaded when its version moves."""

    db: Database
    pg: PgVectors | None = None
    """pgvector, where large knowledge bases have HNSW indexes (by default on PostgreSQL)."""
    use_ann: bool = True
    """False: search every knowledge base exactly, in memory, even those with an HNSW index."""
    _entries: dict[str, KbIndex] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pg is None and self.db.dialect == "postgresql":
            self.pg = PgVectors(self.db)

    async def _versions(self, kb_ids: Sequence[str]) -> dict[str, tuple[int, int | None]]:
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(
                select(KnowledgeBase.id, KnowledgeBase.index_version, KnowledgeBase.dimension)
                .where(KnowledgeBase.id.in_(list(kb_ids)))
            )).all()
        return {kb: (int(version), dimension) for kb, version, dimension in rows}

    async def _index(self, kb_id: str, version: int, dimension: int | None) -> KbIndex:
        entry = self._entries.get(kb_id)
        if entry is not None and entry.version == version:
            return entry
        lock = self._locks.setdefault(kb_id, asyncio.Lock())
        async with lock:
            entry = self._entries.get(kb_id)
            if entry is not None and entry.version == version:
                return entry
            ann = self.use_ann and self.pg is not None and kb_id in await self.pg.indexed([kb_id])
            vector = null() if ann else KbChunk.embedding
            async with self.db.engine.connect() as conn:
                # Read after the version: a change in between is labelled with the older version, so the
                # next search reloads it; a stale index is never labelled as new.
                docs = (await conn.execute(
                    select(KbDocument.id, KbDocumentText.terms, KbDocumentText.term_counts, KbDocumentText.length)
                    .join(KbDocumentText, KbDocumentText.document_id == KbDocument.id)
                    .where(KbDocument.kb_id == kb_id, KbDocument.status == "approved")
                    .order_by(KbDocument.id)
                )).all()
                chunks = (await conn.execute(
                    select(KbChunk.id, KbChunk.document_id, vector)
                    .where(KbChunk.kb_id == kb_id, KbChunk.searchable)
                    .order_by(KbChunk.id)
                )).all()
            entry = await asyncio.to_thread(_build, kb_id, version, dimension, ann, docs, chunks)
            self._entries[kb_id] = entry
            return entry

    async def indexes(self, kb_ids: Sequence[str]) -> list[KbIndex]:
        """The current index of each of ``kb_ids`` that exists, in the order given."""
        versions = await self._versions(kb_ids)
        return [await self._index(kb_id, *versions[kb_id]) for kb_id in dict.fromkeys(kb_ids) if kb_id in versions]

    def forget(self, kb_id: str) -> None:
        self._entries.pop(kb_id, None)
