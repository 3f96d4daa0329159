"""Turns: a user message in, a reply out, both stored, and what the reply taught about the user learned.

A turn is admitted by the gate (rate limits, budgets; one admission pays for the turn's summary if it must
write one, search embeddings and reply), then runs as a task of its own, so it ends and is stored even if the
client that sent it goes away. Its events (``summary``, ``delta``, then ``message`` or ``error``) go to whoever
follows it. Once the reply is stored, the memory extraction is queued as a job (``memory.extract``, a payload of
ids), and so is the thread's next rolling summary when the next turn is expected to need one
(``thread.summarise``, :mod:`.summaries`); each runs under an admission of its own, never fails the turn, and
stores nothing twice when retried.
Shutdown (``close``) cancels the turns still running: a cancelled turn stores nothing. A turn whose process
dies (killed, or silent for ``stale_after`` seconds) is taken up by another process (:mod:`.turn_resume`).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..accounts.governance import Admission, Gate
from ..accounts.principal import Principal
from ..catalog import Catalog
from ..clock import Clock
from ..config import GatewayConfig
from ..deliberation.runs import PAUSED, LiveRun
from ..errors import ConflictError, InvalidRequestError, NotFoundError, ThinktankError
from ..events.bus import LocalBus
from ..events.feed import FeedPublisher
from ..gateway.context import CallContext
from ..gateway.tokens import estimate_text_tokens
from ..jobs import JobQueue, LocalQueue
from ..knowledge.embeddings import Embedder
from ..knowledge.grounding import Grounder, Grounding
from ..knowledge.ingestions import PrincipalLookup
from ..knowledge.service import KnowledgeService
from ..store.db import Database
from ..store.tables import MemoryFact, Thread, ThreadMessage, new_id
from ..types import ChatRequest, Message, Usage, message_text
from . import context as cx
from .learning import EXTRACT_JOB, Learner
from .memory import MemoryService, memory_block
from .personas import PersonaService
from .summaries import SUMMARY_JOB, Outlook, Summaries, helper_model
from .threads import NewMessage, ThreadService, message_public, summary_public
from .turn_log import StoredTurn, TurnLog, TurnSpec, TurnTakenOver
from .turn_resume import RunReader, TurnResumption

__all__ = ["EXTRACT_JOB", "MAX_CONTENT", "TURN_KEPT", "TURN_LEASE", "Conversations", "Turn", "TurnEvent",
           "TurnOptions"]

TURN_LEASE = 300.0
"""Seconds a turn holds its thread (``threads.busy_until``) without showing progress: renewed at most
every third of it as the turn moves on (its prompt built, each streamed piece of the reply), released
when it ends. A process that dies mid-turn holds the thread for at most this long."""

TURN_KEPT = 600.0
"""Seconds a turn's events stay available to a client that reconnects after the turn has ended."""
_TURNS_KEPT = 200
"""At most this many threads' last turns are kept for reconnecting clients (the oldest go first)."""

log = logging.getLogger("thinktank.conversations")

MAX_CONTENT = 200_000
"""The longest user message, in characters."""


@dataclass(frozen=True, slots=True)
class TurnOptions:
    model: str | None = None
    """This turn's model (default: the thread's)."""
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    replaces: str | None = None
    """A user message of the thread: it and every message after it are replaced by this turn's (edit a
    message and answer again; regenerate an answer with the same content)."""


STOPPED = "stopped"
"""The finish reason of a reply its user stopped (``Conversations.stop``): the text so far is kept."""


@dataclass(frozen=True, slots=True)
class TurnEvent:
    type: str
    """``summary``, ``progress`` (a stage of a composite model's answer, ``text``), ``delta``, ``message``
    (the stored turn) or ``error`` (the OpenAI error shape)."""
    data: dict[str, Any]
    id: int = 0
    """Its number in the turn, from 1: a client that reconnects with ``Last-Event-ID`` resumes after it."""

    def json(self) -> bytes:
        """The event as one line of JSON, as the SSE stream sends it (its id is ``id``, when set)."""
        return orjson.dumps({"type": self.type, **self.data})


