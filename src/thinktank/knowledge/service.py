"""Knowledge bases as their users see them: create, list, share, delete, add documents (or submit
them for review), search. Every call names the principal and every object is checked against it.

Access, from least to most: ``read`` (search, list documents, submit a contribution), ``write``
(add and delete documents) and ``admin`` (share, review contributions, re-embed, delete the
knowledge base). The owner and platform admins have ``admin``; a share gives a user, or every
member of a team, ``read`` or ``write``. A knowledge base the caller may not read does not exist
for them (404), whatever they try to do with it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from sqlalchemy import ColumnElement, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..accounts.principal import Principal
from ..clock import Clock
from ..errors import ConflictError, InvalidRequestError, NotFoundError, PermissionDeniedError
from ..gateway.context import CallContext
from ..jobs import JobQueue, LocalQueue, RetryPolicy
from ..metrics.sink import MetricsSink
from ..store.db import Database
from ..store.tables import KbChunk, KbDocument, KbShare, KnowledgeBase, Team, User, new_id
from .embeddings import LOCAL_MODEL, Embedder, vectors_to_bytes
from .ingest import (
    Ingestor,
    IngestResult,
    Progress,
    Source,
    Written,
    bump_version,
    embedding_text,
    remove_document,
    remove_knowledge_base,
)
from .pgvector import PgVectors
from .retrieval import Retrieved, Retriever, SearchOptions

if TYPE_CHECKING:
    from ..observability.tracing import Tracing

__all__ = ["INDEX_JOB", "Access", "EmbedderFor", "KbView", "KnowledgeService"]

Access = Literal["read", "write", "admin"]
_RANK: dict[str, int] = {"read": 1, "write": 2, "admin": 3}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True, slots=True)
class KbView:
    kb: KnowledgeBase
    access: Access
    documents: int = 0
    chunks: int = 0
    pending: int = 0


def _best(granted: Iterable[str]) -> Access | None:
    best = max((_RANK.get(a, 0) for a in granted), default=0)
    for access in ("read", "write", "admin"):
        if _RANK[access] == best:
            return access
    return None


log = logging.getLogger("thinktank.knowledge")

EmbedderFor = Callable[[str, CallContext | None], Embedder]
"""The embedder of a model name, accounting any cost to the context's caller (raises if unknown)."""

INDEX_JOB = "kb.index"
"""The job that builds a knowledge base's HNSW index (payload ``{"kb_id"}``); one at a time per knowledge base,
at most one more waiting. Building again is harmless (an interrupted build leaves an invalid index, which is
never used and is dropped by the next build): retried."""


