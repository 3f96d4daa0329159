"""Ensembles, debates and their runs: ``/api/v1/ensembles``, ``/api/v1/debates``, ``/api/v1/runs``,
``/api/v1/leaderboard``. Every run is its owner's (admins may read all)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ...accounts.principal import Principal
from ...bounds import MAX_UNIX_TIME, MAX_USD, OutputTokens
from ...deliberation.runs import Event, LiveRun
from ...deliberation.service import Kind, RunOptions, redact
from ...errors import InvalidRequestError, NotFoundError, retry_after_header
from ...gateway.tokens import estimate_text_tokens
from ...types import Message, message_text
from .. import sse
from ..deps import PrincipalDep, ResumeDep, StateDep, client_ip
from ..routing import StrictJSONRoute
from ..state import AppState

router = APIRouter(prefix="/api/v1", tags=["deliberation"], route_class=StrictJSONRoute)

_DOCUMENTS = {"plan.md", "tasks.md"}


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    question: str | None = Field(default=None, description="The question (or give messages).")
    messages: list[Message] | None = None
    stream: bool = Field(default=False, description="Answer with the run's events over SSE as they happen.")
    cache: bool = Field(default=False, description="Allow an identical earlier run of yours to answer (no cost).")
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=10)
    max_cost_usd: float | None = Field(default=None, gt=0, le=MAX_USD,
                                       description="Stop the run before it would cost more.")
    max_tokens: OutputTokens | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)

    def conversation(self) -> list[Message]:
        if (self.question is None) == (self.messages is None):
            raise InvalidRequestError("Send either 'question' or 'messages'.", param="question")
        if self.question is not None:
            return [Message(role="user", content=self.question)]
        assert self.messages is not None
        if not self.messages:
            raise InvalidRequestError("messages: at least one message is needed.", param="messages")
        return self.messages

    def options(self, **extra: Any) -> RunOptions:
        return RunOptions(cache=self.cache, tags=self.tags, max_cost_usd=self.max_cost_usd,
                          max_tokens=self.max_tokens, temperature=self.temperature, **extra)

    def overrides(self) -> dict[str, Any]:
        """The fields that change the configured run (each kind names its own)."""
        return {}


class EnsembleIn(RunIn):
    ensemble: str | None = Field(default=None, description="A configured ensemble; omit to give members here.")
    arena: bool = Field(default=False, description="Blind arena: two answers, models revealed after your vote.")
    members: list[str] | None = None
    strategy: str | None = None
    judge: str | list[str] | None = None
    judges: list[str] | None = None
    aggregate: str | None = None
    weights: dict[str, float] | None = None
    synthesis: str | None = None
    chairman: str | None = None
    top_k: int | None = None
    member_timeout: float | None = None
    judge_timeout: float | None = None

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(include={
            "members", "strategy", "judge", "judges", "aggregate", "weights", "synthesis", "chairman", "top_k",
            "member_timeout", "judge_timeout",
        }, exclude_none=True)


class DebateIn(RunIn):
    debate: str | None = Field(default=None, description="A configured debate; omit to give models here.")
    models: list[str] | None = None
    moderator: str | None = None
    analyst: str | None = None
    judge: str | None = None
    experts: int | None = None
    rounds: int | None = None
    convergence: float | None = None
    recruit: str | None = None
    personas: list[str] | None = None
    follow_up: bool | None = None
    plan: bool | None = None
    expert_timeout: float | None = None

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(include={
            "models", "moderator", "analyst", "judge", "experts", "rounds", "convergence", "recruit", "personas",
            "follow_up", "plan", "expert_timeout",
        }, exclude_none=True)


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    answer: str | None = Field(default=None, description="The label of the answer you rate (A, B, ...).")
    vote: Literal["up", "down"] | None = None
    winner: str | None = Field(default=None, description="Arena runs: A, B or tie.")


def _event(event: Event) -> bytes:
    return sse.event(event.json(), id=event.seq, name=event.type)


def sse_events(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        async for event in events:
            yield _event(event)
    return gen()


async def start_run(
    kind: Kind, name: str | None, body: RunIn, request: Request, principal: Principal,
    state: AppState, **extra: Any,
) -> LiveRun:
    service = state.deliberation
    cfg = service.resolve(kind, name, body.overrides())
    model = f"{kind}/{name}" if name else f"{kind}/custom"
    if name is not None:
        state.catalog.permit(principal, model)
    service.check_access(principal, cfg, model)
    messages = body.conversation()
    estimate = sum(estimate_text_tokens(message_text(m)) for m in messages) + (body.max_tokens or 0)
    admission = await state.gate.admit(principal, client_ip(request), model, estimate)

    async def recorded(status: int, cache_hit: bool) -> None:
        await admission.finish(status, cache_hit=cache_hit)

    # The run records the admission when it ends (it goes on if the client goes away), or at once if it
    # cannot start.
    return await service.start(kind, cfg, principal=principal, ctx=admission.ctx, messages=messages,
                               options=body.options(**extra), on_end=recorded)


async def answer_run(run: LiveRun, body: RunIn, state: AppState) -> Response:
    headers = {"x-thinktank-run-id": run.id}
    if body.stream:
        events = run.follow(0)
        if isinstance(body, EnsembleIn) and body.arena:
            events = state.deliberation.blind(run, events)
        return StreamingResponse(sse_events(events), headers={**headers, **sse.HEADERS})
    await state.deliberation.wait(run)
    record = redact(run.record())  # the finished run, from memory: no need to read back what was just saved
    if run.status in ("completed", "step_limit", "time_limit"):
        return Response(orjson.dumps(record), media_type="application/json", headers=headers)
    if run.status == "awaiting_approval":  # the run waits for a person: 202, decided with .../approve or .../deny
        return Response(orjson.dumps(record), 202, media_type="application/json", headers=headers)
    status = {"failed": 502, "budget_exceeded": 429, "cancelled": 409}.get(run.status, 500)
    code = {"failed": "run_failed", "budget_exceeded": "budget_exceeded", "cancelled": "run_cancelled"}.get(run.status)
    body_out = {"error": {"message": run.error or run.status, "type": "run_error", "param": None, "code": code},
                "run": record}
    if status == 429:
        headers["Retry-After"] = retry_after_header(None)
    return JSONResponse(body_out, status, headers=headers)


@router.post("/ensembles", responses={200: {"description": "The finished run (or its events with stream=true)"}})
async def run_ensemble(body: EnsembleIn, request: Request, principal: PrincipalDep, state: StateDep) -> Response:
    """Run an ensemble: members answer at once, the answers are ranked, the best or a synthesis returns."""
    run = await start_run("ensemble", body.ensemble, body, request, principal, state, arena=body.arena)
    return await answer_run(run, body, state)


@router.post("/debates", responses={200: {"description": "The finished run (or its events with stream=true)"}})
async def run_debate(body: DebateIn, request: Request, principal: PrincipalDep, state: StateDep) -> Response:
    """Run a debate: a panel of experts argues over rounds; a moderator synthesises (and plans)."""
    run = await start_run("debate", body.debate, body, request, principal, state)
    return await answer_run(run, body, state)


@router.get("/runs")
async def list_runs(
    principal: PrincipalDep, state: StateDep, kind: Literal["ensemble", "debate", "agent", "evaluation"] | None = None,
    status: Literal["running", "completed", "failed", "cancelled", "budget_exceeded", "step_limit", "time_limit",
                    "awaiting_approval"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[float | None, Query(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False,
                                          description="Runs created before this Unix time")] = None,
    everyone: Annotated[bool, Query(description="Admins: every user's runs")] = False,
) -> dict[str, Any]:
    rows = await state.deliberation.list_runs(principal, kind=kind, status=status, limit=limit, before=before,
                                              everyone=everyone)
    return {"data": rows}


@router.get("/runs/{run_id}")
async def get_run(run_id: str, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """The whole record: request, configuration, status, every model call, the result."""
    return await state.deliberation.get(run_id, principal)


@router.get("/runs/{run_id}/events")
async def run_events(
    run_id: str, principal: PrincipalDep, state: StateDep, start: ResumeDep,
    format: Annotated[Literal["sse", "json"], Query()] = "sse",
) -> Response:
    """Replay the run's events; while it runs, follow it. ``Last-Event-ID`` resumes after that event."""
    events = state.deliberation.events(run_id, principal, start, follow=format == "sse")
    if format == "json":
        return JSONResponse({"data": [e.to_dict() async for e in events]})
    first = await anext(events, None)  # errors (404) before the response starts

    async def gen() -> AsyncIterator[bytes]:
        if first is not None:
            yield _event(first)
            async for event in events:
                yield _event(event)

    return StreamingResponse(gen(), headers=sse.HEADERS)


