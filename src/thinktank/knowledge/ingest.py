"""Ingestion: sources (files, fetched URLs, records) become documents with chunks and vectors.

A batch of sources is handled in windows and groups: a window of sources is looked up in the
database with one query (earlier versions, duplicates) and parsed and chunked in one hand-off to a
worker thread (PDF parsing is CPU-bound); a group's chunks are embedded together (so the embedder
batches passages of similar length from many documents), then the group is written in one
transaction, with one bulk insert each for its documents, texts and chunks.
For every document that transaction deletes the old version of the same source (its chunks and
their full-text entries go with it) and inserts the new one, and it moves the knowledge base's
``index_version``: a search sees a document entirely or not at all, and a failure leaves the
knowledge base as it was.

Content is de-duplicated by its SHA-256: the same source with the same bytes is ``unchanged``,
the same bytes under another source in the same knowledge base is a ``duplicate``; neither is
parsed or embedded again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..clock import Clock
from ..errors import ConflictError, InvalidRequestError, ThinktankError
from ..store.db import Database
from ..store.tables import KbChunk, KbDocument, KbDocumentText, KnowledgeBase, new_id
from .bm25 import Analyzer, TermCounts
from .chunking import Block, Chunk, ChunkingOptions, chunk_blocks
from .embeddings import Embedder, vectors_to_bytes
from .parsers import Limits, detect_kind, extract
from .pgvector import PgVectors

__all__ = [
    "IngestResult", "Ingestor", "Progress", "Source", "Written", "bump_version", "remove_document",
    "remove_knowledge_base",
]

Status = Literal["added", "replaced", "unchanged", "duplicate", "failed"]


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    """The file name (already made safe) or the URL; re-ingesting the same name replaces the document."""
    data: bytes
    content_type: str | None = None
    title: str | None = None
    blocks: Sequence[Block] | None = None
    """Already-extracted structure (records from a dataset); ``data`` is then only hashed."""
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    source: str
    status: Status
    document_id: str | None = None
    chunks: int = 0
    error: str | None = None
    status_code: int | None = None
    """For a failure: the HTTP status it maps to (415, 422...)."""
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Progress:
    done: int
    total: int
    chunks: int
    """Chunks written so far."""


Written = Callable[[AsyncSession, Sequence[tuple[int, IngestResult]]], Awaitable[None]]
"""Told, inside the transaction that writes them, the results of the sources written (by their index in the
batch): what it records commits with the documents, or neither does."""


@dataclass(slots=True)
class _Prepared:
    index: int
    source: Source
    kind: str
    title: str
    pages: int | None
    warnings: list[str]
    chunks: list[Chunk]
    digest: str
    replaces: str | None
    body: str
    contexts: list[str]
    terms: TermCounts


@dataclass(frozen=True, slots=True)
class _Existing:
    id: str
    source: str
    content_hash: str
    chunk_count: int
    status: str
    submitted_by: str


def _outcome(
    name: str, digest: str, existing: Sequence[_Existing], submitted_by: str, status: str,
) -> IngestResult | str | None:
    """An early result (unchanged, duplicate, refused), or the id of the document this source replaces."""
    same_source = next((r for r in existing if r.source == name), None)
    if same_source is not None and same_source.content_hash == digest:
        return IngestResult(name, "unchanged", document_id=same_source.id, chunks=same_source.chunk_count)
    other = next((r for r in existing if r.source != name and r.content_hash == digest), None)
    if other is not None:
        return IngestResult(name, "duplicate", document_id=other.id, error=f"same content as {other.source}")
    if same_source is not None and status == "pending" and not (
            same_source.status == "pending" and same_source.submitted_by == submitted_by):
        # A contribution never replaces what is already there, only the contributor's own pending one.
        return IngestResult(name, "failed", error=f"a document named {name} is already in the knowledge base; "
                            "only writers replace it", status_code=409)
    return same_source.id if same_source is not None else None


def _windows(items: Sequence[Source], max_sources: int, max_bytes: int) -> Iterator[list[int]]:
    """Consecutive runs of sources, checked against the database together: distinct names, at most
    ``max_sources`` of them and about ``max_bytes`` of data (always at least one source)."""
    window: list[int] = []
    names: set[str] = set()
    size = 0
    for index, source in enumerate(items):
        if window and (source.name in names or len(window) >= max_sources or size + len(source.data) > max_bytes):
            yield window
            window, names, size = [], set(), 0
        window.append(index)
        names.add(source.name)
        size += len(source.data)
    if window:
        yield window


async def remove_document(s: AsyncSession, document_id: str) -> None:
    """A document and its chunks (its text goes with it)."""
    await s.execute(delete(KbChunk).where(KbChunk.document_id == document_id))
    await s.execute(delete(KbDocument).where(KbDocument.id == document_id))


async def remove_knowledge_base(s: AsyncSession, kb_id: str) -> None:
    """A knowledge base with its documents, chunks and shares."""
    await s.execute(delete(KbChunk).where(KbChunk.kb_id == kb_id))
    await s.execute(delete(KnowledgeBase).where(KnowledgeBase.id == kb_id))


async def bump_version(s: AsyncSession, kb_id: str, now: float, **values: object) -> None:
    """Record a change to what a knowledge base holds, so search indexes reload it."""
    await s.execute(update(KnowledgeBase).where(KnowledgeBase.id == kb_id).values(
        index_version=KnowledgeBase.index_version + 1, updated_at=now, **values))


def embedding_text(context: str, text: str) -> str:
    return f"{context}\n{text}" if context else text


def _context(title: str, heading_path: Sequence[str]) -> str:
    parts = [p for p in (title, *heading_path) if p]
    # A heading that repeats the title (a Markdown file's "# Title") is said once.
    if len(parts) > 1 and parts[0].strip().lower() == parts[1].strip().lower():
        parts = parts[1:]
    return " > ".join(parts)


class Ingestor:
    def __init__(
        self, db: Database, embedder: Embedder, clock: Clock, *, limits: Limits | None = None,
        group_chunks: int = 1024, analyzer: Analyzer | None = None, pg_vectors: PgVectors | None = None,
        window_sources: int = 64, window_bytes: int = 4 << 20,
    ) -> None:
        """``pg_vectors``: on PostgreSQL with pgvector, chunk vectors are also written there (for the
        HNSW index of large knowledge bases). ``window_sources`` and ``window_bytes`` bound the sources
        looked up in the database with one query and parsed in one hand-off to a worker thread."""
        self.db = db
        self.pg_vectors = pg_vectors
        self.analyzer = analyzer or Analyzer()
        self.embedder = embedder
        self.clock = clock
        self.limits = limits or Limits()
        self.group_chunks = group_chunks
        self.window_sources = window_sources
        self.window_bytes = window_bytes

    async def ingest(
        self, kb: KnowledgeBase, sources: Iterable[Source], *, submitted_by: str, status: str = "approved",
        progress: Callable[[Progress], None] | None = None, written: Written | None = None,
    ) -> list[IngestResult]:
        if kb.embedding_model != self.embedder.name:
            raise InvalidRequestError(
                f"knowledge base '{kb.name}' embeds with {kb.embedding_model}, not {self.embedder.name}"
            )
        items = list(sources)
        results: list[IngestResult | None] = [None] * len(items)
        written_chunks = 0
        options = ChunkingOptions(target_tokens=kb.chunk_tokens, overlap_tokens=kb.chunk_overlap,
                                  count=self.embedder.count_tokens)
        group: list[_Prepared] = []
        group_size = 0
        seen: dict[str, str] = {}
        """Digests ingested earlier in this batch, so a duplicate within the batch is caught too."""

        async def flush() -> None:
            nonlocal group, group_size, written_chunks
            if group:
                for p, result in zip(group, await self._write(kb, group, submitted_by, status, written), strict=True):
                    results[p.index] = result
                written_chunks += sum(len(p.chunks) for p in group)
                group, group_size = [], 0

        for window in _windows(items, self.window_sources, self.window_bytes):
            if {items[i].name for i in window} & {p.source.name for p in group}:
                await flush()  # the same name twice in one batch: the later one replaces the earlier one
            digests = {i: hashlib.sha256(items[i].data).hexdigest() for i in window}
            found = await self._existing(kb.id, [items[i].name for i in window], list(digests.values()))
            outcomes = {i: _outcome(items[i].name, digests[i], found, submitted_by, status) for i in window}
            todo = [(i, o) for i, o in outcomes.items() if not isinstance(o, IngestResult) and digests[i] not in seen]
            prepared = await asyncio.to_thread(self._prepare_many, todo, items, digests, options)
            for i in window:
                outcome, digest = outcomes[i], digests[i]
                if digest in seen:
                    results[i] = IngestResult(items[i].name, "duplicate", error=f"same content as {seen[digest]}")
                elif isinstance(outcome, IngestResult):
                    results[i] = outcome
                elif isinstance(ready := prepared[i], IngestResult):
                    results[i] = ready
                else:
                    seen[digest] = items[i].name
                    group.append(ready)
                    group_size += len(ready.chunks)
                    if group_size >= self.group_chunks:
                        await flush()
                if progress is not None:
                    progress(Progress(done=i + 1, total=len(items), chunks=written_chunks))
        await flush()
        if progress is not None and items:
            progress(Progress(done=len(items), total=len(items), chunks=written_chunks))
        return [r for r in results if r is not None]

    async def _existing(self, kb_id: str, names: Sequence[str], digests: Sequence[str]) -> list[_Existing]:
        """The knowledge base's documents that have one of ``names`` as their source or one of ``digests``."""
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(
                select(KbDocument.id, KbDocument.source, KbDocument.content_hash, KbDocument.chunk_count,
                       KbDocument.status, KbDocument.submitted_by)
                .where(KbDocument.kb_id == kb_id)
                .where(KbDocument.source.in_(names) | KbDocument.content_hash.in_(digests))
            )).all()
        return [_Existing(*row) for row in rows]

    def _prepare_many(
        self, todo: Sequence[tuple[int, str | None]], items: Sequence[Source], digests: dict[int, str],
        options: ChunkingOptions,
    ) -> dict[int, _Prepared | IngestResult]:
        """Parse and chunk each source of ``todo`` (index, the document it replaces); a bad one fails alone."""
        out: dict[int, _Prepared | IngestResult] = {}
        for index, replaces in todo:
            try:
                out[index] = self._prepare(index, items[index], digests[index], replaces, options)
            except ThinktankError as exc:
                out[index] = IngestResult(items[index].name, "failed", error=exc.message, status_code=exc.status)
        return out

    def _prepare(
        self, index: int, source: Source, digest: str, replaces: str | None, options: ChunkingOptions,
    ) -> _Prepared:
        if source.blocks is not None:
            kind, blocks, title, pages, warnings = "text", list(source.blocks), source.title or "", None, []
        else:
            kind = detect_kind(source.name, source.content_type, source.data)
            extracted = extract(source.data, kind, self.limits)
            blocks, title = extracted.blocks, source.title or extracted.title or ""
            pages, warnings = extracted.pages, list(extracted.warnings)
        chunks = chunk_blocks(blocks, options)
        body = "\n\n".join(b.text for b in blocks)
        return _Prepared(index, source, kind, title, pages, warnings, chunks, digest, replaces, body=body,
                         contexts=[_context(title, c.heading_path) for c in chunks],
                         terms=self.analyzer.count(title, body))

    async def _write(
        self, kb: KnowledgeBase, group: list[_Prepared], submitted_by: str, status: str, written: Written | None,
    ) -> list[IngestResult]:
        texts = [embedding_text(ctx, c.text) for p in group for ctx, c in zip(p.contexts, p.chunks, strict=True)]
        vectors = await self.embedder.embed(texts)
        try:
            return await self._store(kb, group, vectors, submitted_by, status, written)
        except IntegrityError:
            # Another upload wrote one of these sources (or the same bytes) since they were looked up: nothing
            # of this group was written. Look again (a source now there is replaced, the same bytes are
            # unchanged or a duplicate) and write once more.
            pass
        found = await self._existing(kb.id, [p.source.name for p in group], [p.digest for p in group])
        results: list[IngestResult | None] = [None] * len(group)
        kept: list[int] = []
        for i, p in enumerate(group):
            outcome = _outcome(p.source.name, p.digest, found, submitted_by, status)
            if isinstance(outcome, IngestResult):
                results[i] = outcome
            else:
                p.replaces = outcome
                kept.append(i)
        if kept:
            starts = np.cumsum([0, *(len(p.chunks) for p in group)])
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in kept]).astype(np.int64)
            try:
                stored = await self._store(kb, [group[i] for i in kept], vectors[rows], submitted_by, status,
                                           written)
            except IntegrityError:
                raise ConflictError("Another upload wrote the same documents at the same time; send them again.",
                                    code="upload_conflict") from None
            for i, result in zip(kept, stored, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    async def _store(
        self, kb: KnowledgeBase, group: Sequence[_Prepared], vectors: np.ndarray, submitted_by: str, status: str,
        written: Written | None = None,
    ) -> list[IngestResult]:
        """Write a group in one transaction (its vectors in chunk order)."""
        blobs = vectors_to_bytes(vectors)
        dimension = int(vectors.shape[1]) if len(vectors) else None
        now = self.clock.time()
        searchable = status == "approved"
        async with self.db.session() as s:
            current = (await s.execute(select(KnowledgeBase.dimension).where(KnowledgeBase.id == kb.id))).scalar()
            if dimension is not None and current is not None and current != dimension:
                raise InvalidRequestError(
                    f"{self.embedder.name} gives {dimension}-dimensional vectors, the knowledge base holds {current}; "
                    "re-embed it first"
                )
            for p in group:
                if p.replaces is not None:
                    await remove_document(s, p.replaces)
            doc_ids = [new_id("doc") for _ in group]
            await s.execute(insert(KbDocument), [
                {"id": doc_id, "kb_id": kb.id, "source": p.source.name, "title": p.title[:500], "kind": p.kind,
                 "content_hash": p.digest, "size_bytes": len(p.source.data), "pages": p.pages,
                 "chunk_count": len(p.chunks), "status": status, "submitted_by": submitted_by,
                 "reviewed_by": None, "metadata_": p.source.metadata, "warnings": p.warnings or None,
                 "created_at": now, "updated_at": now}
                for doc_id, p in zip(doc_ids, group, strict=True)
            ])
            await s.execute(insert(KbDocumentText), [
                {"document_id": doc_id, "kb_id": kb.id, "title": p.title, "body": p.body, "terms": p.terms.terms,
                 "term_counts": p.terms.counts, "length": p.terms.length}
                for doc_id, p in zip(doc_ids, group, strict=True)
            ])
            placed = [(doc_id, ctx, c) for doc_id, p in zip(doc_ids, group, strict=True)
                      for ctx, c in zip(p.contexts, p.chunks, strict=True)]
            rows = [
                {"document_id": doc_id, "kb_id": kb.id, "position": c.position, "text": c.text, "context": ctx,
                 "page": c.page, "tokens": c.tokens, "searchable": searchable, "embedding": blob}
                for (doc_id, ctx, c), blob in zip(placed, blobs, strict=True)
            ]
            if rows and self.pg_vectors is not None and await self.pg_vectors.available():
                ids = (await s.execute(insert(KbChunk).returning(KbChunk.id, sort_by_parameter_order=True),
                                       rows)).scalars().all()
                await self.pg_vectors.add(s, kb.id, ids, vectors)
            elif rows:
                await s.execute(insert(KbChunk), rows)
            results = [
                IngestResult(p.source.name, "replaced" if p.replaces else "added", document_id=doc_id,
                             chunks=len(p.chunks), warnings=tuple(p.warnings))
                for doc_id, p in zip(doc_ids, group, strict=True)
            ]
            if current is None and dimension is not None:
                await bump_version(s, kb.id, now, dimension=dimension)
            else:
                await bump_version(s, kb.id, now)
            if written is not None:
                await written(s, [(p.index, r) for p, r in zip(group, results, strict=True)])
        return results
