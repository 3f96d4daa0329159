"""Retrieval evaluation on a BEIR-format set (corpus.jsonl, queries.jsonl, qrels.tsv).

The corpus goes through the real ingestion path into a temporary knowledge base (parsed records,
structure-aware chunks, embeddings, the index); each query goes through the real retriever. A
document's rank is the rank of its best chunk. Metrics follow BEIR (pytrec_eval): nDCG@10 with
linear gains, Recall@100, MRR@10, averaged over the queries that have judgements.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..clock import Clock
from ..errors import InvalidRequestError
from ..store.db import Database
from ..store.tables import SYSTEM_USER_ID, KbChunk, KbDocument, KnowledgeBase, new_id
from .chunking import text_blocks
from .embeddings import Embedder
from .ingest import Ingestor, Progress, Source, remove_knowledge_base
from .retrieval import Retriever, SearchOptions

__all__ = [
    "EvalSetup",
    "Metrics",
    "evaluate_rankings",
    "load_corpus",
    "load_qrels",
    "load_queries",
    "mrr_at",
    "ndcg_at",
    "rank_documents",
    "recall_at",
    "run_evaluation",
]


@dataclass(frozen=True, slots=True)
class Metrics:
    ndcg_10: float
    recall_100: float
    mrr_10: float
    queries: int


def _jsonl(path: Path) -> Iterator[dict[str, object]]:
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InvalidRequestError(f"{path}:{number}: not JSON ({exc})") from None
                if not isinstance(record, dict) or "_id" not in record:
                    raise InvalidRequestError(f"{path}:{number}: a record needs an _id")
                yield record


def load_corpus(path: Path) -> Iterator[Source]:
    """Each record as a source named by its id, its title as the document title."""
    for record in _jsonl(path):
        title = str(record.get("title") or "")
        body = str(record.get("text") or "")
        yield Source(name=str(record["_id"]), data=f"{title}\n{body}".encode(), title=title,
                     blocks=text_blocks(body))


def load_queries(path: Path) -> dict[str, str]:
    return {str(r["_id"]): str(r.get("text") or "") for r in _jsonl(path)}


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(newline="") as f:
        for row in csv.reader(f, delimiter="\t"):
            if len(row) < 3 or row[0] in ("query-id", "query_id"):
                continue
            try:
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
            except ValueError:
                raise InvalidRequestError(f"{path}: bad relevance {row[2]!r} for {row[0]}") from None
    return qrels


def rank_documents(chunk_ranking: Sequence[int], document_of: Callable[[int], str | None]) -> list[str]:
    """Documents in the order of their best chunk."""
    seen: dict[str, None] = {}
    for chunk_id in chunk_ranking:
        doc = document_of(chunk_id)
        if doc is not None:
            seen.setdefault(doc, None)
    return list(seen)


def ndcg_at(ranking: Sequence[str], relevant: dict[str, int], k: int) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranking[:k]))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    best = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / best if best > 0 else 0.0


def recall_at(ranking: Sequence[str], relevant: dict[str, int], k: int) -> float:
    wanted = {doc for doc, g in relevant.items() if g > 0}
    return len(wanted.intersection(ranking[:k])) / len(wanted) if wanted else 0.0


def mrr_at(ranking: Sequence[str], relevant: dict[str, int], k: int) -> float:
    for i, doc in enumerate(ranking[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def evaluate_rankings(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> Metrics:
    judged = [q for q in qrels if any(g > 0 for g in qrels[q].values())]
    if not judged:
        raise InvalidRequestError("no query has a relevant document in the qrels")
    n = len(judged)
    return Metrics(
        ndcg_10=sum(ndcg_at(rankings.get(q, []), qrels[q], 10) for q in judged) / n,
        recall_100=sum(recall_at(rankings.get(q, []), qrels[q], 100) for q in judged) / n,
        mrr_10=sum(mrr_at(rankings.get(q, []), qrels[q], 10) for q in judged) / n,
        queries=n,
    )


@dataclass(frozen=True, slots=True)
class EvalSetup:
    chunk_tokens: int = 200
    chunk_overlap: int = 40
    candidates: int = 300
    """Chunks each search returns: enough for 100 distinct documents in most queries."""


async def run_evaluation(
    db: Database, embedder: Embedder, clock: Clock, corpus: Iterable[Source], queries: dict[str, str],
    qrels: dict[str, dict[str, int]], options: Sequence[SearchOptions], setup: EvalSetup = EvalSetup(),
    progress: Callable[[Progress], None] | None = None,
) -> list[Metrics]:
    """Ingest ``corpus`` into a new knowledge base of the system user, run every judged query with each
    of ``options`` (one ingestion serves them all), score the rankings, and delete the knowledge base."""
    from sqlalchemy import select

    kb_id = new_id("kb")
    now = clock.time()
    kb = KnowledgeBase(
        id=kb_id, owner_id=SYSTEM_USER_ID, name=f"eval-{kb_id}", description="retrieval evaluation",
        embedding_model=embedder.name, chunk_tokens=setup.chunk_tokens, chunk_overlap=setup.chunk_overlap,
        index_version=0, created_at=now, updated_at=now,
    )
    async with db.session() as s:
        s.add(kb)
    try:
        results = await Ingestor(db, embedder, clock).ingest(kb, corpus, submitted_by=SYSTEM_USER_ID,
                                                             progress=progress)
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise InvalidRequestError(f"{len(failed)} corpus records failed to ingest, e.g. {failed[0].source}: "
                                      f"{failed[0].error}")
        async with db.engine.connect() as conn:
            rows = (await conn.execute(
                select(KbChunk.id, KbDocument.source).join(KbDocument, KbDocument.id == KbChunk.document_id)
                .where(KbChunk.kb_id == kb_id)
            )).all()
        source_of = {int(chunk_id): str(source) for chunk_id, source in rows}
        retriever = Retriever(db)
        out: list[Metrics] = []
        for option in options:
            search = dataclasses.replace(option, top_k=min(setup.candidates, 1000), candidates=setup.candidates)
            rankings: dict[str, list[str]] = {}
            for query_id in qrels:
                text = queries.get(query_id, "")
                if not text.strip():
                    continue
                hits = await retriever.hits([kb_id], text, embedder, search)
                rankings[query_id] = rank_documents([h.chunk_id for h in hits], source_of.get)
            out.append(evaluate_rankings(rankings, qrels))
        return out
    finally:
        async with db.session() as s:
            await remove_knowledge_base(s, kb_id)
