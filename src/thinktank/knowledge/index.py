"""The two searches under hybrid retrieval: keyword (BM25) and vector (cosine), over the knowledge
bases a caller may read. Access is decided before this module: it searches exactly the knowledge
bases it is given.

- Keyword, SQLite: FTS5 with the porter stemmer, BM25 over whole documents (title and text;
  ``keyword_documents``) and over chunks (context and text; ``keyword_search``, which picks the
  passage that shows a document).
- Vectors: every searchable chunk vector of a knowledge base is held in memory as one float32
  matrix and searched exactly with one matrix product (100,000 chunks x 384 is 150 MB and a few
  milliseconds). The matrix is reloaded when the knowledge base's ``index_version`` moves, so every
  process sees a change made by another on its next search.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import and_, select, text

from ..store.db import Database
from ..store.tables import KbChunk, KnowledgeBase
from .embeddings import vectors_from_bytes

__all__ = [
    "DocHit", "Filters", "Hit", "Matrix", "VectorCache", "filtered_chunk_ids", "fts_query", "keyword_documents",
    "keyword_search", "query_terms",
]

_TERM = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: int
    score: float


@dataclass(frozen=True, slots=True)
class DocHit:
    document_id: str
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


def query_terms(query: str) -> list[str]:
    """The words of a query, lower-cased, each once, in order."""
    seen: dict[str, None] = {}
    for term in _TERM.findall(query.lower()):
        seen.setdefault(term, None)
    return list(seen)


# Lucene's English stop words. They match nearly every document, add almost nothing to BM25, and make
# an OR query score the whole index (about 150 ms at 40,000 documents, against a few ms without them).
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of",
    "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
})


def fts_query(query: str) -> str | None:
    """An FTS5 query matching any of the words but stop words (each quoted, so nothing in it is FTS
    syntax; a query of nothing but stop words keeps them); ``None`` when the query has no words."""
    terms = query_terms(query)
    if not terms:
        return None
    terms = [t for t in terms if t not in STOPWORDS] or terms
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


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


async def keyword_documents(
    db: Database, kb_ids: Sequence[str], query: str, limit: int, filters: Filters = Filters(),
) -> list[DocHit]:
    """BM25 over whole documents (title and text) of ``kb_ids``, best first (higher is better).
    Page filters do not apply at this level (the chunk stage applies them)."""
    match = fts_query(query)
    if match is None or not kb_ids or limit <= 0:
        return []
    if db.dialect != "sqlite":
        raise NotImplementedError("keyword search on PostgreSQL is not built yet")
    params: dict[str, object] = {"match": match}
    doc_filters = Filters(filters.document_ids, filters.kinds, filters.source_prefix)
    # Only generated placeholder names are put into the SQL; every value is bound.
    where = f"{_kb_sql(kb_ids, params, 'd')} AND d.status = 'approved'{_filter_sql(doc_filters, params)}"
    joined = (
        "SELECT d.id, f.rank FROM {source} f JOIN kb_document_texts t ON t.id = f.rowid "  # noqa: S608
        "JOIN kb_documents d ON d.id = t.document_id WHERE " + where + " ORDER BY f.rank LIMIT :limit"
    )
    # Fast path: rank inside FTS5 first and join only the best few (joining every match costs ~4x the
    # ranking at 40,000 documents). If the knowledge bases or filters drop too many of them, rank again
    # with the join over every match, which is exact.
    fetch = limit * 4
    best = ("(SELECT rowid, bm25(kb_documents_fts) AS rank FROM kb_documents_fts WHERE kb_documents_fts MATCH :match "
            "ORDER BY rank LIMIT :fetch)")
    every = "(SELECT rowid, bm25(kb_documents_fts) AS rank FROM kb_documents_fts WHERE kb_documents_fts MATCH :match)"
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text(joined.format(source=best)), {**params, "limit": limit, "fetch": fetch})).all()
        if len(rows) < limit:
            total = (await conn.execute(text(
                "SELECT count(*) FROM kb_documents_fts WHERE kb_documents_fts MATCH :match"), {"match": match}
            )).scalar_one()
            if total > fetch:
                rows = (await conn.execute(text(joined.format(source=every)), {**params, "limit": limit})).all()
    return [DocHit(str(doc_id), -float(rank)) for doc_id, rank in rows]


async def keyword_search(
    db: Database, kb_ids: Sequence[str], query: str, limit: int, filters: Filters = Filters(),
) -> list[tuple[Hit, str]]:
    """BM25 over the chunks of ``kb_ids``, best first (score: higher is better), with each chunk's document."""
    match = fts_query(query)
    if match is None or not kb_ids or limit <= 0:
        return []
    if db.dialect != "sqlite":
        raise NotImplementedError("keyword search on PostgreSQL is not built yet")
    params: dict[str, object] = {"match": match, "limit": limit}
    # Only generated placeholder names are put into the SQL; every value is bound.
    where = f"{_kb_sql(kb_ids, params)} AND c.searchable{_filter_sql(filters, params)}"
    sql = (
        "SELECT c.id, c.document_id, bm25(kb_chunks_fts) AS rank FROM kb_chunks_fts "  # noqa: S608
        "JOIN kb_chunks c ON c.id = kb_chunks_fts.rowid JOIN kb_documents d ON d.id = c.document_id "
        "WHERE kb_chunks_fts MATCH :match AND " + where + " ORDER BY rank LIMIT :limit"
    )
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text(sql), params)).all()
    return [(Hit(int(chunk_id), -float(rank)), str(doc_id)) for chunk_id, doc_id, rank in rows]


