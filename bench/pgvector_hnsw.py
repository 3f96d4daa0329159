#!/usr/bin/env python3
"""Knowledge-base vector search on PostgreSQL + pgvector at scale: one knowledge base of N synthetic
384-dimensional unit vectors behind its HNSW index (built by thinktank's ``PgVectors``), queried
through ``PgVectors.search`` as the retriever does; recall@10 against exact search (numpy over the
same vectors) and latency.

    python bench/pgvector_hnsw.py                       # 1,000,000 vectors (about half an hour on 2 cores)
    python bench/pgvector_hnsw.py --n 100000            # quicker

The vectors are clustered, not uniform on the sphere (where every point is nearly orthogonal to
every other and no index can find neighbours): ``--shape nested`` (the default) puts them in
topics and subtopics, as sentence embeddings crowd; ``--shape flat`` in 1,000 equidistant crowds,
the hardest case for a graph index (see ``dataset``). Queries come from the same distribution and
are not in the index. PostgreSQL is a
private server from the ``pgserver`` package (PostgreSQL 16, pgvector 0.6) with
``maintenance_work_mem`` raised so the graph is built in memory.

Target (issue 5): p50 < 50 ms with recall@10 >= 0.95 at 1,000,000 vectors.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from thinktank.knowledge.pgvector import PgVectors
from thinktank.store.db import Database
from thinktank.store.migrate import upgrade
from thinktank.store.tables import SYSTEM_USER_ID

DIM = 384
KB = "kb_00000000000000be"


def around(rng: np.random.Generator, n: int, centres: np.ndarray, noise: float) -> np.ndarray:
    """``n`` unit vectors, each a random centre plus Gaussian noise of about ``noise`` in norm."""
    picks = rng.integers(0, len(centres), n)
    out = centres[picks] + rng.normal(0, noise / np.sqrt(DIM), (n, DIM)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def dataset(rng: np.random.Generator, shape: str, n: int, queries: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """``flat``: 1,000 centres, every vector centre + noise (a vector's cosine to its centre about 0.7
    at noise 1): a thousand equidistant crowds, the hardest case for a graph index. ``nested``: 200
    topics, 100 subtopics each, 50 vectors per subtopic (noise 0.8 then 0.35), closer to how sentence
    embeddings crowd: near neighbours are near."""
    top = rng.normal(0, 1, (1000 if shape == "flat" else 200, DIM)).astype(np.float32)
    top /= np.linalg.norm(top, axis=1, keepdims=True)
    if shape == "flat":
        return around(rng, n, top, noise), around(rng, queries, top, noise)
    sub = around(rng, max(n // 50, 1), top, 0.8)
    return around(rng, n, sub, 0.35), around(rng, queries, sub, 0.35)


async def load(url: str, vectors: np.ndarray, batch: int = 50_000) -> None:
    """The knowledge base, a document, N chunks and their vectors, with COPY (binary vectors)."""
    import asyncpg
    from pgvector.asyncpg import register_vector

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await register_vector(conn)
        await conn.execute(
            "INSERT INTO knowledge_bases (id, owner_id, name, description, embedding_model, dimension, chunk_tokens, "
            "chunk_overlap, index_version, created_at, updated_at) VALUES ($1, $2, 'bench', '', 'local', $3, 200, "
            "40, 1, 0, 0)", KB, SYSTEM_USER_ID, DIM)
        await conn.execute(
            "INSERT INTO kb_documents (id, kb_id, source, title, kind, content_hash, size_bytes, chunk_count, status, "
            "submitted_by, created_at, updated_at) VALUES ('doc_bench', $1, 'synthetic', '', 'text', '-', 0, $2, "
            "'approved', $3, 0, 0)", KB, len(vectors), SYSTEM_USER_ID)
        for start in range(0, len(vectors), batch):
            ids = range(start + 1, min(start + batch, len(vectors)) + 1)
            await conn.copy_records_to_table(
                "kb_chunks", columns=["id", "document_id", "kb_id", "position", "text", "context", "tokens",
                                      "searchable"],
                records=[(i, "doc_bench", KB, i, "", "", 0, True) for i in ids])
            await conn.copy_records_to_table(
                "kb_vectors", columns=["chunk_id", "kb_id", "vec"],
                records=[(i, KB, vectors[i - 1]) for i in ids])
        await conn.execute("ANALYZE kb_vectors")
    finally:
        await conn.close()


def _folder() -> Path:
    """Outside root's private temporary folders: as root, pgserver runs PostgreSQL as its own user."""
    folder = Path(tempfile.mkdtemp(prefix="tt-bench-pg-"))
    folder.chmod(0o755)
    return folder


async def main(args: argparse.Namespace) -> None:
    from pgserver.postgres_server import get_server

    rng = np.random.default_rng(7)
    vectors, queries = dataset(rng, args.shape, args.n, args.queries, args.noise)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10] + 1  # chunk ids are 1..n

    server = get_server(_folder(), cleanup_mode="delete")
    try:
        server.psql(f"ALTER SYSTEM SET maintenance_work_mem = '{args.maintenance_work_mem}';"
                    f"ALTER SYSTEM SET max_parallel_maintenance_workers = {args.workers};"
                    "SELECT pg_reload_conf(); CREATE DATABASE bench;")
        url = server.get_uri("bench")
        await asyncio.to_thread(upgrade, url)
        db = Database(url)
        pg = PgVectors(db, ann_min_chunks=1, m=args.m, ef_construction=args.ef_construction)
        assert await pg.available(), "pgvector is not available"
        start = time.perf_counter()
        await load(db.url, vectors)
        print(f"load: {args.n} vectors in {time.perf_counter() - start:.0f} s")
        start = time.perf_counter()
        await pg.build_index(KB, DIM)
        print(f"index: HNSW m={args.m} ef_construction={args.ef_construction} built in "
              f"{time.perf_counter() - start:.0f} s")
        for ef in args.ef_search:
            pg.ef_search = ef
            await pg.search(KB, queries[0], 10)  # warm
            latencies, recalls = [], []
            for q, truth in zip(queries, exact, strict=True):
                start = time.perf_counter()
                ids, _ = await pg.search(KB, q, 10)
                latencies.append((time.perf_counter() - start) * 1000)
                recalls.append(len(set(ids.tolist()) & set(truth.tolist())) / 10)
            latencies.sort()
            print(f"search: ef_search={ef}, {len(queries)} queries: recall@10 {statistics.mean(recalls):.4f}, "
                  f"p50 {statistics.median(latencies):.1f} ms, p95 {latencies[int(len(latencies) * 0.95) - 1]:.1f} ms")
        await db.close()
    finally:
        server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--shape", choices=["flat", "nested"], default="nested", help="how the vectors crowd")
    parser.add_argument("--noise", type=float, default=1.0, help="flat: noise norm relative to the unit centre")
    parser.add_argument("--m", type=int, default=24)
    parser.add_argument("--ef-construction", type=int, default=128)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[200, 400])
    parser.add_argument("--maintenance-work-mem", default="6GB")
    parser.add_argument("--workers", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