@dataclass
class Turn:
    """A turn's events, kept whole while it runs (and a while after, see ``Conversations.follow``), so any
    number of followers each get every event once, in order, from wherever they start."""

    thread_id: str
    log: list[TurnEvent] = field(default_factory=list)
    closed: bool = False
    result: dict[str, Any] | None = None
    error: ThinktankError | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None
    """When its last event went out (monotonic)."""
    replace_from: int | None = None
    """The seq of the first message this turn replaces (``TurnOptions.replaces``)."""
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by ``Conversations.stop``: the reply ends where it is, and what was written so far is stored."""
    id: str = field(default_factory=lambda: new_id("turn"))
    publish: Callable[[TurnEvent], None] | None = None
    """Told each event as it is emitted (stored and published for other processes: ``TurnLog``)."""
    next_id: int = 1
    """The number of the next event (a turn taken up elsewhere jumps: ``turn_resume``)."""
    taken_over: bool = False
    """Another process took it up (this one had stopped showing it was alive): it stops here."""
    outlook: Outlook | None = None
    """What its prompt says about the next turn (whether to write the summary ahead of it)."""
    _moved: asyncio.Event = field(default_factory=asyncio.Event)
    _answering: tuple[CallContext, str | None] | None = None

    def answering_under(self, ctx: CallContext) -> None:
        """The answer is asked for under ``ctx`` now: the first run started under it answers this turn."""
        self._answering = (ctx, ctx.run_id)

    @property
    def run_id(self) -> str | None:
        """The run answering it, when its model is a run (stored, so that another process can wait for it)."""
        if self._answering is None:
            return None
        ctx, before = self._answering
        return ctx.run_id if ctx.run_id != before else None

    def emit(self, type_: str, **data: Any) -> None:
        event = TurnEvent(type_, data, self.next_id)
        self.next_id += 1
        self.log.append(event)
        self._moved.set()
        if self.publish is not None:
            self.publish(event)

    def close(self) -> None:
        self.closed = True
        self._moved.set()

    async def events(self, after: int = 0) -> AsyncIterator[TurnEvent]:
        """Every event after number ``after``, in order, until the turn ends (after a number the turn skipped,
        from the next it has: the restart of a turn taken up here)."""
        at = bisect.bisect_right(self.log, max(after, 0), key=lambda e: e.id)
        while True:
            while at < len(self.log):
                at += 1
                yield self.log[at - 1]
            if self.closed:
                return
            self._moved.clear()
            if at < len(self.log) or self.closed:
                continue
            await self._moved.wait()

    def abandon(self) -> None:
        """End a turn that never ran (cancelled before it started)."""
        if not self.done.is_set():
            self.error = ConflictError("The reply was cancelled: the server is stopping.", code="turn_cancelled")
            self.emit("error", **self.error.to_body())
            self.close()
            self.done.set()

    async def outcome(self) -> dict[str, Any]:
        """The stored turn, or the turn's error raised."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass
class _Reply:
    """What the model answered a turn: its text, usage, finish reason, the citations it returned itself and
    the run that answered (a run model)."""

    text: str
    usage: Usage
    finish: str | None
    citations: list[dict[str, Any]] | None
    run_id: str | None


@dataclass
class _Prompt:
    messages: list[Message]
    context: dict[str, Any]
    grounding: Grounding | None = None