@router.post("/runs/{run_id}/cancel", status_code=202)
async def cancel_run(run_id: str, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """Stop a run; what it produced so far is kept. 409 if it has already ended."""
    return {"id": run_id, "status": await state.deliberation.cancel(run_id, principal)}


@router.post("/runs/{run_id}/feedback", status_code=201)
async def feedback(run_id: str, body: FeedbackIn, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """Rate an answer (``{"answer": "B", "vote": "up"}``) or, in an arena, pick ``{"winner": "A"}``."""
    return await state.deliberation.feedback(run_id, principal, answer=body.answer, vote=body.vote,
                                             winner=body.winner)


@router.get("/runs/{run_id}/documents/{name}")
async def document(run_id: str, name: str, principal: PrincipalDep, state: StateDep) -> Response:
    """``plan.md`` or ``tasks.md`` of a debate run with ``plan``."""
    content = await state.deliberation.document(run_id, principal, name)  # 404 unless the caller may read it
    if content is None or name not in _DOCUMENTS:
        raise NotFoundError(f"Run '{run_id}' has no document '{name}'.")
    return Response(content.encode(), media_type="text/markdown; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{name}"'})


@router.get("/leaderboard")
async def leaderboard(
    principal: PrincipalDep, state: StateDep, tag: Annotated[str | None, Query(max_length=64)] = None,
    bootstrap: Annotated[int, Query(ge=10, le=2000, description="Bootstrap rounds for the intervals")] = 200,
) -> dict[str, Any]:
    """Models ranked by a Bradley-Terry rating of users' votes, with 95 % bootstrap intervals."""
    del principal  # any signed-in caller may read it
    board = await state.deliberation.leaderboard(tag, rounds=bootstrap)
    return {"tag": tag, "data": board}