async def filtered_chunk_ids(db: Database, kb_ids: Sequence[str], filters: Filters) -> np.ndarray:
    params: dict[str, object] = {}
    where = f"{_kb_sql(kb_ids, params)} AND c.searchable{_filter_sql(filters, params)}"
    sql = "SELECT c.id FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id WHERE " + where  # noqa: S608
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text(sql), params)).all()
    return np.array(sorted(int(r[0]) for r in rows), dtype=np.int64)


@dataclass(slots=True)
class Matrix:
    """One knowledge base's searchable chunks: ids (ascending), unit vectors, and each chunk's document
    as an index into ``documents``."""

    version: int
    ids: np.ndarray
    vectors: np.ndarray
    doc_index: np.ndarray
    documents: list[str]
    doc_position: dict[str, int]


@dataclass
class VectorCache:
    """Searchable chunk vectors per knowledge base, in memory, reloaded when its version moves."""

    db: Database
    _entries: dict[str, Matrix] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def _versions(self, kb_ids: Sequence[str]) -> dict[str, tuple[int, int | None]]:
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(
                select(KnowledgeBase.id, KnowledgeBase.index_version, KnowledgeBase.dimension)
                .where(KnowledgeBase.id.in_(list(kb_ids)))
            )).all()
        return {kb: (int(version), dimension) for kb, version, dimension in rows}

    async def _matrix(self, kb_id: str, version: int, dimension: int) -> Matrix:
        entry = self._entries.get(kb_id)
        if entry is not None and entry.version == version:
            return entry
        lock = self._locks.setdefault(kb_id, asyncio.Lock())
        async with lock:
            entry = self._entries.get(kb_id)
            if entry is not None and entry.version == version:
                return entry
            async with self.db.engine.connect() as conn:
                # Read after the version: a change in between is labelled with the older version, so the
                # next search reloads it; a stale matrix is never labelled as new.
                rows = (await conn.execute(
                    select(KbChunk.id, KbChunk.document_id, KbChunk.embedding)
                    .where(and_(KbChunk.kb_id == kb_id, KbChunk.searchable, KbChunk.embedding.is_not(None)))
                    .order_by(KbChunk.id)
                )).all()
            triples = [(int(chunk_id), str(doc), blob) for chunk_id, doc, blob in rows if blob is not None]
            positions: dict[str, int] = {}
            doc_index = np.array([positions.setdefault(t[1], len(positions)) for t in triples], dtype=np.int64)
            entry = Matrix(
                version, np.array([t[0] for t in triples], dtype=np.int64),
                vectors_from_bytes([t[2] for t in triples], dimension), doc_index, list(positions), positions,
            )
            self._entries[kb_id] = entry
            return entry

    async def matrices(self, kb_ids: Sequence[str], dimension: int) -> list[Matrix]:
        """The current matrix of each knowledge base whose vectors have ``dimension`` components."""
        out: list[Matrix] = []
        for kb_id, (version, dim) in (await self._versions(kb_ids)).items():
            if dim is not None and dim == dimension:
                matrix = await self._matrix(kb_id, version, dim)
                if len(matrix.ids):
                    out.append(matrix)
        return out

    def forget(self, kb_id: str) -> None:
        self._entries.pop(kb_id, None)
