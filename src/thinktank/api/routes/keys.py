"""``/api/v1/keys``: virtual API keys of the caller (admins see all)."""

from __future__ import annotations

from fastapi import APIRouter

from ...accounts.keys import key_public
from ...accounts.schemas import KeyCreate, KeyCreated, KeyPublic
from ..deps import PrincipalDep, StateDep
from ..routing import StrictJSONRoute

router = APIRouter(prefix="/api/v1/keys", tags=["keys"], route_class=StrictJSONRoute)


@router.post("", status_code=201)
async def create_key(body: KeyCreate, principal: PrincipalDep, state: StateDep) -> KeyCreated:
    """The full key is in this answer only; afterwards its prefix identifies it."""
    return await state.keys.create(principal, body)


@router.get("")
async def list_keys(principal: PrincipalDep, state: StateDep, include_revoked: bool = False) -> list[KeyPublic]:
    return [key_public(k) for k in await state.keys.list(principal, include_revoked=include_revoked)]


@router.get("/{key_id}")
async def get_key(key_id: str, principal: PrincipalDep, state: StateDep) -> KeyPublic:
    return key_public(await state.keys.get(principal, key_id))


@router.post("/{key_id}/rotate")
async def rotate_key(key_id: str, principal: PrincipalDep, state: StateDep) -> KeyCreated:
    return await state.keys.rotate(principal, key_id)


@router.delete("/{key_id}")
async def revoke_key(key_id: str, principal: PrincipalDep, state: StateDep) -> KeyPublic:
    return key_public(await state.keys.revoke(principal, key_id))
