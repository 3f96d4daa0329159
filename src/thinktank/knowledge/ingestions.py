"""Ingestion as a job (``POST …/documents?async=true``): the uploaded sources are staged in the database
(``kb_ingestion_items``), then a job (``kb.ingest``) ingests those that have no result yet, a few at a time.
Each document's result is written in the transaction that writes the document, so a job cut short (its worker
killed) and run again goes on where it stopped: every document is ingested, and counted, exactly once.

The job acts as its submitter, with their rights (and their key's) as they are when it runs: a revoked key, or
access to the knowledge base lost, ends it as failed. Embedding with a gateway model is admitted through the
gate (rate limits, budgets, usage) under the submitter's name, batch by batch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..accounts.principal import Principal
from ..clock import Clock
from ..errors import InvalidRequestError, NotFoundError, ThinktankError
from ..gateway.context import CallContext
from ..jobs import JobQueue, RetryPolicy
from ..store.db import Database
from ..store.tables import KbIngestion, KbIngestionItem, KnowledgeBase, new_id
from .embeddings import LOCAL_MODEL
from .ingest import IngestResult, Source
from .service import KnowledgeService

if TYPE_CHECKING:
    from ..accounts.governance import Gate
    from ..catalog import Catalog

__all__ = ["ATTEMPTS", "INGEST_JOB", "Admit", "IngestionView", "Ingestions", "PrincipalLookup", "estimate_tokens",
           "gate_admission"]

log = logging.getLogger("thinktank.knowledge")

INGEST_JOB = "kb.ingest"
ATTEMPTS = 5
"""Runs of one ingestion at most (errors and crashes together), then it fails."""
KEEP = 7 * 86400.0
"""Seconds an ended ingestion (its results) is kept."""
_BATCH = 16
"""Sources ingested (and their results committed) at a time."""
FINISHED = ("succeeded", "failed")

PrincipalLookup = Callable[[str, str | None], Awaitable[Principal | None]]
"""The principal a user (and their key, if one) acts as now; None if revoked."""
Admit = Callable[[Principal, str, int], AbstractAsyncContextManager[CallContext | None]]
"""Admission of embedding work with a model for about so many tokens: the context that pays for it (None: free)."""


def estimate_tokens(sources: Sequence[Source]) -> int:
    """Tokens the embeddings may take, for the rate limits: about 4 bytes a token in text, far more in a
    compressed PDF or DOCX (the real count is recorded afterwards)."""
    total = 0
    for s in sources:
        packed = s.name.lower().endswith((".pdf", ".docx"))
        total += len(s.data) // (16 if packed else 4)
    return total + 1


def gate_admission(gate: Gate, catalog: Catalog) -> Admit:
    """Embedding with a gateway model goes through the gate as the submitter; the local model is free."""

    @asynccontextmanager
    async def admit(principal: Principal, model: str, tokens: int) -> AsyncIterator[CallContext | None]:
        if model == LOCAL_MODEL:
            yield None
            return
        catalog.permit(principal, model)
        async with gate.admitted(principal, None, model, tokens) as admission:
            yield admission.ctx

    return admit


@asynccontextmanager
async def _free(_principal: Principal, _model: str, _tokens: int) -> AsyncIterator[CallContext | None]:
    yield None


@dataclass(frozen=True, slots=True)
class IngestionView:
    record: KbIngestion
    results: list[IngestResult | None]
    """Each staged source's result, in the order they were sent (None: not ingested yet)."""
    status: str
    error: str | None

    @property
    def done(self) -> int:
        return sum(r is not None for r in self.results)


def _result_json(r: IngestResult) -> dict[str, Any]:
    return {"source": r.source, "status": r.status, "document_id": r.document_id, "chunks": r.chunks,
            "error": r.error, "status_code": r.status_code, "warnings": list(r.warnings)}


def _result_of(data: dict[str, Any]) -> IngestResult:
    return IngestResult(data["source"], data["status"], document_id=data.get("document_id"),
                        chunks=int(data.get("chunks") or 0), error=data.get("error"),
                        status_code=data.get("status_code"), warnings=tuple(data.get("warnings") or ()))


def _retryable(exc: ThinktankError) -> bool:
    """Worth another run: a server-side failure, a conflict with another upload, a rate limit."""
    return exc.status >= 500 or exc.status in (409, 429)


