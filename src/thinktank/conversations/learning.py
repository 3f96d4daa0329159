"""Learning about users from their messages, as jobs: after a turn is stored, ``memory.extract`` is queued with a
payload of ids; the job asks the extractor model what the message says about its user and stores it. Run again
after a crash, it stores nothing twice: the message is marked learned-from in the transaction that stores what
was learned, and a marked message is skipped."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..accounts.governance import Gate
from ..accounts.principal import Principal
from ..catalog import Catalog
from ..errors import NotFoundError, ThinktankError
from ..jobs import JobQueue, RetryPolicy
from ..knowledge.ingestions import PrincipalLookup
from ..store.tables import ThreadMessage
from ..types import ChatRequest, message_text
from . import context as cx
from .memory import KNOWN_IN_PROMPT, MemoryService, extraction_messages, known_labels, parse_extraction
from .threads import ThreadService

__all__ = ["EXTRACT_JOB", "Learner"]

log = logging.getLogger("thinktank.conversations")

EXTRACT_JOB = "memory.extract"
"""Payload: ``user_id``, ``key_id`` (the principal it acts as, looked up when it runs), ``thread_id``,
``message_id``, ``model`` (the extractor, chosen when it was queued)."""
_EXTRACTION_TOKENS = 400


class Learner:
    def __init__(self, threads: ThreadService, memory: MemoryService, catalog: Catalog, gate: Gate, queue: JobQueue,
                 principals: PrincipalLookup) -> None:
        self.threads = threads
        self.memory = memory
        self.catalog = catalog
        self.gate = gate
        self.queue = queue
        self.principals = principals
        queue.register(EXTRACT_JOB, self._job, retry=RetryPolicy(attempts=3, after_errors=False))

    async def later(self, principal: Principal, thread_id: str, user: ThreadMessage, extractor: str) -> None:
        """Queue learning from ``user`` (a user's message) with the model ``extractor``. Never raises."""
        payload = {"user_id": principal.user_id, "key_id": principal.key_id, "thread_id": thread_id,
                   "message_id": user.id, "model": extractor}
        try:
            await self.queue.defer(EXTRACT_JOB, payload, queueing_lock=f"{EXTRACT_JOB}:{user.id}")
        except Exception:  # the turn stands; this message is not learned from
            log.exception("memory: could not queue the extraction for message %s", user.id)

    async def _job(self, payload: dict[str, Any]) -> None:
        key_id = payload.get("key_id")
        principal = await self.principals(str(payload["user_id"]), key_id if isinstance(key_id, str) else None)
        if principal is None or not await self.memory.enabled(principal.user_id):
            return  # revoked meanwhile, or memory switched off
        thread_id = str(payload["thread_id"])
        try:
            await self.threads.get(principal, thread_id)  # still theirs (not deleted)
        except NotFoundError:
            return
        user = await self.threads.message_of(thread_id, str(payload["message_id"]))
        if user is None or user.role != "user" or user.memory_extracted_at is not None:
            return  # replaced by an edit, or learned from already
        await self.extract(principal, None, thread_id, str(payload["model"]), user)

    async def extract(
        self, principal: Principal, ip: str | None, thread_id: str, extractor: str, user: ThreadMessage,
    ) -> None:
        """Learn from a user's message. Never raises: a failure is logged and forgotten."""
        try:
            before = await self.threads.messages_of(thread_id, after=max(user.seq - 2, 0), limit=1)
            previous = before[0].content if before and before[0].role == "assistant" and before[0].seq < user.seq \
                else None
            known = await self.memory.relevant(principal.user_id, user.content, KNOWN_IN_PROMPT)
            messages = extraction_messages(user.content, previous, known)
            estimate = sum(cx.message_tokens(str(m.content)) for m in messages) + _EXTRACTION_TOKENS
            async with self.gate.admitted(principal, ip, extractor, estimate) as admission:
                request = ChatRequest(model=extractor, messages=messages, max_tokens=_EXTRACTION_TOKENS,
                                      temperature=0)
                response = await self.catalog.complete(request, admission.ctx)
            reply = message_text(response.choices[0].message) if response.choices else ""
            found = parse_extraction(reply)
            if found is None:
                log.warning("memory: '%s' gave an unusable extraction (%d characters) for message %s; ignored",
                            extractor, len(reply), user.id)
                return
            await self.memory.remember(principal.user_id, found, source_message_id=user.id, source_thread_id=thread_id,
                                       labels=known_labels(known), claim=self.threads.extraction_claim(user.id))
        except ThinktankError as exc:
            log.warning("memory: extraction for message %s failed (%s: %s)", user.id, type(exc).__name__, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("memory: extraction for message %s failed", user.id)
