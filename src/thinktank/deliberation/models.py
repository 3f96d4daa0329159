"""``ensemble/<name>``, ``debate/<name>`` and ``agent/<name>`` as ChatModels.

``complete`` runs the run and returns its final answer (``run_id`` names the run); ``stream`` sends
progress while members and judges work (an agent: the tools it calls), then the synthesis (an agent: its
answer) as it is written. An agent that stops at a limit answers with what it had (``finish_reason``
``length``); one that waits for a person's approval answers with a notice saying so (``finish_reason``
``awaiting_approval``) and goes on once someone decides. Either way the run's
events go to the run store as for the native endpoints (replay with ``Last-Event-ID``, cancel,
feedback). A request may set thinktank's run options beside the OpenAI ones: ``cache`` (or the caller's
``x-thinktank-cache: allow``), ``tags`` and ``max_cost_usd``.

A run started by the API request itself goes on if its streaming client goes away (the request is
recorded when it ends); a run started as a step of another run (a child) stops with its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..accounts.principal import Principal
from ..errors import ConflictError, InvalidRequestError, RateLimitError, RunFailedError, ThinktankError
from ..gateway.context import CallContext
from ..types import ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Delta, ResponseMessage, Usage
from .runs import PAUSED, Event, LiveRun
from .service import Deliberation, Kind, RunOptions

__all__ = ["ANSWERED", "FINISH_REASON", "RunModel", "awaiting_notice", "notice_for", "run_error", "run_usage"]


class _RunFields(BaseModel):
    """thinktank's own fields of a chat request to a run model."""

    model_config = ConfigDict(extra="ignore")

    cache: bool = False
    tags: list[str] = Field(default_factory=list, max_length=10)
    max_cost_usd: float | None = Field(default=None, gt=0, le=1_000_000)


def run_error(run: LiveRun) -> ThinktankError:
    """What a run that did not complete answers."""
    if run.refusal is not None:
        return run.refusal  # a budget's own refusal: a parent run stops on it as on any budget refusal
    if run.status == "budget_exceeded":
        return RateLimitError(run.error or "Budget exceeded.", retry_after=0.0, code="budget_exceeded")
    if run.status == "cancelled":
        return ConflictError(run.error or "The run was cancelled.", code="run_cancelled")
    return RunFailedError(f"{run.error or 'The run failed.'} (run {run.id})")


def run_usage(run: LiveRun) -> Usage:
    return Usage(prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens,
                 total_tokens=run.prompt_tokens + run.completion_tokens, cost=round(run.cost, 10))


