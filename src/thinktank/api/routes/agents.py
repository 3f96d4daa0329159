"""Agents: ``/api/v1/agents`` (list, run: every step streamed), and the decisions on a paused run:
``/api/v1/runs/{id}/approve``, ``/deny``, ``/resume``. Runs are read, followed and cancelled like every run
(``/api/v1/runs/...``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ...agents.config import ToolRef
from ..deps import PrincipalDep, StateDep
from ..routing import StrictJSONRoute
from .runs import RunIn, answer_run, start_run

router = APIRouter(prefix="/api/v1", tags=["agents"], route_class=StrictJSONRoute)


class AgentIn(RunIn):
    """Run an agent: a configured one by name, changed by the fields given here (they may add approvals,
    never take one away; MCP servers and commands come from the server's configuration only)."""

    agent: str | None = Field(default=None, description="A configured agent; omit to describe one here.")
    model: str | None = None
    system: str | None = Field(default=None, max_length=100_000)
    tools: list[Annotated[str, Field(min_length=1, max_length=200)] | ToolRef] | None = Field(default=None,
                                                                                              max_length=100)
    models: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(default=None, max_length=32)
    knowledge_bases: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(default=None,
                                                                                              max_length=16)
    approval: Literal["required", "never"] | None = None
    max_steps: int | None = None
    time_limit: float | None = None
    approval_timeout: float | None = None
    tool_timeout: float | None = None

    def overrides(self) -> dict[str, Any]:
        data = self.model_dump(include={
            "model", "system", "models", "knowledge_bases", "approval", "max_steps", "time_limit",
            "approval_timeout", "tool_timeout",
        }, exclude_none=True)
        if self.tools is not None:
            data["tools"] = [t if isinstance(t, str) else t.model_dump(exclude_none=True) for t in self.tools]
        return data


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    call_id: str | None = Field(default=None, max_length=200,
                                description="The proposed call (default: the first waiting).")
    arguments: dict[str, Any] | None = Field(default=None, description="Run the call with these arguments instead.")


class DenyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    call_id: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=2000, description="Told to the model.")


@router.get("/agents")
async def list_agents(principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """The configured agents this caller may use, with their tools."""
    out = []
    for name, cfg in state.deliberation.agents.items():
        if state.catalog.allows(principal, f"agent/{name}"):
            out.append({"id": f"agent/{name}", "name": name, "model": cfg.model, "description": cfg.description,
                        "tools": [t.name for t in cfg.tool_refs()],
                        "approval": cfg.approval, "max_steps": cfg.max_steps})
    return {"data": out}


@router.post("/agents", responses={200: {"description": "The finished run (or its events with stream=true)"},
                                    202: {"description": "The run waits for an approval"}})
async def run_agent(body: AgentIn, request: Request, principal: PrincipalDep, state: StateDep) -> Response:
    """Run an agent: it calls tools until it answers. With ``stream``, every step as it happens (SSE); a run
    that waits for an approval answers 202 (or ends its stream) and goes on once decided."""
    run = await start_run("agent", body.agent, body, request, principal, state)
    return await answer_run(run, body, state)


@router.post("/runs/{run_id}/approve", status_code=202)
async def approve(run_id: str, principal: PrincipalDep, state: StateDep, body: ApproveIn | None = None
                  ) -> dict[str, Any]:
    """Let the proposed tool call run (optionally with edited ``arguments``); the run goes on. Only the
    run's owner decides (another user's run is a 404); 409 if it waits for nothing."""
    body = body or ApproveIn()
    return await state.agents.approve(run_id, principal, call_id=body.call_id, arguments=body.arguments)


@router.post("/runs/{run_id}/deny", status_code=202)
async def deny(run_id: str, principal: PrincipalDep, state: StateDep, body: DenyIn | None = None) -> dict[str, Any]:
    """Refuse the proposed tool call; the model reads ``reason`` and the run goes on."""
    body = body or DenyIn()
    return await state.agents.deny(run_id, principal, call_id=body.call_id, reason=body.reason)


@router.post("/runs/{run_id}/resume", status_code=202)
async def resume(run_id: str, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """Take up an agent run interrupted by a stop of the server that ran it, from its last checkpoint (it
    also resumes by itself within ``THINKTANK_RUN_STALE_AFTER`` seconds)."""
    return await state.agents.resume(run_id, principal)
