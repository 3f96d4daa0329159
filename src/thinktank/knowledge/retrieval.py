"""Hybrid retrieval: chunks ranked by their document's keyword score and their own vector, with the
chunk's document and place.

- Keyword relevance is judged per document: BM25 over the document's whole text and title. A
  passage cut out of a document loses the words around it, and BM25 over short chunks ranks worse
  (SciFact train nDCG@10: 0.689 over chunks, 0.701 over documents).
- Vector relevance is judged per chunk: the cosine between the query and the chunk (embedded with
  its document title and heading path), exact, over every searchable chunk.
- ``score`` fusion (the default): ``a * bm25(doc) / max bm25 + (1 - a) * cosine(chunk)`` with
  ``a = w_keyword / (w_keyword + w_vector)``; a chunk whose document has no keyword match gets 0
  for that part. Scores carry how far ahead a candidate is, which ranks throw away.
- ``rrf``: reciprocal rank fusion, ``w_keyword / (k + document rank) + w_vector / (k + chunk rank)``
  over the ``candidates`` best of each, k = 60.

``mode`` picks ``hybrid``, ``keyword`` (documents by BM25, each shown by its best-matching chunk)
or ``vector`` (chunks by cosine). A document ranks where its best chunk ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sqlalchemy import select

from ..errors import InvalidRequestError
from ..store.db import Database
from ..store.tables import KbChunk, KbDocument
from .bm25 import Analyzer
from .embeddings import Embedder
from .index import Filters, Hit, IndexCache, KbIndex, filtered_chunk_ids
from .ingest import embedding_text

__all__ = ["Mode", "Retrieved", "Retriever", "SearchOptions"]

Mode = Literal["hybrid", "keyword", "vector"]
Fusion = Literal["score", "rrf"]


@dataclass(frozen=True, slots=True)
class SearchOptions:
    top_k: int = 8
    mode: Mode = "hybrid"
    fusion: Fusion = "score"
    keyword_weight: float = 0.3
    vector_weight: float = 0.7
    candidates: int = 100
    """How many candidates each search hands to the fusion."""
    rrf_k: int = 60
    filters: Filters = field(default_factory=Filters)

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= 1000:
            raise InvalidRequestError("top_k must be between 1 and 1000", param="top_k")
        if self.keyword_weight < 0 or self.vector_weight < 0 or self.keyword_weight + self.vector_weight <= 0:
            raise InvalidRequestError("weights must be at least 0 and not both 0", param="weights")


@dataclass(frozen=True, slots=True)
class Retrieved:
    chunk_id: int
    document_id: str
    kb_id: str
    score: float
    text: str
    context: str
    source: str
    title: str
    page: int | None
    position: int


def _top(ids: np.ndarray, scores: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    if len(ids) > limit:
        keep = np.argpartition(-scores, limit - 1)[:limit]
        return ids[keep], scores[keep]
    return ids, scores


def _best_documents(parts: Sequence[_Part], limit: int) -> list[tuple[int, int, float]]:
    """The ``limit`` best documents by BM25 over every part: (part number, document position, score)."""
    found: list[tuple[int, int, float]] = []
    for n, part in enumerate(parts):
        positions = np.flatnonzero(part.bm25 > 0)
        if len(positions) > limit:
            positions = positions[np.argpartition(-part.bm25[positions], limit - 1)[:limit]]
        found.extend((n, int(p), float(part.bm25[p])) for p in positions)
    found.sort(key=lambda f: (-f[2], parts[f[0]].index.documents[f[1]]))
    return found[:limit]


@dataclass(slots=True)
class _Part:
    """One knowledge base's candidates: its index, the chunks the filters leave (a mask, or all), and
    each document's BM25 score (0 for a document the filters leave no chunk of)."""

    index: KbIndex
    keep: np.ndarray | None
    bm25: np.ndarray

    def chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """The ids of the chunks the filters leave (ascending) and their documents' positions."""
        if self.keep is None:
            return self.index.ids, self.index.doc_index
        return self.index.ids[self.keep], self.index.doc_index[self.keep]