class RunModel:
    """A configured ensemble or debate, answering chat requests."""

    def __init__(self, service: Deliberation, kind: Kind, config_name: str) -> None:
        self._service = service
        self._kind = kind
        self._config_name = config_name

    @property
    def name(self) -> str:
        return f"{self._kind}/{self._config_name}"

    async def _start(self, request: ChatRequest, ctx: CallContext | None) -> tuple[LiveRun, CallContext]:
        if ctx is None or not isinstance(ctx.principal, Principal):
            raise InvalidRequestError(f"'{self.name}' needs a caller to run for.", param="model")
        try:
            fields = _RunFields.model_validate(request.model_extra or {})
        except ValidationError as exc:
            err = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(x) for x in err["loc"])
            raise InvalidRequestError(f"{where}: {err['msg']}", param=where) from None
        if self._kind == "agent" and (request.tools or request.tool_choice is not None):
            raise InvalidRequestError(f"tools: '{self.name}' uses the tools its configuration gives it; a request "
                                      "cannot add tools to an agent", param="tools")
        service = self._service
        cfg = service.resolve(self._kind, self._config_name, {})
        service.check_access(ctx.principal, cfg, self.name)
        run = await service.start(
            self._kind, cfg, principal=ctx.principal, ctx=ctx, messages=request.messages,
            options=RunOptions(cache=fields.cache or ctx.cache_allowed, tags=fields.tags,
                               max_cost_usd=fields.max_cost_usd, max_tokens=request.output_limit(),
                               temperature=request.temperature),
        )
        return run, ctx

    async def served_from_cache(self, request: ChatRequest, ctx: CallContext, run_id: str) -> str | None:
        """The response cache answers with run ``run_id``'s answer: the id of the run that records it (its
        ``cached_from`` names ``run_id``), as for a hit of the run cache."""
        if not isinstance(ctx.principal, Principal):
            return None
        run = await self._service.record_cache_hit(self._kind, self._config_name, principal=ctx.principal, ctx=ctx,
                                                   messages=request.messages, cached_from=run_id)
        return run.id if run is not None else None

    async def _finish(self, run: LiveRun, ctx: CallContext) -> None:
        """The caller stopped waiting (its client went away, or its parent run stopped): a child run stops
        too; a run the API started goes on, and the request is recorded when it ends."""
        task = self._service.task_of(run)
        if task is None or task.done():
            return
        if ctx.parent_run is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        else:
            ctx.background.add(task)

    async def complete(self, request: ChatRequest, ctx: CallContext | None = None) -> ChatResponse:
        run, ctx = await self._start(request, ctx)
        try:
            await self._service.wait(run)
        except asyncio.CancelledError:
            await self._finish(run, ctx)
            raise
        if run.status not in ANSWERED:
            raise run_error(run)
        answer = (run.result or {}).get("answer") or ""
        if run.status == PAUSED:
            answer = awaiting_notice(run)
        response = ChatResponse(
            id=f"chatcmpl-{run.id}", created=int(run.created_at), model=self.name,
            choices=[Choice(index=0, message=ResponseMessage(content=answer), finish_reason=FINISH_REASON[run.status])],
            usage=run_usage(run),
        )
        if run.status == "completed" and run.result and run.result.get("citations"):
            response.citations = run.result["citations"]
        response.produced_by(run_id=run.id)
        return response

    async def stream(self, request: ChatRequest, ctx: CallContext | None = None) -> AsyncIterator[ChatChunk]:
        run, ctx = await self._start(request, ctx)
        ended = False
        try:
            async for chunk in self._chunks(run):
                chunk.produced_by(run_id=run.id)
                yield chunk
            ended = True
        finally:
            if not ended:
                await self._finish(run, ctx)

    async def _chunks(self, run: LiveRun) -> AsyncIterator[ChatChunk]:
        cid, created = f"chatcmpl-{run.id}", int(run.created_at)
        yield ChatChunk.progress(f"run {run.id}", model=self.name)
        first = True
        async for event in run.follow(0):
            if event.type == "synthesis_token" and event.data.get("replace") and not first:
                # The synthesis broke off and the run answered with the best member's answer instead:
                # streamed text cannot be taken back, so the stream ends with an error saying so.
                raise RunFailedError(f"The synthesis broke off; the run's answer is in GET /api/v1/runs/{run.id}.")
            if event.type == "synthesis_token" and event.data.get("text"):
                text: str = event.data["text"]
                delta = Delta(role="assistant", content=text) if first else Delta(content=text)
                first = False
                yield ChatChunk(id=cid, created=created, model=self.name, choices=[ChunkChoice(delta=delta)])
            elif event.type == "stage_started":
                yield ChatChunk.progress(f"stage {_text(event.data.get('stage'))}", model=self.name)
            elif event.type == "tool_call":
                yield ChatChunk.progress(f"tool {_text(event.data.get('tool'))}", model=self.name)
        await self._service.wait(run)
        if run.status not in ANSWERED:
            raise run_error(run)
        if run.status == PAUSED:
            notice = awaiting_notice(run)
            notice = notice if first else "\n\n" + notice
            delta = Delta(role="assistant", content=notice) if first else Delta(content=notice)
            yield ChatChunk(id=cid, created=created, model=self.name, choices=[ChunkChoice(delta=delta)])
        yield ChatChunk(id=cid, created=created, model=self.name,
                        choices=[ChunkChoice(delta=Delta(), finish_reason=FINISH_REASON[run.status])])
        citations = (run.result or {}).get("citations") if run.status == "completed" else None
        yield ChatChunk(id=cid, created=created, model=self.name, choices=[], usage=run_usage(run),
                        citations=citations or None)


ANSWERED = frozenset({"completed", "step_limit", "time_limit", PAUSED})
"""How a run may end and still answer: with its answer, what it had at a limit, or a notice that it waits."""
FINISH_REASON = {"completed": "stop", "step_limit": "length", "time_limit": "length", PAUSED: "awaiting_approval"}
"""The chat ``finish_reason`` of a run that answered, by its status."""


def awaiting_notice(run: LiveRun) -> str:
    """What a chat answer says while its agent run waits for a person's decision."""
    return notice_for(run.id, run.events)


def notice_for(run_id: str, events: Sequence[Event]) -> str:
    """:func:`awaiting_notice` of run ``run_id`` from its events."""
    calls = next((e.data.get("calls") for e in reversed(events) if e.type == "approval_requested"), None) or []
    tools = ", ".join(sorted({str(c.get("tool")) for c in calls if isinstance(c, dict)})) or "a tool"
    return (f"[Waiting for approval: this agent wants to call {tools}. Approve or deny it in the web app, or with "
            f"POST /api/v1/runs/{run_id}/approve or /deny; the answer then continues in the run "
            f"(GET /api/v1/runs/{run_id}).]")


def _text(value: Any) -> str:
    return str(value or "").replace("\n", " ")