class Ingestions:
    def __init__(self, db: Database, clock: Clock, knowledge: KnowledgeService, queue: JobQueue,
                 principals: PrincipalLookup, admit: Admit | None = None) -> None:
        self.db = db
        self.clock = clock
        self.knowledge = knowledge
        self.queue = queue
        self.principals = principals
        self.admit = admit or _free
        queue.register(INGEST_JOB, self._job, retry=RetryPolicy(attempts=ATTEMPTS, wait=5.0))
        queue.add_cleanup(self.forget_old)

    # -- submitting and reading ------------------------------------------------------------------

    async def submit(self, principal: Principal, kb: KnowledgeBase, access: str,
                     items: Sequence[Source | IngestResult]) -> IngestionView:
        """Stage ``items`` (sources, and results already known: refused uploads) and queue their ingestion."""
        if any(isinstance(i, Source) and i.blocks is not None for i in items):
            raise InvalidRequestError("pre-parsed records cannot be ingested as a job")
        now = self.clock.time()
        record = KbIngestion(id=new_id("ing"), kb_id=kb.id, user_id=principal.user_id, key_id=principal.key_id,
                             status="queued", pending=access == "read", total=len(items), attempts=0,
                             created_at=now, updated_at=now)
        rows = [
            {"ingestion_id": record.id, "position": i, "source": item.name, "data": item.data,
             "content_type": item.content_type, "title": item.title, "metadata_": item.metadata,
             "status": None, "result": None}
            if isinstance(item, Source) else
            {"ingestion_id": record.id, "position": i, "source": item.source, "data": b"", "content_type": None,
             "title": None, "metadata_": None, "status": item.status, "result": _result_json(item)}
            for i, item in enumerate(items)
        ]
        async with self.db.session() as s:
            s.add(record)
            await s.flush()
            if rows:
                await s.execute(insert(KbIngestionItem), rows)
        record.job_id = await self._queue(record.id)
        return await self._view(record)

    async def _queue(self, ingestion_id: str) -> str | None:
        key = f"{INGEST_JOB}:{ingestion_id}"
        job_id = await self.queue.defer(INGEST_JOB, {"ingestion_id": ingestion_id}, lock=key, queueing_lock=key)
        if job_id is not None:
            async with self.db.session() as s:
                await s.execute(update(KbIngestion).where(KbIngestion.id == ingestion_id).values(job_id=job_id))
        return job_id

    async def view(self, principal: Principal, kb_ref: str, ingestion_id: str) -> IngestionView:
        """The caller's own ingestion into a knowledge base they may read (404 for anyone else's)."""
        kb, _ = await self.knowledge.get(principal, kb_ref)
        async with self.db.session() as s:
            record = (await s.execute(select(KbIngestion).where(
                KbIngestion.id == ingestion_id, KbIngestion.kb_id == kb.id,
                KbIngestion.user_id == principal.user_id))).scalar_one_or_none()
        if record is None:
            raise NotFoundError(f"There is no ingestion job '{ingestion_id}' in this knowledge base.", param="job_id")
        return await self._view(record)

    async def _view(self, record: KbIngestion) -> IngestionView:
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(select(KbIngestionItem.result).where(
                KbIngestionItem.ingestion_id == record.id).order_by(KbIngestionItem.position))).scalars().all()
        results = [_result_of(r) if r is not None else None for r in rows]
        status, error = record.status, record.error
        if status not in FINISHED and record.job_id is not None:
            info = await self.queue.get(record.job_id)
            if info is not None and info.status == "failed":  # it crashed beyond its retries
                status, error = "failed", error or "The ingestion job failed; the server log says why."
        return IngestionView(record, results, status, error)

    # -- the job ---------------------------------------------------------------------------------

    async def _job(self, payload: dict[str, Any]) -> None:
        ingestion_id = str(payload["ingestion_id"])
        async with self.db.session() as s:
            record = (await s.execute(select(KbIngestion).where(KbIngestion.id == ingestion_id).with_for_update())
                      ).scalar_one_or_none()
            if record is None or record.status in FINISHED:  # deleted with its knowledge base, or done
                return
            if record.attempts >= ATTEMPTS:
                await self._finish(s, record, "failed", f"gave up after {ATTEMPTS} attempts")
                return
            record.attempts += 1
            record.status, record.updated_at = "doing", self.clock.time()
        try:
            principal = await self.principals(record.user_id, record.key_id)
            if principal is None:
                raise NotFoundError("The user or API key that submitted it has been revoked.")
            await self._ingest(record, principal)
        except ThinktankError as exc:
            if _retryable(exc) and record.attempts < ATTEMPTS:
                raise
            await self._end(record.id, "failed", exc.message)
            return
        except Exception:
            if record.attempts >= ATTEMPTS:
                await self._end(record.id, "failed", "Internal error; see the server log.")
            raise
        await self._end(record.id, "succeeded", None)

    async def _ingest(self, record: KbIngestion, principal: Principal) -> None:
        kb, _ = await self.knowledge.get(principal, record.kb_id)
        while True:
            async with self.db.session() as s:
                batch = (await s.execute(select(KbIngestionItem).where(
                    KbIngestionItem.ingestion_id == record.id, KbIngestionItem.status.is_(None))
                    .order_by(KbIngestionItem.position).limit(_BATCH))).scalars().all()
            if not batch:
                return
            positions = [item.position for item in batch]
            sources = [Source(name=item.source, data=item.data, content_type=item.content_type, title=item.title,
                              metadata=item.metadata_) for item in batch]

            async def written(s: AsyncSession, results: Sequence[tuple[int, IngestResult]],
                              at: list[int] = positions) -> None:
                await self._record(s, record.id, [(at[i], r) for i, r in results])

            async with self.admit(principal, kb.embedding_model, estimate_tokens(sources)) as ctx:
                results = await self.knowledge.add(principal, kb.id, sources, ctx=ctx, written=written)
            async with self.db.session() as s:  # the rest: unchanged, duplicates, failures (written ones stay)
                await self._record(s, record.id, list(zip(positions, results, strict=True)))
            async with self.db.session() as s:
                await s.execute(update(KbIngestion).where(KbIngestion.id == record.id)
                                .values(updated_at=self.clock.time()))

    @staticmethod
    async def _record(s: AsyncSession, ingestion_id: str, results: Sequence[tuple[int, IngestResult]]) -> None:
        """Each source's result, unless it has one already (the first result of a source stands)."""
        if not results:
            return
        items = cast(Table, KbIngestionItem.__table__)
        conn = await s.connection()  # a plain executemany (not the ORM's bulk update by primary key)
        await conn.execute(
            update(items)
            .where(items.c.ingestion_id == ingestion_id, items.c.position == bindparam("at"), items.c.status.is_(None))
            .values(status=bindparam("outcome"), result=bindparam("outcome_json")),
            [{"at": at, "outcome": r.status, "outcome_json": _result_json(r)} for at, r in results],
        )

    async def _end(self, ingestion_id: str, status: str, error: str | None) -> None:
        async with self.db.session() as s:
            record = await s.get(KbIngestion, ingestion_id)
            if record is not None and record.status not in FINISHED:
                await self._finish(s, record, status, error)

    async def _finish(self, s: AsyncSession, record: KbIngestion, status: str, error: str | None) -> None:
        """End it; the staged bytes are no longer needed (the results are kept)."""
        now = self.clock.time()
        record.status, record.error, record.updated_at, record.finished_at = status, error, now, now
        await s.execute(update(KbIngestionItem).where(KbIngestionItem.ingestion_id == record.id).values(data=b""))
        if status == "failed":
            log.warning("ingestion %s into %s failed: %s", record.id, record.kb_id, error)

    # -- upkeep ----------------------------------------------------------------------------------

    async def resume(self) -> int:
        """Queue again every ingestion that has not ended (at start: those of a process that died, with the
        in-process queue; with the PostgreSQL queue, one whose job was lost before it was queued). A job
        still queued or running is not doubled: the queueing lock and the lock see to it. Returns how many."""
        async with self.db.engine.connect() as conn:
            ids = (await conn.execute(select(KbIngestion.id).where(
                KbIngestion.status.in_(("queued", "doing")), KbIngestion.attempts < ATTEMPTS)
                .order_by(KbIngestion.created_at))).scalars().all()
        for ingestion_id in ids:
            await self._queue(ingestion_id)
        return len(ids)

    async def forget_old(self) -> None:
        """Ended ingestions older than ``KEEP`` go, with their results."""
        async with self.db.session() as s:
            await s.execute(delete(KbIngestion).where(KbIngestion.finished_at < self.clock.time() - KEEP))
