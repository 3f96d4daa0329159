"""The two searches under hybrid retrieval: keyword (BM25) and vector (cosine), over the chunks of
the knowledge bases a caller may read. Access is decided before this module: it searches exactly
the knowledge bases it is given.

- Keyword, SQLite: FTS5 with the porter stemmer, BM25 over two columns (the chunk's context, i.e.
  document title and heading path, and its text).
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

__all__ = ["Filters", "Hit", "VectorCache", "fts_query", "keyword_search", "query_terms"]

_TERM = re.compile(r"\w+", re.UNICODE)


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


def query_terms(query: str) -> list[str]:
    """The words of a query, lower-cased, each once, in order."""
    seen: dict[str, None] = {}
    for term in _TERM.findall(query.lower()):
        seen.setdefault(term, None)
    return list(seen)


def fts_query(query: str) -> str | None:
    """An FTS5 query matching any of the words (each quoted, so nothing in it is FTS syntax);
    ``None`` when the query has no words."""
    terms = query_terms(query)
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def _filter_sql(filters: Filters, params: dict[str, object]) -> str:
    clauses: list[str] = []
    if filters.document_ids:
        names = []
        for i, doc in enumerate(filters.document_ids):
            params[f"doc{i}"] = doc
            names.append(f":doc{i}")
        clauses.append(f"c.document_id IN ({', '.join(names)})")
    if filters.kinds:
        names = []
        for i, kind in enumerate(filters.kinds):
            params[f"kind{i}"] = kind
            names.append(f":kind{i}")
        clauses.append(f"d.kind IN ({', '.join(names)})")
    if filters.source_prefix:
        params["prefix"] = filters.source_prefix
        clauses.append("substr(d.source, 1, length(:prefix)) = :prefix")
    if filters.pages:
        params["page_lo"], params["page_hi"] = filters.pages
        clauses.append("c.page BETWEEN :page_lo AND :page_hi")
    return "".join(f" AND {c}" for c in clauses)


def _kb_sql(kb_ids: Sequence[str], params: dict[str, object]) -> str:
    names = []
    for i, kb in enumerate(kb_ids):
        params[f"kb{i}"] = kb
        names.append(f":kb{i}")
    return f"c.kb_id IN ({', '.join(names)})"


async def keyword_search(
    db: Database, kb_ids: Sequence[str], query: str, limit: int, filters: Filters = Filters(),
    *, weights: tuple[float, float] = (1.0, 1.0),
) -> list[Hit]:
    """BM25 over the chunks of ``kb_ids``, best first (score: higher is better)."""
    match = fts_query(query)
    if match is None or not kb_ids or limit <= 0:
        return []
    if db.dialect != "sqlite":
        raise NotImplementedError("keyword search on PostgreSQL is not built yet")
    params: dict[str, object] = {"match": match, "limit": limit, "wc": weights[0], "wt": weights[1]}
    # Only generated placeholder names are put into the SQL; every value is bound.
    where = f"{_kb_sql(kb_ids, params)} AND c.searchable{_filter_sql(filters, params)}"
    sql = (
        "SELECT c.id, bm25(kb_chunks_fts, :wc, :wt) AS rank FROM kb_chunks_fts "  # noqa: S608
        "JOIN kb_chunks c ON c.id = kb_chunks_fts.rowid JOIN kb_documents d ON d.id = c.document_id "
        "WHERE kb_chunks_fts MATCH :match AND " + where + " ORDER BY rank LIMIT :limit"
    )
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text(sql), params)).all()
    return [Hit(int(chunk_id), -float(rank)) for chunk_id, rank in rows]


async def filtered_chunk_ids(db: Database, kb_ids: Sequence[str], filters: Filters) -> np.ndarray:
    params: dict[str, object] = {}
    where = f"{_kb_sql(kb_ids, params)} AND c.searchable{_filter_sql(filters, params)}"
    sql = "SELECT c.id FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id WHERE " + where  # noqa: S608
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text(sql), params)).all()
    return np.array(sorted(int(r[0]) for r in rows), dtype=np.int64)


@dataclass(slots=True)
class _Matrix:
    version: int
    ids: np.ndarray
    vectors: np.ndarray


@dataclass
class VectorCache:
    """Searchable chunk vectors per knowledge base, in memory, reloaded when its version moves."""

    db: Database
    _entries: dict[str, _Matrix] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def _versions(self, kb_ids: Sequence[str]) -> dict[str, tuple[int, int | None]]:
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(
                select(KnowledgeBase.id, KnowledgeBase.index_version, KnowledgeBase.dimension)
                .where(KnowledgeBase.id.in_(list(kb_ids)))
            )).all()
        return {kb: (int(version), dimension) for kb, version, dimension in rows}

    async def _matrix(self, kb_id: str, version: int, dimension: int) -> _Matrix:
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
                    select(KbChunk.id, KbChunk.embedding)
                    .where(and_(KbChunk.kb_id == kb_id, KbChunk.searchable, KbChunk.embedding.is_not(None)))
                    .order_by(KbChunk.id)
                )).all()
            pairs = [(int(chunk_id), blob) for chunk_id, blob in rows if blob is not None]
            ids = np.array([p[0] for p in pairs], dtype=np.int64)
            vectors = vectors_from_bytes([p[1] for p in pairs], dimension)
            entry = _Matrix(version, ids, vectors)
            self._entries[kb_id] = entry
            return entry

    async def search(
        self, kb_ids: Sequence[str], query_vector: np.ndarray, limit: int, *, allowed: np.ndarray | None = None,
    ) -> list[Hit]:
        """Cosine similarity (vectors are unit length), best first. ``allowed``: sorted chunk ids to keep."""
        if limit <= 0 or not kb_ids:
            return []
        ids_parts: list[np.ndarray] = []
        score_parts: list[np.ndarray] = []
        for kb_id, (version, dimension) in (await self._versions(kb_ids)).items():
            if dimension is None or dimension != query_vector.shape[-1]:
                continue
            matrix = await self._matrix(kb_id, version, dimension)
            if not len(matrix.ids):
                continue
            scores = matrix.vectors @ query_vector.astype(np.float32)
            ids = matrix.ids
            if allowed is not None:
                keep = np.isin(ids, allowed, assume_unique=True)
                ids, scores = ids[keep], scores[keep]
            if len(ids) > limit:
                top = np.argpartition(-scores, limit - 1)[:limit]
                ids, scores = ids[top], scores[top]
            ids_parts.append(ids)
            score_parts.append(scores)
        if not ids_parts:
            return []
        all_ids, all_scores = np.concatenate(ids_parts), np.concatenate(score_parts)
        order = np.lexsort((all_ids, -all_scores))[:limit]
        return [Hit(int(all_ids[i]), float(all_scores[i])) for i in order]

    def forget(self, kb_id: str) -> None:
        self._entries.pop(kb_id, None)
