"""Threads and their messages, as their owners see them: create, list, rename, archive, delete, read.

Every thread is its owner's: another user's thread (and so its messages and summaries) does not exist
for anyone else (404), admins included. A turn's user message and reply are written together, in one
transaction, when the reply is complete: a failed or cancelled turn leaves the thread as it was.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..accounts.principal import Principal
from ..catalog import Catalog
from ..clock import Clock
from ..errors import ConflictError, InvalidRequestError, NotFoundError
from ..knowledge.service import KnowledgeService
from ..store.db import Database
from ..store.tables import ChatPersona, Thread, ThreadMessage, ThreadSummary, new_id
from .turn_log import TurnTakenOver

__all__ = [
    "MAX_KNOWLEDGE_BASES", "MAX_TITLE", "NewMessage", "ThreadService", "message_public", "summary_public",
    "thread_public",
]

MAX_TITLE = 200
MAX_KNOWLEDGE_BASES = 10
_AUTO_TITLE = 80
_UNSET: Any = object()


def thread_public(t: Thread, *, messages: int | None = None, cost_usd: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": t.id, "object": "thread", "title": t.title, "model": t.model, "persona_id": t.persona_id,
        "knowledge_bases": list(t.knowledge_bases or []), "archived": t.archived, "created_at": t.created_at,
        "updated_at": t.updated_at,
    }
    if messages is not None:
        out["message_count"] = messages
    if cost_usd is not None:
        out["cost_usd"] = round(cost_usd, 10)
    return out


def message_public(m: ThreadMessage) -> dict[str, Any]:
    context = m.context or {}
    return {
        "id": m.id, "thread_id": m.thread_id, "seq": m.seq, "role": m.role, "content": m.content, "model": m.model,
        "deployment": m.deployment,
        "usage": {"prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens,
                  "total_tokens": m.prompt_tokens + m.completion_tokens},
        "cost_usd": round(m.cost_usd, 10), "finish_reason": m.finish_reason,
        "citations": list(context.get("citations") or []), "context": context, "created_at": m.created_at,
    }


def summary_public(s: ThreadSummary) -> dict[str, Any]:
    return {"id": s.id, "through_seq": s.through_seq, "content": s.content, "model": s.model,
            "usage": {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
                      "total_tokens": s.prompt_tokens + s.completion_tokens},
            "cost_usd": round(s.cost_usd, 10), "created_at": s.created_at}


def check_title(title: str) -> str:
    title = " ".join(title.split())
    if len(title) > MAX_TITLE:
        raise InvalidRequestError(f"title: at most {MAX_TITLE} characters (got {len(title)})", param="title")
    return title


def _auto_title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _AUTO_TITLE else line[:_AUTO_TITLE - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class NewMessage:
    role: str
    content: str
    model: str | None = None
    deployment: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    finish_reason: str | None = None
    context: dict[str, Any] | None = None


class ThreadService:
    def __init__(self, db: Database, clock: Clock, catalog: Catalog, knowledge: KnowledgeService) -> None:
        self.db = db
        self.clock = clock
        self.catalog = catalog
        self.knowledge = knowledge

    # -- checks ----------------------------------------------------------------------------------

    def check_model(self, principal: Principal, model: str) -> str:
        """404 for a model that does not exist here or is not allowed to the caller (any catalog name: a
        deployment, a group, an ensemble, a debate, a knowledge base); 400 if what it uses is not."""
        self.catalog.check(principal, model)
        return model

    async def owned_persona(self, principal: Principal, persona_id: str | None) -> str | None:
        if persona_id is None:
            return None
        async with self.db.session() as s:
            persona = await s.get(ChatPersona, persona_id)
        if persona is None or persona.owner_id != principal.user_id:
            raise NotFoundError(f"There is no persona '{persona_id}'.", param="persona_id")
        return persona.id

    async def _knowledge_bases(self, principal: Principal, refs: Sequence[str] | None) -> list[str]:
        refs = list(refs or [])
        if len(refs) > MAX_KNOWLEDGE_BASES:
            raise InvalidRequestError(f"knowledge_bases: at most {MAX_KNOWLEDGE_BASES}", param="knowledge_bases")
        return await self.knowledge.readable_ids(principal, refs) if refs else []

    # -- threads ---------------------------------------------------------------------------------

    async def create(
        self, principal: Principal, *, model: str, title: str = "", persona_id: str | None = None,
        knowledge_bases: Sequence[str] | None = None,
    ) -> Thread:
        title = check_title(title)
        self.check_model(principal, model)
        persona = await self.owned_persona(principal, persona_id)
        kbs = await self._knowledge_bases(principal, knowledge_bases)
        now = self.clock.time()
        thread = Thread(id=new_id("thr"), user_id=principal.user_id, title=title, model=model, persona_id=persona,
                        knowledge_bases=kbs, archived=False, created_at=now, updated_at=now)
        async with self.db.session() as s:
            s.add(thread)
        return thread

    async def get(self, principal: Principal, thread_id: str) -> Thread:
        async with self.db.session() as s:
            thread = await s.get(Thread, thread_id)
        if thread is None or thread.user_id != principal.user_id:
            raise NotFoundError(f"There is no thread '{thread_id}'.", param="thread_id")
        return thread

    async def list_threads(
        self, principal: Principal, *, archived: bool | None = False, limit: int = 50, before: float | None = None,
        search: str | None = None,
    ) -> list[dict[str, Any]]:
        """The caller's threads, most recently active first, with their message count and cost; ``search``:
        only those whose title holds it (any case)."""
        query = select(Thread).where(Thread.user_id == principal.user_id)
        if search:
            pattern = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(Thread.title.ilike(f"%{pattern}%", escape="\\"))
        if archived is not None:
            query = query.where(Thread.archived == archived)
        if before is not None:
            query = query.where(Thread.updated_at < before)
        query = query.order_by(Thread.updated_at.desc(), Thread.id).limit(limit)
        async with self.db.session() as s:
            threads = list((await s.execute(query)).scalars().all())
            stats = {row.thread_id: (int(row.n), float(row.cost or 0.0)) for row in (await s.execute(
                select(ThreadMessage.thread_id, func.count().label("n"), func.sum(ThreadMessage.cost_usd).label("cost"))
                .where(ThreadMessage.thread_id.in_([t.id for t in threads])).group_by(ThreadMessage.thread_id)
            )).all()} if threads else {}
        return [thread_public(t, messages=stats.get(t.id, (0, 0.0))[0], cost_usd=stats.get(t.id, (0, 0.0))[1])
                for t in threads]

    async def update(
        self, principal: Principal, thread_id: str, *, title: str | None = None, archived: bool | None = None,
        model: str | None = None, persona_id: Any = _UNSET, knowledge_bases: Sequence[str] | None = None,
    ) -> Thread:
        """Rename, archive (or unarchive), change the model, the persona (None: none) or the knowledge bases."""
        await self.get(principal, thread_id)
        changes: dict[str, Any] = {}
        if title is not None:
            changes["title"] = check_title(title)
        if archived is not None:
            changes["archived"] = archived
        if model is not None:
            changes["model"] = self.check_model(principal, model)
        if persona_id is not _UNSET:
            changes["persona_id"] = await self.owned_persona(principal, persona_id)
        if knowledge_bases is not None:
            changes["knowledge_bases"] = await self._knowledge_bases(principal, knowledge_bases)
        async with self.db.session() as s:
            row = await s.get(Thread, thread_id)
            if row is None or row.user_id != principal.user_id:
                raise NotFoundError(f"There is no thread '{thread_id}'.", param="thread_id")
            for key, value in changes.items():
                setattr(row, key, value)
            if changes:
                row.updated_at = self.clock.time()
            return row

    async def delete(self, principal: Principal, thread_id: str) -> None:
        """The thread, its messages and summaries (memories learned from it stay, without their source)."""
        async with self.db.session() as s:
            gone = await s.execute(delete(Thread).where(Thread.id == thread_id, Thread.user_id == principal.user_id))
            if gone.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFoundError(f"There is no thread '{thread_id}'.", param="thread_id")

    # -- messages and summaries ------------------------------------------------------------------

    async def messages(
        self, principal: Principal, thread_id: str, *, after: int = 0, limit: int | None = None,
    ) -> list[ThreadMessage]:
        await self.get(principal, thread_id)
        return await self.messages_of(thread_id, after=after, limit=limit)

    async def messages_of(self, thread_id: str, *, after: int = 0, limit: int | None = None) -> list[ThreadMessage]:
        query = (select(ThreadMessage).where(ThreadMessage.thread_id == thread_id, ThreadMessage.seq > after)
                 .order_by(ThreadMessage.seq))
        if limit is not None:
            query = query.limit(limit)
        async with self.db.session() as s:
            return list((await s.execute(query)).scalars().all())

    async def last_messages(self, thread_id: str, limit: int, before: int | None = None) -> list[ThreadMessage]:
        """The thread's last ``limit`` messages (before the one numbered ``before``, if given), in order."""
        query = select(ThreadMessage).where(ThreadMessage.thread_id == thread_id)
        if before is not None:
            query = query.where(ThreadMessage.seq < before)
        query = query.order_by(ThreadMessage.seq.desc()).limit(limit)
        async with self.db.session() as s:
            return list(reversed((await s.execute(query)).scalars().all()))

    async def message_of(self, thread_id: str, message_id: str) -> ThreadMessage | None:
        """The message ``message_id`` if it is one of the thread's."""
        async with self.db.session() as s:
            found = await s.get(ThreadMessage, message_id)
        return found if found is not None and found.thread_id == thread_id else None

    def extraction_claim(self, message_id: str) -> Callable[[AsyncSession], Awaitable[bool]]:
        """Marks the user message ``message_id`` as learned from, in the transaction that stores what was learned;
        False if it was already (an earlier run of the same extraction stored it: nothing is stored twice)."""

        async def claim(s: AsyncSession) -> bool:
            marked = await s.execute(update(ThreadMessage).where(
                ThreadMessage.id == message_id, ThreadMessage.memory_extracted_at.is_(None),
            ).values(memory_extracted_at=self.clock.time()))
            return bool(marked.rowcount)  # type: ignore[attr-defined]

        return claim

    async def summaries_of(self, thread_id: str) -> list[ThreadSummary]:
        async with self.db.session() as s:
            return list((await s.execute(select(ThreadSummary).where(ThreadSummary.thread_id == thread_id)
                                         .order_by(ThreadSummary.through_seq, ThreadSummary.created_at))
                         ).scalars().all())

    async def latest_summary(self, thread_id: str, *, before: int | None = None) -> ThreadSummary | None:
        """The thread's newest rolling summary (``before``: the newest that folds no message from that seq on)."""
        query = select(ThreadSummary).where(ThreadSummary.thread_id == thread_id)
        if before is not None:
            query = query.where(ThreadSummary.through_seq < before)
        async with self.db.session() as s:
            return (await s.execute(query.order_by(ThreadSummary.through_seq.desc(),
                                                   ThreadSummary.created_at.desc()).limit(1))).scalar_one_or_none()

    async def add_summary(self, summary: ThreadSummary, *, last_id: str) -> bool:
        """Store ``summary`` if it folds more than the thread's newest one and the message it folds last
        (``last_id``) is still the thread's (not replaced by an edit since it was read); False, storing nothing,
        otherwise. The writers of a thread's summaries (its turns, its summary jobs, an edit) take its row
        first, so each sees what the one before wrote: ``through_seq`` only grows."""
        async with self.db.session() as s:
            held = await s.execute(update(Thread).where(Thread.id == summary.thread_id)
                                   .values(busy_until=Thread.busy_until))
            if not held.rowcount:  # type: ignore[attr-defined]
                return False  # deleted
            newest = (await s.execute(select(func.max(ThreadSummary.through_seq))
                                      .where(ThreadSummary.thread_id == summary.thread_id))).scalar_one_or_none()
            if newest is not None and newest >= summary.through_seq:
                return False
            last = await s.get(ThreadMessage, last_id)
            if last is None or last.thread_id != summary.thread_id or last.seq != summary.through_seq:
                return False
            s.add(summary)
        return True

    # -- the turn lease: one turn at a time per thread, across every process sharing the database --

    async def claim(self, thread_id: str, seconds: float) -> bool:
        """Hold the thread for ``seconds`` unless another turn holds it (False then)."""
        now = self.clock.time()
        async with self.db.session() as s:
            taken = await s.execute(
                update(Thread).where(Thread.id == thread_id)
                .where(or_(Thread.busy_until.is_(None), Thread.busy_until <= now))
                .values(busy_until=now + seconds)
            )
        return bool(taken.rowcount)  # type: ignore[attr-defined]

    async def renew(self, thread_id: str, seconds: float) -> None:
        async with self.db.session() as s:
            await s.execute(update(Thread).where(Thread.id == thread_id)
                            .values(busy_until=self.clock.time() + seconds))

    async def release(self, thread_id: str) -> None:
        async with self.db.session() as s:
            await s.execute(update(Thread).where(Thread.id == thread_id).values(busy_until=None))

    async def append(self, thread_id: str, messages: Sequence[NewMessage], *, replace_from: int | None = None,
                     guard: Callable[[AsyncSession], Awaitable[bool]] | None = None) -> list[ThreadMessage]:
        """Add messages after the last one, together (409 if another turn wrote in between); with
        ``replace_from``, the messages from that seq on (and summaries reaching them) are deleted first.
        ``guard``: checked in the same transaction; when it says no (the turn is another process's now),
        nothing is written and :class:`~.turn_log.TurnTakenOver` is raised."""
        now = self.clock.time()
        try:
            async with self.db.session() as s:
                thread = await s.get(Thread, thread_id)
                if thread is None:
                    raise NotFoundError(f"There is no thread '{thread_id}'.", param="thread_id")
                if guard is not None and not await guard(s):
                    raise TurnTakenOver(thread_id)
                if replace_from is not None:
                    # (after the guard: a turn's row, then its thread's, as a take-up takes them)
                    await s.execute(select(Thread.id).where(Thread.id == thread_id).with_for_update())
                    await s.execute(delete(ThreadSummary).where(ThreadSummary.thread_id == thread_id,
                                                                ThreadSummary.through_seq >= replace_from))
                    await s.execute(delete(ThreadMessage).where(ThreadMessage.thread_id == thread_id,
                                                                ThreadMessage.seq >= replace_from))
                last = await self._last_seq(s, thread_id)
                rows = [
                    ThreadMessage(
                        id=new_id("msg"), thread_id=thread_id, seq=last + i, role=m.role, content=m.content,
                        model=m.model, deployment=m.deployment, prompt_tokens=m.prompt_tokens,
                        completion_tokens=m.completion_tokens, cost_usd=m.cost_usd, finish_reason=m.finish_reason,
                        context=m.context, created_at=now,
                    )
                    for i, m in enumerate(messages, 1)
                ]
                s.add_all(rows)
                thread.updated_at = now
                if not thread.title:
                    first_user = next((m.content for m in messages if m.role == "user"), "")
                    thread.title = _auto_title(first_user)
                await s.flush()
        except IntegrityError:
            raise ConflictError("Another message was added to this thread at the same time; send it again.",
                                code="thread_busy") from None
        return rows

    async def answered_by_run(self, run_id: str, answer: str, finish_reason: str,
                              usage: tuple[float, int, int] | None) -> int:
        """The assistant messages that a paused agent run left waiting (``finish_reason`` ``awaiting_approval``,
        ``context.run_id``), now answered by it (``usage``: the run's cost and tokens, when known): how many
        were updated."""
        async with self.db.session() as s:
            waiting = (await s.execute(select(ThreadMessage).where(
                ThreadMessage.finish_reason == "awaiting_approval", ThreadMessage.role == "assistant"))).scalars().all()
            found = [m for m in waiting if (m.context or {}).get("run_id") == run_id]
            for m in found:
                m.content, m.finish_reason = answer, finish_reason
                if usage is not None:  # (cost, prompt tokens, completion tokens) of the whole run
                    m.cost_usd, m.prompt_tokens, m.completion_tokens = usage
        return len(found)

    @staticmethod
    async def _last_seq(s: AsyncSession, thread_id: str) -> int:
        value = (await s.execute(select(func.max(ThreadMessage.seq)).where(ThreadMessage.thread_id == thread_id))
                 ).scalar_one_or_none()
        return int(value or 0)
