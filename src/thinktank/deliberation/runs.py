"""Runs: multi-step work (an ensemble, a debate) as a persisted record with typed events.

A :class:`LiveRun` is what a runner works on: every model call goes through :meth:`LiveRun.call`
(any catalog name: routed, budgeted and costed by the router underneath, recorded with its prompt,
answer, tokens, cost, latency or error) and every step is an :class:`Event`. A call to a model that is
itself a run (an ensemble member that is an ensemble) makes a child run: its id is in the call's
``model_answered`` event and in a ``child_run`` event, its cost counts once, in this run's total.
Subscribers (SSE clients) read the events as they happen; :class:`RunStore` persists them for replay
and for ``GET /runs/{id}``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson

from ..accounts.budgets import BudgetExceededError
from ..clock import Clock
from ..errors import ThinktankError, UpstreamTimeoutError
from ..gateway.context import CallContext
from ..types import ChatRequest, Message, ToolCall

if TYPE_CHECKING:
    from ..observability.tracing import Tracing
    from ..providers.base import ChatModel
    from .replay import Replay

__all__ = ["FINAL", "PAUSED", "CallRecord", "Event", "EventType", "LiveRun", "Reply", "RunEnded", "RunPaused",
           "RunStatus"]

EventType = Literal[
    "run_started", "stage_started", "stage_finished", "model_answered", "model_failed", "review",
    "ranking", "round", "convergence", "follow_up", "panel", "analysis", "synthesis_token", "document",
    "cost", "cache_hit", "done", "error", "child_run", "step", "tool_call", "tool_result", "approval_requested",
    "approval_decided", "resumed", "eval_started", "eval_answer", "eval_checked", "eval_judged", "eval_item",
    "eval_progress",
]
RunStatus = Literal["running", "completed", "failed", "cancelled", "budget_exceeded", "step_limit", "time_limit",
                    "awaiting_approval"]
FINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled", "budget_exceeded", "step_limit", "time_limit"})
PAUSED = "awaiting_approval"
"""A run waiting for a person's decision: not finished, and not executing anywhere."""


class RunPaused(Exception):
    """Raised by a runner to pause its run (its state is already stored): the run waits, holding nothing."""


class RunEnded(Exception):
    """Raised by a runner that stopped at a limit (``step_limit``, ``time_limit``) with what it has."""

    def __init__(self, status: str, result: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.result = result


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    ts: float
    type: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "type": self.type, "data": self.data}

    def json(self) -> bytes:
        """The event as one line of JSON, as the SSE stream sends it (its id is its ``seq``)."""
        return orjson.dumps({"seq": self.seq, "ts": self.ts, "type": self.type, **self.data})


@dataclass(slots=True)
class CallRecord:
    seq: int
    stage: str
    role: str
    model: str
    prompt: list[dict[str, Any]]
    ts: float
    deployment: str | None = None
    answer: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    error: str | None = None
    saved: bool = False
    """Written to the database (calls are written as they finish, not always in order)."""


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    model: str
    deployment: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency: float
    run_id: str | None = None
    """The child run that answered, when the model was itself a run."""
    citations: list[dict[str, Any]] | None = None
    """The passages a grounded model cited."""
    tool_calls: list[ToolCall] | None = None
    """The tools the model asked to call (a call offered ``tools``)."""


