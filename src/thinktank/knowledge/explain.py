"""The parts of a hybrid search result's score, for people looking at a search (the web's search
playground, ``"explain": true`` on the search API): each hit's document's BM25 score and the cosine
between the query and the hit's chunk. Retrieval itself never needs them (``retrieval`` fuses them
as it goes), so they are worked out again here, for the few hits shown only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from ..gateway.context import CallContext
from ..store.tables import KbChunk
from .embeddings import vectors_from_bytes
from .retrieval import Mode, Retrieved
from .service import KnowledgeService

__all__ = ["Parts", "score_parts"]


@dataclass(frozen=True, slots=True)
class Parts:
    keyword: float | None
    """The BM25 score of the hit's document (None in vector mode)."""
    vector: float | None
    """The cosine between the query and the hit's chunk (None in keyword mode)."""


async def _keyword(knowledge: KnowledgeService, hits: Sequence[Retrieved], query: str) -> dict[int, float]:
    retriever = knowledge.retriever
    terms = retriever.analyzer.query(query)
    out: dict[int, float] = {}
    for index in await retriever.cache.indexes(list(dict.fromkeys(h.kb_id for h in hits))):
        wanted = [h for h in hits if h.kb_id == index.kb_id]
        scores = index.bm25.scores(terms) if terms else np.zeros(len(index.documents), np.float32)
        positions = {doc: i for i, doc in enumerate(index.documents) if doc in {h.document_id for h in wanted}}
        for h in wanted:
            at = positions.get(h.document_id)
            out[h.chunk_id] = float(scores[at]) if at is not None else 0.0
    return out


async def _vector(knowledge: KnowledgeService, hits: Sequence[Retrieved], query: str, model: str,
                  ctx: CallContext | None) -> dict[int, float]:
    query_vector = (await knowledge.embedder_for(model, ctx).embed([query]))[0].astype(np.float32)
    ids = [h.chunk_id for h in hits]
    async with knowledge.db.engine.connect() as conn:
        rows = (await conn.execute(select(KbChunk.id, KbChunk.embedding).where(KbChunk.id.in_(ids)))).all()
        out = {int(chunk_id): float((vectors_from_bytes([blob], len(query_vector)) @ query_vector)[0])
               for chunk_id, blob in rows if blob is not None and len(blob) == 4 * len(query_vector)}
        missing = [i for i in ids if i not in out]
        pg = knowledge.retriever.cache.pg
        if missing and pg is not None and await pg.available():
            out.update(await pg.cosines(conn, missing, query_vector))
    return out


async def score_parts(
    knowledge: KnowledgeService, hits: Sequence[Retrieved], query: str, mode: Mode, models: Mapping[str, str],
    ctx: CallContext | None = None,
) -> dict[int, Parts]:
    """Each hit's parts by chunk id. ``models`` is each searched knowledge base's embedding model (by id);
    the hits' knowledge bases have been checked for the caller already, and share one model unless the
    mode is keyword (``KnowledgeService.search`` refuses otherwise)."""
    if not hits:
        return {}
    keyword = await _keyword(knowledge, hits, query) if mode != "vector" else {}
    vector: dict[int, float] = {}
    if mode != "keyword":
        vector = await _vector(knowledge, hits, query, models[hits[0].kb_id], ctx)
    return {h.chunk_id: Parts(keyword.get(h.chunk_id) if mode != "vector" else None,
                              vector.get(h.chunk_id) if mode != "keyword" else None) for h in hits}
