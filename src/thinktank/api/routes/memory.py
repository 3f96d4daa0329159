"""The learned profile, as its user sees it: ``/api/v1/me/memory``. Users read, correct and delete what
was learned about them, and switch learning off (then nothing is extracted or added to prompts)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from ...conversations.memory import fact_public
from ..deps import PrincipalDep, StateDep
from ..routing import StrictJSONRoute

router = APIRouter(prefix="/api/v1/me/memory", tags=["memory"], route_class=StrictJSONRoute)


class MemoryPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, description="At most 500 characters.")
    kind: str | None = Field(default=None, description="fact, interest or preference")


class MemorySettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool


@router.get("")
async def list_memory(principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """Everything learned about you, oldest first, each with the message it came from."""
    memory = state.conversations.memory
    return {"enabled": await memory.enabled(principal.user_id),
            "data": [fact_public(f) for f in await memory.list_facts(principal)]}


@router.delete("")
async def clear_memory(principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """Forget everything learned about you."""
    return {"deleted": await state.conversations.memory.clear(principal)}


@router.get("/settings")
async def memory_settings(principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    return {"enabled": await state.conversations.memory.enabled(principal.user_id)}


@router.put("/settings")
async def set_memory_settings(body: MemorySettingsIn, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """``{"enabled": false}``: nothing more is learned and nothing is added to prompts (what is stored stays
    until you delete it)."""
    return {"enabled": await state.conversations.memory.set_enabled(principal.user_id, body.enabled)}


@router.get("/{memory_id}")
async def get_memory(memory_id: str, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    return fact_public(await state.conversations.memory.get(principal, memory_id))


@router.patch("/{memory_id}")
async def update_memory(memory_id: str, body: MemoryPatch, principal: PrincipalDep,
                        state: StateDep) -> dict[str, Any]:
    fact = await state.conversations.memory.update(principal, memory_id, text=body.text, kind=body.kind)
    return fact_public(fact)


@router.delete("/{memory_id}", status_code=204)
async def delete_memory(memory_id: str, principal: PrincipalDep, state: StateDep) -> Response:
    await state.conversations.memory.delete(principal, memory_id)
    return Response(status_code=204)