class KnowledgeService:
    def __init__(
        self, db: Database, clock: Clock, embedder_for: EmbedderFor, *,
        retriever: Retriever | None = None, default_chunk_tokens: int = 200, default_chunk_overlap: int = 40,
        metrics: MetricsSink | None = None, queue: JobQueue | None = None,
    ) -> None:
        """``queue``: where index builds run (default: a local queue of this service's own)."""
        self.db = db
        self.metrics = metrics or MetricsSink()
        self.clock = clock
        self.embedder_for = embedder_for
        self.retriever = retriever or Retriever(db)
        self.default_chunk_tokens = default_chunk_tokens
        self.default_chunk_overlap = default_chunk_overlap
        self._own_queue = queue is None
        self.queue: JobQueue = queue or LocalQueue()
        self.queue.register(INDEX_JOB, self._index_job, retry=RetryPolicy(attempts=3, wait=5.0))
        self.tracing: Tracing | None = None
        """A span for each search, when tracing is on (the app factory sets it)."""

    async def settle(self) -> None:
        """Wait for the index builds queued or under way."""
        await self.queue.settle(INDEX_JOB)

    async def close(self) -> None:
        """Shutdown: a queue of this service's own stops, its builds under way cancelled (an interrupted
        build leaves an invalid index, which is never used and is dropped by the next build); a shared
        queue is stopped by its owner."""
        if self._own_queue:
            await self.queue.stop()

    # -- access ----------------------------------------------------------------------------------

    async def _access(self, principal: Principal, kb: KnowledgeBase) -> Access | None:
        if kb.owner_id == principal.user_id or principal.is_admin:
            return "admin"
        async with self.db.engine.connect() as conn:
            granted = (await conn.execute(
                select(KbShare.access).where(KbShare.kb_id == kb.id, or_(*self._holder(principal)))
            )).scalars().all()
        return _best(granted)

    async def get(self, principal: Principal, kb_ref: str, need: Access = "read") -> tuple[KnowledgeBase, Access]:
        """The knowledge base by id (or by name: the caller's own first, then one shared with them);
        404 if the caller may not read it, 403 if they may read it but need more."""
        kb = await self._find(principal, kb_ref)
        access = await self._access(principal, kb) if kb is not None else None
        if kb is None or access is None:
            raise NotFoundError(f"knowledge base '{kb_ref}' not found", param="knowledge_base")
        if _RANK[access] < _RANK[need]:
            raise PermissionDeniedError(f"you have {access} access to '{kb.name}'; this needs {need}")
        return kb, access

    async def _find(self, principal: Principal, ref: str) -> KnowledgeBase | None:
        async with self.db.session() as s:
            if ref.startswith("kb_"):
                found = (await s.execute(select(KnowledgeBase).where(KnowledgeBase.id == ref))).scalar_one_or_none()
                if found is not None:
                    return found
            own = (await s.execute(select(KnowledgeBase).where(
                KnowledgeBase.owner_id == principal.user_id, KnowledgeBase.name == ref))).scalar_one_or_none()
            if own is not None:
                return own
            shared = (await s.execute(
                select(KnowledgeBase).join(KbShare, KbShare.kb_id == KnowledgeBase.id)
                .where(KnowledgeBase.name == ref, or_(*self._holder(principal))).distinct()
            )).scalars().all()
        if len(shared) > 1:
            raise InvalidRequestError(f"several knowledge bases shared with you are called '{ref}'; use its id",
                                      param="knowledge_base")
        return shared[0] if shared else None

    @staticmethod
    def _holder(principal: Principal) -> list[ColumnElement[bool]]:
        holders: list[ColumnElement[bool]] = [KbShare.user_id == principal.user_id]
        if principal.team_id:
            holders.append(KbShare.team_id == principal.team_id)
        return holders

    async def readable_ids(self, principal: Principal, refs: Sequence[str]) -> list[str]:
        """Ids of the named knowledge bases, each checked for read access (404 on the first that is not)."""
        ids: list[str] = []
        for ref in refs:
            kb, _ = await self.get(principal, ref)
            if kb.id not in ids:
                ids.append(kb.id)
        return ids

    async def versions(self, principal: Principal, refs: Sequence[str]) -> str:
        """What an answer grounded in ``refs`` depends on, for the response cache: each knowledge base's id and
        ``index_version`` (bumped by every change to what is searchable), each checked for read access (404 on
        the first that is not: a cached answer is never served to someone who may no longer read its sources)."""
        seen: dict[str, int] = {}
        for ref in refs:
            kb, _ = await self.get(principal, ref)
            seen[kb.id] = kb.index_version
        return ",".join(f"{kb_id}:{version}" for kb_id, version in sorted(seen.items()))

    # -- knowledge bases -------------------------------------------------------------------------

    async def create(
        self, principal: Principal, name: str, *, description: str = "", embedding_model: str | None = None,
        chunk_tokens: int | None = None, chunk_overlap: int | None = None,
    ) -> KbView:
        if not _NAME.match(name):
            raise InvalidRequestError("name: letters, digits, '.', '_' and '-', at most 100, starting with a letter "
                                      "or digit", param="name")
        model = embedding_model or LOCAL_MODEL
        self.embedder_for(model, None)  # an unknown model is refused now, not at the first upload
        tokens = chunk_tokens or self.default_chunk_tokens
        overlap = self.default_chunk_overlap if chunk_overlap is None else chunk_overlap
        if not 32 <= tokens <= 2000 or not 0 <= overlap < tokens // 2:
            raise InvalidRequestError("chunk_tokens is 32 to 2000 and chunk_overlap under half of it",
                                      param="chunk_tokens")
        now = self.clock.time()
        kb = KnowledgeBase(id=new_id("kb"), owner_id=principal.user_id, name=name, description=description[:2000],
                           embedding_model=model, chunk_tokens=tokens, chunk_overlap=overlap, index_version=0,
                           created_at=now, updated_at=now)
        async with self.db.session() as s:
            taken = (await s.execute(select(KnowledgeBase.id).where(
                KnowledgeBase.owner_id == principal.user_id, KnowledgeBase.name == name))).first()
            if taken is not None:
                raise ConflictError(f"you already have a knowledge base called '{name}'")
            s.add(kb)
        return KbView(kb, "admin")

    async def visible(self, principal: Principal) -> list[KbView]:
        """The caller's own knowledge bases and those shared with them (or their team)."""
        async with self.db.session() as s:
            own = (await s.execute(select(KnowledgeBase).where(KnowledgeBase.owner_id == principal.user_id))
                   ).scalars().all()
            shared = (await s.execute(
                select(KnowledgeBase, KbShare.access).join(KbShare, KbShare.kb_id == KnowledgeBase.id)
                .where(or_(*self._holder(principal)))
            )).all()
            found: dict[str, tuple[KnowledgeBase, Access]] = {kb.id: (kb, "admin") for kb in own}
            for kb, granted in shared:
                access = _best([granted])
                if access is not None and (kb.id not in found or _RANK[access] > _RANK[found[kb.id][1]]):
                    found[kb.id] = (kb, access)
            stats = await self._stats(s, list(found))
        return [KbView(kb, access, *stats.get(kb.id, (0, 0, 0)))
                for kb, access in sorted(found.values(), key=lambda v: (v[0].name, v[0].id))]

    async def view(self, principal: Principal, kb_ref: str) -> KbView:
        kb, access = await self.get(principal, kb_ref)
        async with self.db.session() as s:
            stats = await self._stats(s, [kb.id])
        return KbView(kb, access, *stats.get(kb.id, (0, 0, 0)))

    @staticmethod
    async def _stats(s: AsyncSession, kb_ids: list[str]) -> dict[str, tuple[int, int, int]]:
        """Documents, chunks and pending contributions per knowledge base."""
        if not kb_ids:
            return {}
        rows = (await s.execute(
            select(KbDocument.kb_id, func.count(), func.coalesce(func.sum(KbDocument.chunk_count), 0),
                   func.sum(case((KbDocument.status == "pending", 1), else_=0)))
            .where(KbDocument.kb_id.in_(kb_ids)).group_by(KbDocument.kb_id)
        )).all()
        return {kb: (int(n), int(chunks), int(pending or 0)) for kb, n, chunks, pending in rows}

    async def delete(self, principal: Principal, kb_ref: str) -> None:
        kb, _ = await self.get(principal, kb_ref, "admin")
        async with self.db.session() as s:
            await remove_knowledge_base(s, kb.id)
        self.retriever.cache.forget(kb.id)

    async def share(
        self, principal: Principal, kb_ref: str, access: str, *, user: str | None = None, team: str | None = None,
    ) -> KbShare:
        """Give a user (by id or email) or a team (by id or name) ``read`` or ``write``; sharing again changes it."""
        if access not in ("read", "write"):
            raise InvalidRequestError("access is read or write", param="access")
        if (user is None) == (team is None):
            raise InvalidRequestError("share with a user or a team", param="user")
        kb, _ = await self.get(principal, kb_ref, "admin")
        now = self.clock.time()
        async with self.db.session() as s:
            if user is not None:
                user_id = (await s.execute(select(User.id).where(or_(User.id == user, User.email == user.lower()))
                                           )).scalar_one_or_none()
                if user_id is None:
                    raise NotFoundError(f"user '{user}' not found", param="user")
                if user_id == kb.owner_id:
                    raise InvalidRequestError("the owner already has every right", param="user")
                existing = (await s.execute(select(KbShare).where(KbShare.kb_id == kb.id, KbShare.user_id == user_id))
                            ).scalar_one_or_none()
                target: dict[str, str | None] = {"user_id": user_id, "team_id": None}
            else:
                assert team is not None
                team_id = (await s.execute(select(Team.id).where(or_(Team.id == team, Team.name == team)))
                           ).scalar_one_or_none()
                if team_id is None:
                    raise NotFoundError(f"team '{team}' not found", param="team")
                existing = (await s.execute(select(KbShare).where(KbShare.kb_id == kb.id, KbShare.team_id == team_id))
                            ).scalar_one_or_none()
                target = {"user_id": None, "team_id": team_id}
            if existing is not None:
                existing.access = access
                return existing
            row = KbShare(kb_id=kb.id, access=access, created_at=now, **target)
            s.add(row)
            await s.flush()
            return row

    async def shares(self, principal: Principal, kb_ref: str) -> list[KbShare]:
        kb, _ = await self.get(principal, kb_ref, "admin")
        async with self.db.session() as s:
            return list((await s.execute(select(KbShare).where(KbShare.kb_id == kb.id).order_by(KbShare.id))
                         ).scalars().all())

    async def unshare(self, principal: Principal, kb_ref: str, share_id: int) -> None:
        kb, _ = await self.get(principal, kb_ref, "admin")
        async with self.db.session() as s:
            gone = await s.execute(delete(KbShare).where(KbShare.kb_id == kb.id, KbShare.id == share_id))
            if gone.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFoundError(f"share {share_id} not found", param="share")

    # -- documents -------------------------------------------------------------------------------

    async def add(
        self, principal: Principal, kb_ref: str, sources: Iterable[Source],
        progress: Callable[[Progress], None] | None = None, ctx: CallContext | None = None,
        written: Written | None = None,
    ) -> list[IngestResult]:
        """Writers add documents; readers submit them as contributions, searchable once approved. ``written``
        records the results of the documents written in the transactions that write them."""
        kb, access = await self.get(principal, kb_ref)
        status = "approved" if _RANK[access] >= _RANK["write"] else "pending"
        pg = self.retriever.cache.pg
        ingestor = Ingestor(self.db, self.embedder_for(kb.embedding_model, ctx), self.clock, pg_vectors=pg)
        results = await ingestor.ingest(kb, sources, submitted_by=principal.user_id, status=status, progress=progress,
                                        written=written)
        self._count(results)
        if pg is not None and await pg.available() and any(r.status in ("added", "replaced") for r in results):
            await self._index_later(kb.id)
        return results

    def _count(self, results: Sequence[IngestResult]) -> None:
        """Documents by outcome, and the chunks written (added or replaced documents), for the metrics."""
        if not self.metrics.enabled:
            return
        outcomes: dict[str, list[int]] = {}
        for r in results:
            seen = outcomes.setdefault(r.status, [0, 0])
            seen[0] += 1
            if r.status in ("added", "replaced"):
                seen[1] += r.chunks
        for outcome, (documents, chunks) in outcomes.items():
            self.metrics.ingested(outcome, documents, chunks)

    async def _index_later(self, kb_id: str) -> None:
        """Build the knowledge base's HNSW index as a job if it has grown large enough: minutes for a large
        one, which no upload should wait for (searches stay exact until it is ready). A change while a build
        runs queues one more, which runs after it (the lock) and sees the change; more changes meanwhile
        add nothing (the queueing lock)."""
        key = f"{INDEX_JOB}:{kb_id}"
        try:
            await self.queue.defer(INDEX_JOB, {"kb_id": kb_id}, lock=key, queueing_lock=key)
        except Exception:  # the upload stands; the next one queues the build again
            log.exception("could not queue the HNSW index build of %s", kb_id)

    async def _index_job(self, payload: dict[str, object]) -> None:
        pg = self.retriever.cache.pg
        if pg is not None and await pg.available():
            await self._index_if_large(pg, str(payload["kb_id"]))

    async def _index_if_large(self, pg: PgVectors, kb_id: str) -> None:
        """A knowledge base that has grown past ``pg.ann_min_chunks`` gets its HNSW index (built
        concurrently: searches and writes go on meanwhile); its version moves so searches use it."""
        async with self.db.session() as s:
            dimension, chunks = (await s.execute(
                select(KnowledgeBase.dimension, func.count(KbChunk.id)).join(KbChunk, KbChunk.kb_id == KnowledgeBase.id)
                .where(KnowledgeBase.id == kb_id).group_by(KnowledgeBase.dimension))).one_or_none() or (None, 0)
        if await pg.maybe_index(kb_id, dimension, chunks):
            async with self.db.session() as s:
                await bump_version(s, kb_id, self.clock.time())

    async def documents(self, principal: Principal, kb_ref: str, status: str | None = None) -> list[KbDocument]:
        kb, access = await self.get(principal, kb_ref)
        query = select(KbDocument).where(KbDocument.kb_id == kb.id)
        if status is not None:
            query = query.where(KbDocument.status == status)
        if access != "admin":
            # Pending and rejected contributions are seen by their author and the knowledge base's admins only.
            query = query.where(or_(KbDocument.status == "approved", KbDocument.submitted_by == principal.user_id))
        async with self.db.session() as s:
            return list((await s.execute(query.order_by(KbDocument.source))).scalars().all())

    async def _document(self, kb: KnowledgeBase, doc_id: str) -> KbDocument:
        async with self.db.session() as s:
            doc = (await s.execute(select(KbDocument).where(KbDocument.id == doc_id, KbDocument.kb_id == kb.id))
                   ).scalar_one_or_none()
        if doc is None:
            raise NotFoundError(f"document '{doc_id}' not found", param="document")
        return doc

    async def delete_document(self, principal: Principal, kb_ref: str, doc_id: str) -> None:
        kb, access = await self.get(principal, kb_ref)
        doc = await self._document(kb, doc_id)
        if _RANK[access] < _RANK["write"] and doc.submitted_by != principal.user_id:
            raise PermissionDeniedError("only writers delete documents (or you, your own contribution)")
        async with self.db.session() as s:
            await remove_document(s, doc.id)
            await bump_version(s, kb.id, self.clock.time())

    async def review(self, principal: Principal, kb_ref: str, doc_id: str, approve: bool) -> KbDocument:
        kb, _ = await self.get(principal, kb_ref, "admin")
        doc = await self._document(kb, doc_id)
        status = "approved" if approve else "rejected"
        async with self.db.session() as s:
            await s.execute(update(KbDocument).where(KbDocument.id == doc.id).values(
                status=status, reviewed_by=principal.user_id, updated_at=self.clock.time()))
            await s.execute(update(KbChunk).where(KbChunk.document_id == doc.id).values(searchable=approve))
            await bump_version(s, kb.id, self.clock.time())
        doc.status, doc.reviewed_by = status, principal.user_id
        return doc

    async def reembed(
        self, principal: Principal, kb_ref: str, model: str, ctx: CallContext | None = None, *, batch: int = 256,
    ) -> KbView:
        """Embed every chunk again with ``model`` and make it the knowledge base's model, all at once:
        searches see the old vectors until the new ones are written in one transaction. A change to the
        knowledge base meanwhile (an upload, a deletion) is a 409: nothing is written, try again."""
        kb, _ = await self.get(principal, kb_ref, "admin")
        embedder = self.embedder_for(model, ctx)
        async with self.db.engine.connect() as conn:
            started = (await conn.execute(select(KnowledgeBase.index_version).where(KnowledgeBase.id == kb.id))
                       ).scalar_one()
            rows = (await conn.execute(select(KbChunk.id, KbChunk.context, KbChunk.text)
                                       .where(KbChunk.kb_id == kb.id).order_by(KbChunk.id))).all()
        parts = [await embedder.embed([embedding_text(c, t) for _, c, t in rows[i:i + batch]])
                 for i in range(0, len(rows), batch)]
        vectors = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        dimension = int(vectors.shape[1]) if len(rows) else None
        pg = self.retriever.cache.pg
        ann = pg is not None and kb.id in await pg.indexed([kb.id])
        async with self.db.session() as s:
            now = (await s.execute(select(KnowledgeBase.index_version).where(KnowledgeBase.id == kb.id)
                                   .with_for_update())).scalar_one()
            if now != started:
                raise ConflictError(f"'{kb.name}' changed while it was being re-embedded; nothing was written, "
                                    "try again")
            blobs = vectors_to_bytes(vectors)
            if rows:
                await s.execute(update(KbChunk), [{"id": r[0], "embedding": blob}
                                                  for r, blob in zip(rows, blobs, strict=True)])
            if pg is not None and await pg.available():
                await pg.replace(s, kb.id, [r[0] for r in rows], vectors)
            await bump_version(s, kb.id, self.clock.time(), embedding_model=model, dimension=dimension)
        if pg is not None and ann:
            await self._index_later(kb.id)  # ``replace`` dropped the old vectors' index
        self.retriever.cache.forget(kb.id)
        return await self.view(principal, kb.id)

    # -- search ----------------------------------------------------------------------------------

    async def search(
        self, principal: Principal, kb_refs: Sequence[str], query: str, options: SearchOptions,
        ctx: CallContext | None = None,
    ) -> list[Retrieved]:
        if not kb_refs:
            raise InvalidRequestError("name at least one knowledge base", param="knowledge_bases")
        ids = await self.readable_ids(principal, kb_refs)
        async with self.db.session() as s:
            models = set((await s.execute(select(KnowledgeBase.embedding_model).where(KnowledgeBase.id.in_(ids)))
                          ).scalars().all())
        if len(models) > 1 and options.mode != "keyword":
            raise InvalidRequestError("these knowledge bases embed with different models; search them one at a time "
                                      "or in keyword mode", param="knowledge_bases")
        embedder = self.embedder_for(models.pop(), ctx) if models and options.mode != "keyword" else None
        if self.tracing is None:
            return await self.retriever.search(ids, query, embedder, options)
        span = self.tracing.retrieval(ids, query, options.mode, options.top_k)
        try:
            found = await self.retriever.search(ids, query, embedder, options)
        except BaseException as exc:
            span.close(exc)
            raise
        span.span.set_attribute("thinktank.retrieval.hits", len(found))
        span.close()
        return found