class Conversations:
    """Threads, personas and memory, and the turns that use them all."""

    def __init__(
        self, db: Database, clock: Clock, config: GatewayConfig, catalog: Catalog, gate: Gate,
        knowledge: KnowledgeService, embedder: Embedder | None, *, principals: PrincipalLookup,
        queue: JobQueue | None = None, publisher: FeedPublisher | None = None, stale_after: float = 5.0,
        runs: RunReader | None = None,
    ) -> None:
        """``principals``: who a queued extraction (or a turn taken up again) acts as (its user, and key, as they
        are when it runs); ``queue``: where extractions and take-ups run (default: a local queue of this
        service's own); ``stale_after``: seconds a turn's process may show no sign of life before another
        takes the turn up; ``runs``: where a turn answered by a run waits for that run when taken up."""
        self.config = config
        self.catalog = catalog
        self.gate = gate
        self.clock = clock
        self.knowledge = knowledge
        self.threads = ThreadService(db, clock, catalog, knowledge)
        self.personas = PersonaService(db, clock, knowledge)
        self.memory = MemoryService(db, clock, config.memory, embedder)
        self._busy: set[str] = set()
        self._renewed: dict[str, float] = {}
        """When each running turn last renewed its thread's lease (monotonic)."""
        self._turns: dict[str, Turn] = {}
        """Each thread's last turn in this process, while it runs and ``TURN_KEPT`` seconds after."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        """The task of each turn running here, by turn id."""
        self.turn_log = TurnLog(db, clock, publisher or FeedPublisher(LocalBus()), kept=TURN_KEPT,
                                stale_after=stale_after)
        """Turns' events stored and published, for clients of other processes (and after a turn)."""
        self.turn_log.on_lost = self._lost
        self._own_queue = queue is None
        self.queue: JobQueue = queue or LocalQueue()
        self.learner = Learner(self.threads, self.memory, catalog, gate, self.queue, principals)
        self.summaries = Summaries(self.threads, catalog, gate, clock, config.conversations, self.queue, principals)
        """Rolling summaries, written ahead of need by jobs of ``queue`` (or by the turn that needs one)."""
        self.resumption = TurnResumption(self, principals, runs=runs)
        """Takes up the turns whose process died (jobs of ``queue``)."""
        self.resumption.register(self.queue)

    # -- background work -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for every turn, extraction and summary job under way (and those they start) to end."""
        while self._tasks or await self.queue.active(EXTRACT_JOB) or await self.queue.active(SUMMARY_JOB):
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            await self.queue.settle(EXTRACT_JOB)
            await self.queue.settle(SUMMARY_JOB)

    def start_background(self) -> None:
        """A server: show that the turns running here are alive, and wait for a turn whose process died to be
        taken up (by the queue's periodic sweep) when following it."""
        self.turn_log.resumable = True
        self.turn_log.start(min(1.0, self.turn_log.stale_after / 4))

    def _lost(self, turn: Turn) -> None:
        """Another process took ``turn`` up: it stops here, storing nothing."""
        turn.taken_over = True
        task = self._running.get(turn.id)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def close(self) -> None:
        """Shutdown: cancel turns still running and wait for them to settle (and stop a queue of this service's
        own, its extractions with it; a shared queue is stopped by its owner)."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.turn_log.close()
        if self._own_queue:
            await self.queue.stop()

    # -- a turn ----------------------------------------------------------------------------------

    async def send(
        self, principal: Principal, ip: str | None, thread_id: str, content: str, options: TurnOptions,
    ) -> Turn:
        """Check and admit a turn, then start it. Errors here (404, 400, 409, 429) come before anything is
        spent or written."""
        thread = await self.threads.get(principal, thread_id)
        if not content.strip():
            raise InvalidRequestError("content: the message is empty", param="content")
        if len(content) > MAX_CONTENT:
            raise InvalidRequestError(f"content: at most {MAX_CONTENT} characters", param="content")
        model = self.threads.check_model(principal, options.model or thread.model)
        replace_from = await self._replaced_seq(thread.id, options.replaces) if options.replaces else None
        # One turn at a time: this process's own turns, then every process's, through the lease.
        if thread.id in self._busy or not await self.threads.claim(thread.id, TURN_LEASE):
            raise ConflictError("A reply is still being written in this thread; wait for it to end.",
                                code="thread_busy")
        self._hold(thread.id)
        reply = options.max_tokens or self.config.conversations.reply_tokens
        try:
            admission = await self.gate.admit(principal, ip, model, estimate_text_tokens(content) + reply)
        except BaseException:
            await self._release(thread.id)
            raise
        turn = Turn(thread.id, replace_from=replace_from)
        spec = TurnSpec(principal.user_id, principal.key_id, content, model, options.stream, options.max_tokens,
                        options.temperature, replace_from)
        admission.stream = options.stream
        try:
            self._launch(turn, self._run(
                turn, principal, thread, model, admission,
                lambda: self._turn(turn, principal, thread, content, model, options, admission), spec))
        except BaseException:
            await self._release(thread.id)
            await admission.finish(500)
            raise
        return turn

    def _hold(self, thread_id: str) -> None:
        """This process runs a turn of the thread (whose lease it holds)."""
        self._busy.add(thread_id)
        self._renewed[thread_id] = self.clock.monotonic()

    def _launch(self, turn: Turn, run: Coroutine[Any, Any, None]) -> None:
        """Run a turn (``_run``) as a task of its own; the thread is held here already."""
        self._keep(turn)
        task = self._spawn(run)
        self._running[turn.id] = task

        def settled(_task: asyncio.Task[None]) -> None:
            # A task cancelled before its first step never runs its own clean-up (a shutdown right away);
            # its lease then lapses by itself. One that ran has cleaned up, and a next turn may be under way.
            self._running.pop(turn.id, None)
            if not turn.done.is_set():
                self._busy.discard(turn.thread_id)
                self._renewed.pop(turn.thread_id, None)
                turn.ended_at = self.clock.monotonic()
            turn.abandon()

        task.add_done_callback(settled)

    async def paused_run_cancelled(self, run_id: str) -> None:
        """An agent run that paused a thread's turn was cancelled while it waited: its message says so."""
        await self.threads.answered_by_run(run_id, "[The agent run was cancelled while it waited for an approval.]",
                                           "cancelled", None)

    async def agent_run_ended(self, run: LiveRun) -> None:
        """An agent run that paused a thread's turn ended: its message shows the answer (or why there is none)."""
        if run.status == PAUSED:
            return
        from ..deliberation.models import ANSWERED, FINISH_REASON

        answer = (run.result or {}).get("answer") or ""
        if run.status not in ANSWERED:
            answer = (answer + "\n\n" if answer else "") + f"[The agent run {run.status.replace('_', ' ')}: " \
                f"{run.error or 'no answer'}]"
        finish = FINISH_REASON.get(run.status, run.status)
        await self.threads.answered_by_run(run.id, answer, finish, (run.cost, run.prompt_tokens, run.completion_tokens))

    async def _replaced_seq(self, thread_id: str, message_id: str) -> int:
        """The seq of the user message ``message_id`` of the thread, which a turn replaces with what follows
        it (400 if it is not one, or if the rolling summary already holds it)."""
        found = await self.threads.message_of(thread_id, message_id)
        if found is None or found.role != "user":
            raise InvalidRequestError(f"replaces: '{message_id}' is not a user message of this thread",
                                      param="replaces")
        summary = await self.threads.latest_summary(thread_id)
        if summary is not None and summary.through_seq >= found.seq:
            raise InvalidRequestError("replaces: that message is already folded into the thread's rolling summary",
                                      param="replaces")
        return found.seq

    async def stop(self, principal: Principal, thread_id: str) -> bool:
        """Stop the thread's turn under way here: its reply ends where it is and is stored as far as it got
        (finish reason ``stopped``). False if no turn of the thread is running in this process."""
        thread = await self.threads.get(principal, thread_id)  # 404 for another user's thread
        turn = self._turns.get(thread.id)
        if turn is None or turn.done.is_set():
            return False
        turn.stop_requested.set()
        return True

    async def _run(
        self, turn: Turn, principal: Principal, thread: Thread, model: str, admission: Admission | None,
        work: Callable[[], Awaitable[list[ThreadMessage]]], spec: TurnSpec | None,
    ) -> None:
        """Run a turn to its end: ``work`` answers and stores it (paid under ``admission``, if any). ``spec``:
        record it first (a turn taken up here from a process that died is recorded already)."""
        stored: list[ThreadMessage] = []
        if spec is not None:
            try:
                await self.turn_log.started(turn, spec)
            except Exception:  # followed here only, then
                log.exception("could not record turn %s of thread %s", turn.id, thread.id)
        try:
            async with self.gate.recording(admission):
                try:
                    stored = await work()
                finally:
                    if turn.taken_over:  # the thread's lease is the other process's now
                        self._busy.discard(thread.id)
                        self._renewed.pop(thread.id, None)
                    else:
                        await self._release(thread.id)
        except TurnTakenOver:
            turn.taken_over = True
        except ThinktankError as exc:
            turn.error = exc
        except asyncio.CancelledError:
            turn.error = ConflictError("The reply was cancelled: the server is stopping.", code="turn_cancelled")
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception:
            log.exception("turn in thread %s failed", thread.id)
            turn.error = ThinktankError("Internal error; see the server log.")
        if turn.taken_over:
            self._handed_over(turn)
            return
        if turn.error is not None:
            turn.emit("error", **turn.error.to_body())
        else:
            turn.emit("message", **(turn.result or {}))
        try:
            await self.turn_log.ended(turn)  # stored before its outcome is known
        except TurnTakenOver:
            self._handed_over(turn)
            return
        except Exception:
            log.exception("could not store the events of turn %s", turn.id)
        turn.ended_at = self.clock.monotonic()
        turn.close()
        turn.done.set()
        if stored and turn.error is None:
            await self.summaries.later(principal, thread.id, model, turn.outlook, stored)
            if await self.memory.enabled(principal.user_id):
                await self._learn_later(principal, thread, model, stored)

    def _handed_over(self, turn: Turn) -> None:
        """End ``turn`` here without a last event: another process answers it (its followers here are sent to
        that process's events, ``follow``)."""
        turn.error = ConflictError("The reply is being written by another server (this one stopped answering for "
                                   "a while); follow it at GET /api/v1/threads/{id}/turn/events.",
                                   code="turn_taken_over")
        turn.result = None
        turn.ended_at = self.clock.monotonic()
        turn.close()
        turn.done.set()

    def _keep(self, turn: Turn) -> None:
        """Keep ``turn`` as its thread's last, for ``follow``; forget turns that ended long enough ago."""
        now = self.clock.monotonic()
        for thread_id, kept in list(self._turns.items()):
            if kept.ended_at is not None and now - kept.ended_at > TURN_KEPT:
                del self._turns[thread_id]
        self._turns.pop(turn.thread_id, None)
        self._turns[turn.thread_id] = turn
        while len(self._turns) > _TURNS_KEPT:
            del self._turns[next(iter(self._turns))]

    async def follow(self, principal: Principal, thread_id: str) -> Turn | StoredTurn:
        """The thread's turn under way, or the last one if it ended less than ``TURN_KEPT`` seconds ago: its
        events can be read again from any point (a client that lost its stream reconnects with
        ``Last-Event-ID``), from this process's memory if it runs (or ran) it, else as stored by the process
        that runs it (then live over the event bus). 404 if there is none."""
        thread = await self.threads.get(principal, thread_id)  # 404 for another user's thread
        turn = self._turns.get(thread.id)
        if turn is not None and turn.taken_over:
            turn = None  # another process answers it
        if turn is not None and not turn.closed:
            return turn  # under way here
        last = await self.turn_log.latest(thread.id)  # (another process may have run a later one)
        expired = turn is None or (turn.ended_at is not None and self.clock.monotonic() - turn.ended_at > TURN_KEPT)
        if turn is not None and not expired and (last is None or last[0] == turn.id):
            return turn
        if last is not None and (last[1] is None or self.clock.time() - last[1] <= TURN_KEPT):
            return self.turn_log.stored(thread.id, last[0])
        raise NotFoundError(
            f"No turn of thread '{thread_id}' is under way or ended in the last {int(TURN_KEPT)} seconds; "
            "its stored messages are at GET /api/v1/threads/{id}/messages.", param="thread_id")

    async def _release(self, thread_id: str) -> None:
        self._busy.discard(thread_id)
        self._renewed.pop(thread_id, None)
        try:
            await self.threads.release(thread_id)
        except Exception:  # the lease lapses by itself; the turn's outcome stands
            log.exception("could not release thread %s", thread_id)

    async def _progress(self, thread_id: str) -> None:
        """The turn moved on: renew its lease if a third of it has gone by."""
        now = self.clock.monotonic()
        if now - self._renewed.get(thread_id, now) >= TURN_LEASE / 3:
            self._renewed[thread_id] = now
            await self.threads.renew(thread_id, TURN_LEASE)

    async def _turn(
        self, turn: Turn, principal: Principal, thread: Thread, content: str, model: str, options: TurnOptions,
        admission: Admission,
    ) -> list[ThreadMessage]:
        ctx = admission.ctx
        prompt = await self._prompt(turn, principal, thread, content, model, options, admission)
        await self._progress(thread.id)
        request = ChatRequest(model=model, messages=prompt.messages, stream=options.stream,
                              max_tokens=options.max_tokens, temperature=options.temperature)
        mark = len(ctx.records)
        turn.answering_under(ctx)
        answer = await self._call(turn, request, admission, thread.knowledge_bases)
        text, usage, finish = answer.text, answer.usage, answer.finish
        answered = ctx.records[mark:]
        if finish == STOPPED and not usage.total_tokens:  # cut short: what the router accounted for it
            usage = Usage(prompt_tokens=sum(r.prompt_tokens for r in answered),
                          completion_tokens=sum(r.completion_tokens for r in answered),
                          cost=sum(r.cost for r in answered))
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        context = dict(prompt.context)
        if prompt.grounding is not None:
            context["retrieved"] = [c.to_dict() for c in prompt.grounding.citations]
            context["citations"] = [c.to_dict() for c in prompt.grounding.cited(text)]
        elif answer.citations is not None:
            context["citations"] = answer.citations  # the model grounds itself (kb/...)
        if answer.run_id is not None:
            context["run_id"] = answer.run_id  # the model is a run (ensemble/..., debate/...)
        reply = NewMessage(
            role="assistant", content=text, model=model, deployment=answered[-1].deployment if answered else None,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cost_usd=float(usage.cost or 0.0), finish_reason=finish, context=context,
        )
        rows = await self.threads.append(thread.id, [NewMessage(role="user", content=content), reply],
                                         replace_from=turn.replace_from, guard=self.turn_log.guard(turn))
        turn.result = {"user_message": message_public(rows[0]), "message": message_public(rows[1]),
                       "turn_cost_usd": round(sum(r.cost for r in ctx.records), 10)}
        return rows

    async def _call(self, turn: Turn, request: ChatRequest, admission: Admission,
                    knowledge_bases: list[str] | None = None) -> _Reply:
        """The model's reply; a stop request cancels the call (the upstream request with it) and keeps the
        text streamed so far."""
        reply = _Reply("", Usage(), None, None, None)
        parts: list[str] = []
        call = asyncio.ensure_future(self._answer(turn, request, admission, knowledge_bases, reply, parts))
        stop = asyncio.ensure_future(turn.stop_requested.wait())
        try:
            await asyncio.wait((call, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not call.done():
                call.cancel()
            stop.cancel()
            await asyncio.gather(call, stop, return_exceptions=True)
        if not call.cancelled() and call.exception() is None:
            return call.result()
        if turn.stop_requested.is_set():
            reply.text, reply.finish = "".join(parts), STOPPED
            return reply
        exc = call.exception() if not call.cancelled() else None
        if exc is not None:
            raise exc
        raise asyncio.CancelledError

    async def _answer(self, turn: Turn, request: ChatRequest, admission: Admission,
                      knowledge_bases: list[str] | None, reply: _Reply, parts: list[str]) -> _Reply:
        if request.model.startswith("kb/") and knowledge_bases:
            model = self.catalog.grounded(request.model, admission.principal, knowledge_bases)
        else:
            model = self.catalog.resolve(request.model, admission.principal)
        if not request.stream:
            response = await model.complete(request, admission.ctx)
            choice = response.choices[0] if response.choices else None
            return _Reply(message_text(choice.message) if choice is not None else "", response.usage or Usage(),
                          choice.finish_reason if choice is not None else None, response.citations, response.run_id)
        async for chunk in model.stream(request, admission.ctx):
            if chunk.note:
                turn.emit("progress", text=chunk.note)
            reply.run_id = chunk.run_id or reply.run_id
            if chunk.usage is not None:
                reply.usage = chunk.usage
            if chunk.citations is not None:
                reply.citations = chunk.citations
            for c in chunk.choices:
                if c.delta.content:
                    parts.append(c.delta.content)
                    turn.emit("delta", content=c.delta.content)
                    await self._progress(turn.thread_id)
                if c.finish_reason:
                    reply.finish = c.finish_reason
        reply.text = "".join(parts)
        return reply

    # -- the prompt ------------------------------------------------------------------------------

    async def _prompt(
        self, turn: Turn, principal: Principal, thread: Thread, content: str, model: str, options: TurnOptions,
        admission: Admission,
    ) -> _Prompt:
        conv = self.config.conversations
        budget = cx.Budget(cx.window_of(self.catalog, model, conv.context_window),
                           options.max_tokens or conv.reply_tokens)
        persona_text = None
        context: dict[str, Any] = {}
        if thread.persona_id is not None:
            persona = await self.personas.text(principal, await self.personas.get(principal, thread.persona_id))
            persona_text = cx.cut_to_tokens(persona.text, min(conv.persona_tokens, max(budget.prompt // 3, 64)))
            context["persona_id"] = persona.persona_id
            if persona.document_id:
                context["persona_document_id"] = persona.document_id
        memories: list[MemoryFact] = []
        if await self.memory.enabled(principal.user_id):
            memories = await self.memory.relevant(principal.user_id, content)
        memory_text = memory_block(memories) if memories else None
        context["memory_ids"] = [m.id for m in memories]
        grounding_room = 0
        if thread.knowledge_bases:
            grounding_room = min(self.config.knowledge.max_context_tokens, max(budget.prompt // 3, 100)) + 400
        fixed = (cx.FRAME_TOKENS + cx.message_tokens(content) + grounding_room
                 + cx.message_tokens("\n\n".join(p for p in (persona_text, memory_text) if p)))
        # (an edit: the newest summary that folds none of the messages it replaces)
        summary = await self.threads.latest_summary(thread.id, before=turn.replace_from)
        through = summary.through_seq if summary is not None else 0
        history = await self.threads.messages_of(thread.id, after=through)
        if turn.replace_from is not None:
            history = [m for m in history if m.seq < turn.replace_from]
        summary_room = max(conv.summary_tokens, estimate_text_tokens(summary.content) if summary else 0) + 60
        room = budget.prompt - fixed - summary_room
        cx.check_room(room, fixed + summary_room, model, budget)
        fold = cx.fold_count(history, room)
        if fold:  # not written ahead (or not in time): written now, the answer waits for it
            summary_model = self.summaries.model_for(principal, model)
            summary, _stored = await self.summaries.write(thread.id, summary, history[:fold], summary_model,
                                                          admission.ctx)
            through = summary.through_seq
            history = history[fold:]
            turn.emit("summary", summary=summary_public(summary))
        turn.outlook = Outlook.of(room, content, history)
        context["summary_through"] = through
        system = cx.system_message([
            persona_text, memory_text, cx.summary_block(summary.content, through) if summary is not None else None,
        ])
        messages = [*([system] if system is not None else []),
                    *(Message(role="assistant" if m.role == "assistant" else "user", content=m.content)
                      for m in history if m.role == "user" or (m.role == "assistant" and m.content)),
                    Message(role="user", content=content)]
        if not thread.knowledge_bases or model.startswith("kb/"):
            return _Prompt(messages, context)  # (a kb/ model searches the thread's knowledge bases with its own)
        kcfg = self.config.knowledge
        grounder = Grounder(self.knowledge, self.catalog, top_k=kcfg.top_k,
                            max_context_tokens=min(kcfg.max_context_tokens, max(budget.prompt // 3, 100)))
        rerank = kcfg.rerank_model if kcfg.rerank_model and self.catalog.allows(principal, kcfg.rerank_model) else None
        grounding = await grounder.ground(principal, thread.knowledge_bases, messages, query=content,
                                          ctx=admission.ctx, rerank_model=rerank)
        return _Prompt(grounding.messages, context, grounding)

    # -- learning about the user -----------------------------------------------------------------

    async def _learn_later(self, principal: Principal, thread: Thread, model: str, stored: list[ThreadMessage]) -> None:
        """Queue learning from the user's message of a stored turn (the extractor chosen now, with the rights of
        the caller as they are now)."""
        user = next((m for m in stored if m.role == "user"), None)
        if user is not None:
            extractor = helper_model(self.catalog, self.config.memory.model, principal, model)
            await self.learner.later(principal, thread.id, user, extractor)
