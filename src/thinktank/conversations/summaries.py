"""Rolling summaries of threads, written ahead of need by a job, or by the turn that needs one.

A turn whose history no longer fits folds its oldest messages into the rolling summary before it answers
(:func:`.context.fold_count`): a model call the answer waits for. To spare turns that wait, once a turn is
stored the history it leaves is measured against the room the next turn is expected to have (the room this
turn had, for a message of the thread's average size: :class:`Outlook`); past ``conversations.summary_ahead``
of it, a ``thread.summarise`` job (a payload of ids) folds the same older part the next turn would fold, with
the same prompt and model, between turns. The next turn then finds its summary written and folds nothing; if
the job is not done yet (or the next message is much longer), the turn folds inline as before: it never waits
for the job.

The job acts as the thread's owner as they are when it runs (a revoked key or account: nothing is asked or
written), is admitted and recorded like a request of theirs (rate limits, budgets, one usage row under the
summary model), and is safe to run again and beside turns: a summary is stored only if it folds more than the
newest one at that moment and its last folded message was not replaced since (:meth:`ThreadService.add_summary`),
so ``through_seq`` only grows, and a run after a crash finds nothing left to fold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..accounts.governance import Gate
from ..accounts.principal import Principal
from ..catalog import Catalog
from ..clock import Clock
from ..config import ConversationsConfig
from ..errors import NotFoundError, ThinktankError
from ..gateway.context import CallContext
from ..gateway.tokens import estimate_text_tokens
from ..jobs import JobQueue, RetryPolicy
from ..knowledge.ingestions import PrincipalLookup
from ..store.tables import ThreadMessage, ThreadSummary, new_id
from ..types import ChatRequest, Usage, message_text
from . import context as cx
from .threads import ThreadService

__all__ = ["SUMMARY_JOB", "Outlook", "Summaries", "helper_model"]

log = logging.getLogger("thinktank.conversations")

SUMMARY_JOB = "thread.summarise"
"""Payload: ``user_id``, ``key_id`` (the thread's owner it acts as, looked up when it runs), ``thread_id``,
``model`` (the turn's model: the summary model is chosen from it when the job runs, as the turn chooses it) and
``room`` (:attr:`Outlook.room`)."""


def helper_model(catalog: Catalog, configured: str | None, principal: Principal, fallback: str) -> str:
    """A configured helper model (summaries, extraction) if the caller may use it, else the turn's."""
    if configured and catalog.allows(principal, configured):
        return configured
    # An agent would run tools (and may wait for approvals) to write a summary: its brain writes it.
    seen: set[str] = set()
    while fallback.startswith("agent/") and fallback not in seen:
        seen.add(fallback)
        brain = catalog.uses(fallback)[:1]
        if not brain:
            break
        fallback = brain[0]
    return fallback


@dataclass(frozen=True, slots=True)
class Outlook:
    """What a turn's prompt says about the next turn of its thread."""

    room: int
    """Tokens the next turn is expected to have for the history not yet summarised: the room this turn had,
    with its own message replaced by one of the thread's average size."""
    kept: int
    """Tokens of the history this turn sent word for word (after any fold)."""

    @classmethod
    def of(cls, room: int, content: str, kept: Sequence[ThreadMessage]) -> Outlook:
        """The outlook of a turn that sent ``content`` after the messages ``kept``, with ``room`` tokens for them."""
        users = [cx.message_tokens(m.content) for m in kept if m.role == "user"]
        own = cx.message_tokens(content)
        average = (sum(users) + own) // (len(users) + 1)
        return cls(room=max(room + own - average, 0), kept=sum(cx.message_tokens(m.content) for m in kept))

    def due(self, stored: Sequence[ThreadMessage], share: float) -> bool:
        """Whether the history after the turn's ``stored`` messages passes ``share`` of the next turn's room."""
        if share <= 0:
            return False
        after = self.kept + sum(cx.message_tokens(m.content) for m in stored)
        return after > share * self.room


class Summaries:
    """Writes rolling summaries, for a turn (:meth:`write` under its admission) or ahead of it (the job)."""

    def __init__(self, threads: ThreadService, catalog: Catalog, gate: Gate, clock: Clock, config: ConversationsConfig,
                 queue: JobQueue, principals: PrincipalLookup) -> None:
        self.threads = threads
        self.catalog = catalog
        self.gate = gate
        self.clock = clock
        self.config = config
        self.queue = queue
        self.principals = principals
        queue.register(SUMMARY_JOB, self._job, retry=RetryPolicy(attempts=3, after_errors=False))

    def model_for(self, principal: Principal, model: str) -> str:
        """The model that writes the summaries of a thread answered by ``model``."""
        return helper_model(self.catalog, self.config.summary_model, principal, model)

    async def write(self, thread_id: str, prior: ThreadSummary | None, folded: Sequence[ThreadMessage],
                    summary_model: str, ctx: CallContext) -> tuple[ThreadSummary, bool]:
        """Fold ``folded`` (the messages after ``prior``) into a new summary with ``summary_model``, paid under
        ``ctx``; the summary, and whether it was stored (not if a newer one was stored meanwhile)."""
        conv = self.config
        window = cx.window_of(self.catalog, summary_model, conv.context_window)
        text = prior.content if prior is not None else None
        prompt_tokens = completion_tokens = 0
        cost = 0.0
        for transcript, _last in cx.summary_batches(folded, window, conv.summary_tokens):
            prompt = cx.summary_prompt(text, transcript, conv.summary_tokens)
            request = ChatRequest(model=summary_model, messages=prompt, max_tokens=conv.summary_tokens, temperature=0)
            response = await self.catalog.complete(request, ctx)
            written = message_text(response.choices[0].message).strip() if response.choices else ""
            if not written:
                raise ThinktankError(f"The summary model '{summary_model}' answered nothing; try again.")
            text = written
            usage = response.usage or Usage()
            prompt_tokens += usage.prompt_tokens
            completion_tokens += usage.completion_tokens
            cost += float(usage.cost or 0.0)
        assert text is not None
        summary = ThreadSummary(
            id=new_id("sum"), thread_id=thread_id, through_seq=folded[-1].seq, content=text, model=summary_model,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost,
            created_at=self.clock.time(),
        )
        return summary, await self.threads.add_summary(summary, last_id=folded[-1].id)

    # -- ahead of need ---------------------------------------------------------------------------

    async def later(self, principal: Principal, thread_id: str, model: str, outlook: Outlook | None,
                    stored: Sequence[ThreadMessage]) -> None:
        """After a turn of ``thread_id`` (answered by ``model``) stored ``stored``: queue its summary if the next
        turn is expected to need one (at most one job waits per thread). Never raises."""
        if outlook is None or not outlook.due(stored, self.config.summary_ahead):
            return
        payload = {"user_id": principal.user_id, "key_id": principal.key_id, "thread_id": thread_id,
                   "model": model, "room": outlook.room}
        key = f"{SUMMARY_JOB}:{thread_id}"
        try:
            await self.queue.defer(SUMMARY_JOB, payload, lock=key, queueing_lock=key)
        except Exception:  # the next turn folds inline
            log.exception("could not queue the summary of thread %s", thread_id)

    async def _job(self, payload: dict[str, Any]) -> None:
        key_id = payload.get("key_id")
        principal = await self.principals(str(payload["user_id"]), key_id if isinstance(key_id, str) else None)
        if principal is None:
            return  # revoked meanwhile
        try:
            thread = await self.threads.get(principal, str(payload["thread_id"]))  # still theirs (not deleted)
        except NotFoundError:
            return
        await self.ahead(principal, thread.id, str(payload["model"]), int(payload["room"]))

    async def ahead(self, principal: Principal, thread_id: str, model: str, room: int) -> ThreadSummary | None:
        """Fold what the next turn of the thread would fold, given ``room`` tokens for its history, unless that
        is nothing now; the summary stored (None if none was). Refusals (limits, budgets) are logged."""
        share = self.config.summary_ahead
        if share <= 0 or room <= 0:
            return None
        prior = await self.threads.latest_summary(thread_id)
        history = await self.threads.messages_of(thread_id, after=prior.through_seq if prior is not None else 0)
        fold = cx.fold_count(history, room, above=int(room * share))
        if not fold:
            return None  # written already (a run before a crash, or a turn), or not needed yet
        summary_model = self.model_for(principal, model)
        if not self.catalog.allows(principal, summary_model):
            return None  # the thread's model is no longer theirs: its next turn says so
        folded = history[:fold]
        estimate = (sum(cx.message_tokens(m.content) for m in folded) + self.config.summary_tokens
                    + (estimate_text_tokens(prior.content) if prior is not None else 0))
        try:
            async with self.gate.admitted(principal, None, summary_model, estimate) as admission:
                summary, stored = await self.write(thread_id, prior, folded, summary_model, admission.ctx)
        except ThinktankError as exc:  # the next turn folds inline (and meets the same refusal, if it lasts)
            log.warning("summary of thread %s not written ahead (%s: %s)", thread_id, type(exc).__name__, exc.message)
            return None
        return summary if stored else None