@dataclass
class LiveRun:
    """A run being executed in this process."""

    id: str
    user_id: str
    key_id: str | None
    kind: str
    name: str
    question: str
    request: dict[str, Any]
    config: dict[str, Any]
    ctx: CallContext
    models: ChatModel
    """Answers each call by its model name: the catalog (or, in tests, a router)."""
    clock: Clock
    tags: list[str] = field(default_factory=list)
    status: str = "running"
    result: dict[str, Any] | None = None
    error: str | None = None
    partial: dict[str, Any] = field(default_factory=dict)
    """What a runner has produced so far: kept as the result when the run stops early."""
    documents: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stage_costs: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0
    finished_at: float | None = None
    cache_key: str | None = None
    cached_from: str | None = None
    default_max_tokens: int | None = None
    """A cap for calls that set none (a run with max_cost_usd: what its holds assume)."""
    refusal: BudgetExceededError | None = None
    """The budget refusal that stopped the run (a parent run stops on its child's)."""
    saved_events: int = 0
    saved_calls: int = 0
    """Leading calls all written (a later one may be written already: ``CallRecord.saved``)."""
    checkpoint: tuple[str, float | None] | None = None
    """A state to write with the next save (its JSON, and an agent's approval deadline), then None."""
    checkpoint_saved: bool = False
    """A checkpoint of the run is in the database."""
    state: dict[str, Any] | None = None
    """An ensemble's or a debate's checkpoint: what its finished steps produced (see :meth:`remember`)."""
    replay: Replay | None = None
    """Calls an earlier execution of the run finished: given back instead of made again."""
    heartbeat: float = 0.0
    """The ``heartbeat_at`` this process last wrote: its saves change the run only while it is still that
    (another process that took the run up wrote its own)."""
    lost: bool = False
    """Another process took the run up (this one stalled): it stops here, writing nothing more."""
    reopened: set[str] = field(default_factory=set)
    """Stages an earlier execution started and did not finish: going on, they are not announced again."""
    replace_text: bool = False
    """The next ``synthesis_token`` replaces the text so far (an earlier execution streamed part of it)."""
    tracing: Tracing | None = None
    """Spans for its stages and calls, when tracing is on."""
    publish: Callable[[Event | None], None] | None = None
    """Told each event as it is emitted, and None once the run stopped here (followers in other processes
    get them over the event bus; set by the process that executes the run)."""
    final: dict[str, Any] | None = None
    """Its saved record, once it ended in the process that executed it (this one followed it)."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # -- events ----------------------------------------------------------------------------------
    def emit(self, type_: EventType, **data: Any) -> Event:
        if type_ == "synthesis_token" and self.replace_text:
            self.replace_text = False
            data["replace"] = True
        event = Event(len(self.events) + 1, self.clock.time(), type_, data)
        self.events.append(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self.publish is not None:
            self.publish(event)
        return event

    def add(self, event: Event) -> None:
        """An event of this run emitted by the process that executes it (this one only follows it)."""
        self.events.append(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def ended_elsewhere(self, record: dict[str, Any]) -> None:
        """The run, executed by another process, is saved as ``record`` (as ``GET /api/v1/runs/{id}`` shows it):
        this copy now says the same."""
        self.final = record
        self.status, self.result, self.error = record["status"], record["result"], record["error"]
        self.cost, self.finished_at = float(record["cost_usd"] or 0.0), record["finished_at"]
        self.prompt_tokens, self.completion_tokens = record["prompt_tokens"] or 0, record["completion_tokens"] or 0
        self.stage_costs = dict(record.get("cost_by_stage") or {})

    def wake(self) -> None:
        """Let followers look again (the run paused: nothing more comes, their streams end)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self.publish is not None:
            self.publish(None)

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    @property
    def stopped(self) -> bool:
        """Finished, or paused: nothing more happens here (a follower's stream ends)."""
        return self.status in FINAL or self.status == PAUSED

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """The events after ``after`` and then each new one as it happens, until the run ends."""
        while True:
            waiter = self._changed
            while after < len(self.events):
                after += 1
                yield self.events[after - 1]
            if self.stopped or self.lost:
                return
            await waiter.wait()

    @contextlib.asynccontextmanager
    async def stage(self, name: str, **data: Any) -> AsyncIterator[None]:
        """``stage_started`` / ``stage_finished`` around a step, with what the step cost."""
        if name in self.reopened:  # started before this execution: its cost so far counts, its start is told
            self.reopened.discard(name)
            before = 0.0
        else:
            self.emit("stage_started", stage=name, **data)
            before = self.stage_costs.get(name, 0.0)
        started = self.clock.monotonic()
        span = self.tracing.stage(self.kind, self.id, name) if self.tracing is not None else None
        ok = False
        try:
            yield
            ok = True
        finally:
            if span is not None:
                span.close(message=None if ok else "the stage failed")
            self.emit(
                "stage_finished", stage=name, cost_usd=round(self.stage_costs.get(name, 0.0) - before, 10),
                seconds=round(self.clock.monotonic() - started, 4), **({} if ok else {"failed": True}),
            )

    def remember(self, **values: Any) -> None:
        """Put what a finished step produced on the run's checkpoint, written with its next save (with the
        events and calls that go with it). Call it right after the step, before awaiting anything else."""
        if self.state is None:
            self.state = {}
        self.state.update(values)
        self.checkpoint = (orjson.dumps(self.state, option=orjson.OPT_NON_STR_KEYS).decode(), None)

    # -- model calls -----------------------------------------------------------------------------
    async def call(
        self,
        stage: str,
        role: str,
        model: str,
        messages: list[Message],
        *,
        timeout: float,  # noqa: ASYNC109 - each call's own limit, applied inside
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_text: Callable[[str], object] | None = None,
        announce: bool = True,
        label: str | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Reply:
        """One routed call, recorded whatever happens. ``on_text`` streams the answer as it comes.

        A failure is recorded, announced (``model_failed``) and raised as a ThinktankError; a
        budget refusal is raised as BudgetExceededError so the run stops.
        """
        if self.replay is not None:
            done = self.replay.take(stage, role, model, [m.model_dump(exclude_none=True) for m in messages])
            if done is not None:  # finished before the run was taken up here: not asked (nor paid) again
                return self.replay.reply(done)
        tracing = self.tracing
        span = None if tracing is None else tracing.call(
            stage, role if label is None else f"{role} {label}", model, messages,
            max_tokens or self.default_max_tokens, temperature)
        try:
            reply = await self._call(stage, role, model, messages, timeout=timeout, max_tokens=max_tokens,
                                     temperature=temperature, on_text=on_text, announce=announce, label=label,
                                     tools=tools)
        except BaseException as exc:
            if span is not None:
                span.close(exc)
            raise
        if tracing is not None and span is not None:
            tracing.called(span, reply.deployment, reply.prompt_tokens, reply.completion_tokens, reply.cost,
                           reply.text)
        return reply

    async def _call(
        self,
        stage: str,
        role: str,
        model: str,
        messages: list[Message],
        *,
        timeout: float,  # noqa: ASYNC109 - each call's own limit, applied inside
        max_tokens: int | None,
        temperature: float | None,
        on_text: Callable[[str], object] | None,
        announce: bool,
        label: str | None,
        tools: list[dict[str, Any]] | None,
    ) -> Reply:
        record = CallRecord(self.calls[-1].seq + 1 if self.calls else 1, stage, role, model,
                            [m.model_dump(exclude_none=True) for m in messages], self.clock.time())
        self.calls.append(record)
        request = ChatRequest(model=model, messages=messages, max_tokens=max_tokens or self.default_max_tokens,
                              temperature=temperature, stream=on_text is not None, tools=tools or None)
        ctx = self.ctx.child(self.id)
        started = self.clock.monotonic()
        who = {"role": role, "model": model} if label is None else {"role": role, "label": label}
        citations: list[dict[str, Any]] | None = None
        child: str | None = None
        calls: list[ToolCall] | None = None
        try:
            async with asyncio.timeout(timeout):
                if on_text is None:
                    response = await self.models.complete(request, ctx)
                    text = response.choices[0].message.content or "" if response.choices else ""
                    citations, child = response.citations, response.run_id
                    calls = response.choices[0].message.tool_calls if response.choices else None
                else:
                    parts: list[str] = []
                    pieces = ToolCallPieces()
                    async for chunk in self.models.stream(request, ctx):
                        child = chunk.run_id or child
                        if chunk.citations is not None:
                            citations = chunk.citations
                        for choice in chunk.choices:
                            if choice.delta.content:
                                parts.append(choice.delta.content)
                                on_text(choice.delta.content)
                            if choice.delta.tool_calls:
                                pieces.add(choice.delta.tool_calls)
                    text = "".join(parts)
                    calls = pieces.calls()
        except TimeoutError:
            error: ThinktankError = UpstreamTimeoutError(f"{model} gave no answer within {timeout:g} s")
            self._failed(record, ctx, started, error, who, stage, announce)
            raise error from None
        except BudgetExceededError as exc:
            self._failed(record, ctx, started, exc, who, stage, announce)
            raise
        except ThinktankError as exc:
            self._failed(record, ctx, started, exc, who, stage, announce)
            raise
        except asyncio.CancelledError:
            # Stopped from outside (a cancel, a budget refusal of a sibling call): on the record as such.
            self._failed(record, ctx, started, ThinktankError("cancelled before it answered"), who, stage, announce)
            raise
        latency = self.clock.monotonic() - started
        self.account(record, ctx, stage)
        record.answer = text
        record.latency_ms = round(latency * 1000, 3)
        child = child or ctx.run_id
        if citations is not None and self.state is not None:  # a replayed call gives them back
            self.remember(citations={**self.state.get("citations", {}), str(record.seq): citations})
        if announce:
            self.emit("model_answered", stage=stage, **who, latency_ms=record.latency_ms,
                      tokens=record.prompt_tokens + record.completion_tokens, cost_usd=record.cost_usd,
                      **({"run_id": child} if child else {}))
        return Reply(text, model, record.deployment, record.prompt_tokens, record.completion_tokens,
                     record.cost_usd, latency, child, citations, calls or None)

    async def ask_parsed(
        self, stage: str, role: str, model: str, messages: list[Message], parse: Callable[[str], Any], hint: str,
        *, timeout: float,  # noqa: ASYNC109 - passed on to call()
    ) -> tuple[Any, str | None]:
        """A call whose reply must parse (a judge, an analyst): asked once more, with the reason and
        ``hint``, if it does not. Returns (value, None), or (None, why) when the call failed or the reply
        could not be parsed twice; a budget refusal is raised."""
        for attempt in range(2):
            try:
                reply = await self.call(stage, role, model, messages, timeout=timeout)
            except BudgetExceededError:
                raise
            except ThinktankError as exc:
                return None, f"call failed: {exc.message}"
            try:
                return parse(reply.text), None
            except ValueError as exc:  # the parsers' JudgeParseError, and invalid values they build
                if attempt == 1:
                    return None, f"unparseable reply twice ({exc})"
                messages = [*messages, Message(role="assistant", content=reply.text),
                            Message(role="user", content=f"Your reply could not be read: {exc}. {hint}")]
        raise AssertionError("unreachable")

    def account(self, record: CallRecord, ctx: CallContext, stage: str) -> None:
        """Costs come from the router's accounting (``ctx.records``), the one place they are computed."""
        if ctx.run_id is not None:
            self.emit("child_run", run_id=ctx.run_id, stage=stage, call=record.seq, model=record.model)
        for usage in ctx.records:
            record.deployment = usage.deployment
            record.prompt_tokens += usage.prompt_tokens
            record.completion_tokens += usage.completion_tokens
            record.cost_usd += usage.cost
        self.ctx.records.extend(ctx.records)
        if ctx.records:
            self.cost += record.cost_usd
            self.prompt_tokens += record.prompt_tokens
            self.completion_tokens += record.completion_tokens
            self.stage_costs[stage] = self.stage_costs.get(stage, 0.0) + record.cost_usd
            self.emit("cost", cost_usd=round(self.cost, 10), stage=stage)

    def _failed(
        self, record: CallRecord, ctx: CallContext, started: float, exc: ThinktankError, who: dict[str, str],
        stage: str, announce: bool,
    ) -> None:
        self.account(record, ctx, stage)  # a stream cut short still cost something
        record.error = exc.message
        record.latency_ms = round((self.clock.monotonic() - started) * 1000, 3)
        if announce:
            self.emit("model_failed", stage=stage, **who, error=exc.message, status=exc.status)

    # -- the record ------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """The whole run as ``GET /api/v1/runs/{id}`` shows it."""
        if self.final is not None:
            return {**self.final, "events": len(self.events)}
        return {
            "id": self.id, "user_id": self.user_id, "kind": self.kind, "name": self.name, "status": self.status,
            "question": self.question, "request": self.request, "config": self.config, "tags": self.tags,
            "result": self.result if self.result is not None else (self.partial or None), "error": self.error,
            "cost_usd": round(self.cost, 10), "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "cost_by_stage": self.stage_costs,
            "created_at": self.created_at, "finished_at": self.finished_at, "cached_from": self.cached_from,
            "documents": sorted(self.documents), "calls": [call_dict(c) for c in self.calls],
            "events": len(self.events),
        }


def call_dict(c: CallRecord) -> dict[str, Any]:
    return {
        "seq": c.seq, "stage": c.stage, "role": c.role, "model": c.model, "deployment": c.deployment,
        "prompt": c.prompt, "answer": c.answer, "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens, "cost_usd": c.cost_usd, "latency_ms": c.latency_ms,
        "error": c.error, "ts": c.ts,
    }


class ToolCallPieces:
    """A streamed answer's tool calls, put together from their deltas (OpenAI sends each call's id and name
    once, then its arguments in pieces, all under the call's ``index``)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: list[dict[str, Any]]) -> None:
        for i, delta in enumerate(deltas):
            index = delta.get("index", i)
            if not isinstance(index, int):
                index = i
            call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            if isinstance(delta.get("id"), str) and delta["id"]:
                call["id"] = delta["id"]
            raw = delta.get("function")
            function: dict[str, Any] = raw if isinstance(raw, dict) else {}
            if isinstance(function.get("name"), str) and function["name"]:
                call["name"] = function["name"]
            if isinstance(function.get("arguments"), str):
                call["arguments"] += function["arguments"]

    def calls(self) -> list[ToolCall]:
        out = []
        for index in sorted(self._calls):
            c = self._calls[index]
            out.append(ToolCall.model_validate({"id": c["id"] or f"call_{index}", "type": "function",
                                                "function": {"name": c["name"], "arguments": c["arguments"]}}))
        return out
