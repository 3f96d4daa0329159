"""Ingestion as a job, at the service: sources staged, ingested a batch at a time, each result written with its
document, so that a job cut short goes on where it stopped and every document is ingested and counted exactly
once (on SQLite and on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from sqlalchemy import func, select, text

from thinktank.accounts.admin_key import AdminKey
from thinktank.accounts.principal import Authenticator, Principal
from thinktank.errors import NotFoundError
from thinktank.jobs import LocalQueue
from thinktank.knowledge.embeddings import Embedder, LocalEmbedder
from thinktank.knowledge.ingest import IngestResult, Source
from thinktank.knowledge.ingestions import Ingestions
from thinktank.knowledge.service import KnowledgeService
from thinktank.store.db import Database
from thinktank.store.tables import KbDocument, KbIngestion, KbIngestionItem, User

from ..fakes.clock import FakeClock

OWNER = Principal(user_id="usr_owner", role="member", email="owner@example.com")
OTHER = Principal(user_id="usr_other", role="member", email="other@example.com")


class Failing:
    """The local model, except that its ``fail_on``-th call (counting from 1) raises, as an upstream might."""

    def __init__(self, inner: LocalEmbedder, fail_on: int) -> None:
        self.inner, self.fail_on, self.calls, self.texts = inner, fail_on, 0, 0
        self.name, self.dimension, self.max_tokens = inner.name, inner.dimension, inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("the embedding server went away")
        self.texts += len(texts)
        return await self.inner.embed(texts)


def doc(i: int) -> Source:
    return Source(f"notes/{i:03d}.md", f"# Note {i}\n\nNote number {i} is about topic {i * 7 % 13}.".encode())


async def world(db: Database, embedder: Embedder, queue: LocalQueue) -> tuple[KnowledgeService, Ingestions]:
    clock = FakeClock()
    async with db.session() as s:
        for p in (OWNER, OTHER):
            if await s.get(User, p.user_id) is None:
                s.add(User(id=p.user_id, email=p.email, role=p.role, created_at=1.0))
    knowledge = KnowledgeService(db, clock, lambda model, _ctx: embedder, queue=queue)
    auth = Authenticator(db, AdminKey.of("test-admin-key"), clock)
    return knowledge, Ingestions(db, clock, knowledge, queue, auth.principal_for)


async def test_a_job_cut_short_goes_on_where_it_stopped_and_counts_each_document_once(
    db: Database, local_embedder: LocalEmbedder,
) -> None:
    embedder = Failing(local_embedder, fail_on=3)  # the job's second batch fails once
    queue = LocalQueue(clock=FakeClock())
    knowledge, ingestions = await world(db, embedder, queue)
    kb = (await knowledge.create(OWNER, "notes")).kb
    await knowledge.add(OWNER, kb.id, [doc(0)])  # already there, unchanged
    items: list[Source | IngestResult] = [doc(i) for i in range(40)]
    items += [Source("copy.md", doc(5).data), IngestResult("huge.bin", "failed", error="too large", status_code=413)]
    view = await ingestions.submit(OWNER, kb, "admin", items)
    assert view.record.status == "queued" and view.record.total == 42
    await queue.settle("kb.ingest")
    done = await ingestions.view(OWNER, "notes", view.record.id)
    assert (done.status, done.record.attempts, done.done) == ("succeeded", 2, 42)
    outcomes = [r.status if r is not None else None for r in done.results]
    assert outcomes == ["unchanged", *["added"] * 39, "duplicate", "failed"]  # written ones are never "unchanged"
    async with db.engine.connect() as conn:
        sources = (await conn.execute(select(KbDocument.source).where(KbDocument.kb_id == kb.id))).scalars().all()
        staged = (await conn.execute(select(func.sum(func.length(KbIngestionItem.data))))).scalar_one()
    assert sorted(sources) == [f"notes/{i:03d}.md" for i in range(40)]  # each once
    assert staged == 0  # the staged bytes go once it has ended
    # doc 0 before; then 15 sources, 16 (failed), the same 16 again, 9: none written is embedded twice
    assert embedder.calls == 5 and embedder.texts == 1 + 15 + 16 + 8
    with pytest.raises(NotFoundError):
        await ingestions.view(OTHER, kb.id, view.record.id)  # not theirs (and they cannot read the knowledge base)


async def test_an_ingestion_left_by_a_dead_process_is_resumed_at_the_next_start(
    db: Database, local_embedder: LocalEmbedder,
) -> None:
    dead = LocalQueue()
    knowledge, ingestions = await world(db, local_embedder, dead)
    kb = (await knowledge.create(OWNER, "notes")).kb
    await dead.stop()  # the process is going: the job is never queued (as if it died right after staging)
    view = await ingestions.submit(OWNER, kb, "admin", [doc(i) for i in range(5)])
    assert view.record.job_id is None and view.status == "queued"
    fresh = LocalQueue()
    _, again = await world(db, local_embedder, fresh)
    assert await again.resume() == 1
    await fresh.settle("kb.ingest")
    done = await again.view(OWNER, kb.id, view.record.id)
    assert (done.status, done.done, [r.status for r in done.results if r]) == ("succeeded", 5, ["added"] * 5)
    assert await again.resume() == 0  # nothing left


async def test_a_revoked_submitter_or_a_deleted_knowledge_base_ends_the_job(
    db: Database, local_embedder: LocalEmbedder,
) -> None:
    queue = LocalQueue()
    knowledge, ingestions = await world(db, local_embedder, queue)
    kb = (await knowledge.create(OWNER, "notes")).kb
    await queue.stop()
    revoked = await ingestions.submit(OWNER, kb, "admin", [doc(1)])
    gone = await ingestions.submit(OWNER, kb, "admin", [doc(2)])
    async with db.session() as s:
        await s.execute(text("UPDATE users SET revoked_at = 5 WHERE id = :u"), {"u": OWNER.user_id})
    fresh = LocalQueue()
    _, again = await world(db, local_embedder, fresh)
    await again.resume()
    await fresh.settle("kb.ingest")
    async with db.engine.connect() as conn:
        rows = dict((await conn.execute(select(KbIngestion.id, KbIngestion.error))).all())
    assert "revoked" in (rows[revoked.record.id] or "") and "revoked" in (rows[gone.record.id] or "")
    async with db.session() as s:
        await s.execute(text("UPDATE users SET revoked_at = NULL WHERE id = :u"), {"u": OWNER.user_id})
    late = await ingestions.submit(OWNER, kb, "admin", [doc(3)])  # its queue is stopped: not run yet
    await knowledge.delete(OWNER, kb.id)
    assert await again.resume() == 0  # its ingestions went with it
    async with db.engine.connect() as conn:
        left = (await conn.execute(select(func.count()).select_from(KbIngestion))).scalar_one()
        items = (await conn.execute(select(func.count()).select_from(KbIngestionItem))).scalar_one()
    assert (left, items) == (0, 0) and late.record.job_id is None


async def test_old_ended_ingestions_are_forgotten(db: Database, local_embedder: LocalEmbedder) -> None:
    queue = LocalQueue()
    knowledge, ingestions = await world(db, local_embedder, queue)
    kb = (await knowledge.create(OWNER, "notes")).kb
    view = await ingestions.submit(OWNER, kb, "admin", [doc(1)])
    await queue.settle("kb.ingest")
    await ingestions.forget_old()
    assert (await ingestions.view(OWNER, kb.id, view.record.id)).status == "succeeded"  # recent: kept
    assert isinstance(ingestions.clock, FakeClock)
    ingestions.clock.advance(8 * 86400)
    await queue.run_cleanups()  # the queue's periodic clean-up runs it
    with pytest.raises(NotFoundError):
        await ingestions.view(OWNER, kb.id, view.record.id)