class Retriever:
    """Searches knowledge bases the caller has already been allowed to read."""

    def __init__(self, db: Database, cache: IndexCache | None = None, analyzer: Analyzer | None = None) -> None:
        self.db = db
        self.cache = cache or IndexCache(db)
        self.analyzer = analyzer or Analyzer()

    async def hits(
        self, kb_ids: Sequence[str], query: str, embedder: Embedder | None, options: SearchOptions,
    ) -> list[Hit]:
        if not query.strip():
            raise InvalidRequestError("the query is empty", param="query")
        if options.mode != "keyword" and embedder is None:
            raise InvalidRequestError("vector search needs the knowledge base's embedding model")
        limit = max(options.candidates, options.top_k)
        terms = self.analyzer.query(query) if options.mode != "vector" else []
        allowed = None if options.filters.empty else await filtered_chunk_ids(self.db, kb_ids, options.filters)
        parts: list[_Part] = []
        for index in await self.cache.indexes(kb_ids):
            keep = None if allowed is None else np.isin(index.ids, allowed, assume_unique=True)
            bm25 = index.bm25.scores(terms) if terms else np.zeros(len(index.documents), np.float32)
            if keep is not None:
                bm25 *= np.bincount(index.doc_index[keep], minlength=len(index.documents)) > 0
            parts.append(_Part(index, keep, bm25))
        if options.mode == "keyword":
            return await self._keyword_hits(parts, terms, limit, options)
        assert embedder is not None
        query_vector = (await embedder.embed([query]))[0].astype(np.float32)
        keyword = self._keyword_parts(parts, options, limit)
        ids_parts: list[np.ndarray] = []
        score_parts: list[np.ndarray] = []
        for part, keyword_part in zip(parts, keyword, strict=True):
            index = part.index
            if index.dimension != len(query_vector) or not len(index.ids):
                continue
            if index.ann:
                ids, doc_index, cosine = await self._nearest(part, keyword_part, query_vector, limit)
            else:
                cosine = index.vectors @ query_vector
                ids, doc_index = part.chunks()
                if part.keep is not None:
                    cosine = cosine[part.keep]
            if options.mode == "vector":
                scores = cosine
            elif options.fusion == "score":
                a = options.keyword_weight / (options.keyword_weight + options.vector_weight)
                scores = keyword_part[doc_index] + (1 - a) * cosine
            else:
                scores = keyword_part[doc_index] + self._rrf_vector(cosine, options)
            ids, scores = _top(ids, scores, limit)
            ids_parts.append(ids)
            score_parts.append(scores)
        if not ids_parts:
            return []
        all_ids, all_scores = np.concatenate(ids_parts), np.concatenate(score_parts)
        order = np.lexsort((all_ids, -all_scores))[:limit]
        return [Hit(int(all_ids[i]), float(all_scores[i])) for i in order]

    async def _nearest(
        self, part: _Part, keyword_part: np.ndarray, query_vector: np.ndarray, limit: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A knowledge base with an HNSW index: its nearest chunks from the index, and every chunk of
        its best keyword documents with its cosine, as the candidates (ids ascending)."""
        index = part.index
        pg = self.cache.pg
        assert pg is not None
        found, cosine = await pg.search(index.kb_id, query_vector, limit * 2 if part.keep is not None else limit)
        best_docs = np.flatnonzero(keyword_part)
        if len(best_docs) > limit:
            best_docs = best_docs[np.argpartition(-keyword_part[best_docs], limit - 1)[:limit]]
        extra = index.ids[np.isin(index.doc_index, best_docs)]
        extra = extra[~np.isin(extra, found)]
        if len(extra):
            async with self.db.engine.connect() as conn:
                more = await pg.cosines(conn, extra.tolist(), query_vector)
            found = np.concatenate([found, np.fromiter(more.keys(), np.int64, len(more))])
            cosine = np.concatenate([cosine, np.fromiter(more.values(), np.float32, len(more))])
        order = np.argsort(found)
        found, cosine = found[order], cosine[order]
        at = np.minimum(np.searchsorted(index.ids, found), len(index.ids) - 1)
        known = index.ids[at] == found  # searchable chunks only (the index also holds pending ones)
        if part.keep is not None:
            known &= part.keep[at]
        return found[known], index.doc_index[at[known]], cosine[known]

    @staticmethod
    def _keyword_parts(parts: Sequence[_Part], options: SearchOptions, limit: int) -> list[np.ndarray]:
        """Each document's keyword part of the fused score: ``a`` times its share of the best BM25
        score (score fusion), or ``w_keyword / (k + rank)`` for the ``limit`` best documents (RRF)."""
        if options.mode == "vector":
            return [np.zeros(len(p.index.documents), np.float32) for p in parts]
        if options.fusion == "score":
            a = options.keyword_weight / (options.keyword_weight + options.vector_weight)
            top = max((float(p.bm25.max()) for p in parts if len(p.bm25)), default=0.0)
            return [p.bm25 * (a / top) if top > 0 else np.zeros_like(p.bm25) for p in parts]
        out = [np.zeros(len(p.index.documents), np.float32) for p in parts]
        for rank, (n, position, _score) in enumerate(_best_documents(parts, limit), 1):
            out[n][position] = options.keyword_weight / (options.rrf_k + rank)
        return out

    @staticmethod
    def _rrf_vector(cosine: np.ndarray, options: SearchOptions) -> np.ndarray:
        """``w_vector / (k + rank)`` for the ``candidates`` best chunks, 0 for the rest."""
        out = np.zeros(len(cosine), np.float64)
        best = np.argsort(-cosine, kind="stable")[:options.candidates]
        out[best] = options.vector_weight / (options.rrf_k + np.arange(1, len(best) + 1))
        return out

    async def _keyword_hits(
        self, parts: Sequence[_Part], terms: Sequence[str], limit: int, options: SearchOptions,
    ) -> list[Hit]:
        """Documents in BM25 order, each shown by a chunk: for the ``top_k`` best, the chunk that
        matches the query best (BM25 among the document's chunks); for the rest, their first chunk."""
        best = _best_documents(parts, limit)
        if not best:
            return []
        shown: dict[tuple[int, int], int] = {}
        kept: list[set[int] | None] = []
        head = [(n, p) for n, p, _ in best[:options.top_k]]
        for n, part in enumerate(parts):
            ids, doc_index = part.chunks()
            positions, first = np.unique(doc_index, return_index=True)  # ids ascend: the first is the lowest
            shown.update(((n, int(p)), int(ids[i])) for p, i in zip(positions, first, strict=True))
            # The chunks of the head documents that the filters leave (None: every chunk).
            kept.append(None if part.keep is None else
                        set(ids[np.isin(doc_index, [p for m, p in head if m == n])].tolist()))
        wanted: dict[str, tuple[int, int]] = {parts[n].index.documents[p]: (n, p) for n, p in head}
        chunk_rows: dict[tuple[int, int], list[tuple[int, str]]] = {}
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(
                select(KbChunk.id, KbChunk.document_id, KbChunk.context, KbChunk.text)
                .where(KbChunk.document_id.in_(list(wanted)), KbChunk.searchable).order_by(KbChunk.id)
            )).all()
        for chunk_id, doc_id, context, body in rows:
            n, p = wanted[doc_id]
            allowed = kept[n]
            if allowed is None or chunk_id in allowed:
                chunk_rows.setdefault((n, p), []).append((int(chunk_id), embedding_text(context, body)))
        for (n, p), chunks in chunk_rows.items():
            scores = parts[n].index.bm25.passage_scores(self.analyzer, terms, [c[1] for c in chunks])
            shown[(n, p)] = chunks[int(np.argmax(scores))][0]
        return [Hit(shown[(n, p)], score) for n, p, score in best if (n, p) in shown]

    async def search(
        self, kb_ids: Sequence[str], query: str, embedder: Embedder | None, options: SearchOptions,
    ) -> list[Retrieved]:
        hits = (await self.hits(kb_ids, query, embedder, options))[:options.top_k]
        return await self.load(hits)

    async def load(self, hits: Sequence[Hit]) -> list[Retrieved]:
        """The chunks of ``hits`` with their documents, in the order of ``hits``."""
        if not hits:
            return []
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(
                select(KbChunk.id, KbChunk.document_id, KbChunk.kb_id, KbChunk.text, KbChunk.context, KbChunk.page,
                       KbChunk.position, KbDocument.source, KbDocument.title)
                .join(KbDocument, KbDocument.id == KbChunk.document_id)
                .where(KbChunk.id.in_([h.chunk_id for h in hits]), KbChunk.searchable)
            )).all()
        by_id = {r.id: r for r in rows}
        out: list[Retrieved] = []
        for hit in hits:
            r = by_id.get(hit.chunk_id)
            if r is None:  # deleted or withdrawn since the search
                continue
            out.append(Retrieved(
                chunk_id=r.id, document_id=r.document_id, kb_id=r.kb_id, score=hit.score, text=r.text,
                context=r.context, source=r.source, title=r.title, page=r.page, position=r.position,
            ))
        return out
