"""``/api/v1/auth``, ``/api/v1/me``, ``/api/v1/users``, ``/api/v1/teams``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ...accounts.schemas import (
    LoginIn,
    LoginOut,
    TeamCreate,
    TeamPublic,
    UserCreate,
    UserPublic,
    UserTier,
    UserTools,
)
from ...accounts.users import configured_tier, team_public, user_public
from ...errors import AuthenticationError, NotFoundError
from ..deps import AdminDep, PrincipalDep, StateDep, client_ip, session_of
from ..routing import StrictJSONRoute

router = APIRouter(prefix="/api/v1", tags=["accounts"], route_class=StrictJSONRoute)


@router.post("/auth/login")
async def login(body: LoginIn, request: Request, state: StateDep) -> LoginOut:
    """Email and password in, a session token out (send it as ``Authorization: Bearer``)."""
    ip, account = client_ip(request), body.email.lower()
    # Throttled per address and account (guessing one password) and per address alone
    # (trying one password on many accounts).
    await state.check_auth_allowed(ip)
    await state.check_auth_allowed(ip, account)
    try:
        token, session, user = await state.users.login(body.email, body.password)
    except AuthenticationError:
        await state.record_auth_failure(ip)
        await state.record_auth_failure(ip, account)
        raise
    return LoginOut(token=token, expires_at=session.expires_at, user=user_public(user))


@router.post("/auth/logout", status_code=204)
async def logout(principal: PrincipalDep, state: StateDep) -> Response:
    await state.users.logout(session_of(principal))
    return Response(status_code=204)


@router.get("/sessions")
async def list_sessions(principal: PrincipalDep, state: StateDep) -> list[dict[str, object]]:
    """The caller's live sessions (ids only; tokens are never shown again)."""
    return [{"id": x.id, "created_at": x.created_at, "expires_at": x.expires_at,
             "current": x.id == principal.session_id} for x in await state.users.list_sessions(principal.user_id)]


@router.delete("/sessions/{session_id}", status_code=204)
async def revoke_session(session_id: str, principal: PrincipalDep, state: StateDep) -> Response:
    await state.users.revoke_session(principal.user_id, session_id)
    return Response(status_code=204)


@router.get("/me")
async def me(principal: PrincipalDep, state: StateDep) -> dict[str, object]:
    info: dict[str, object] = {
        "user_id": principal.user_id, "role": principal.role, "key_id": principal.key_id,
        "team_id": principal.team_id, "admin_key": principal.is_admin_key,
        "models": sorted(principal.allowed_models) if principal.allowed_models is not None else None,
        "tools": sorted(principal.allowed_tools) if principal.allowed_tools is not None else None,
    }
    if not principal.is_admin_key:
        info["user"] = user_public(await state.users.get_user(principal.user_id)).model_dump()
    return info


@router.post("/users", status_code=201)
async def create_user(body: UserCreate, _admin: AdminDep, state: StateDep) -> UserPublic:
    return user_public(await state.users.create_user(body))


@router.get("/users")
async def list_users(_admin: AdminDep, state: StateDep) -> list[UserPublic]:
    return [user_public(u) for u in await state.users.list_users()]


@router.get("/users/{user_id}")
async def get_user(user_id: str, principal: PrincipalDep, state: StateDep) -> UserPublic:
    if not principal.is_admin and user_id != principal.user_id:
        raise NotFoundError("No such user.")
    return user_public(await state.users.get_user(user_id))


@router.post("/users/{user_id}/revoke")
async def revoke_user(user_id: str, _admin: AdminDep, state: StateDep) -> UserPublic:
    """Revoke a user and every session and key they hold."""
    return user_public(await state.users.revoke_user(user_id))


@router.put("/users/{user_id}/tier")
async def set_user_tier(user_id: str, body: UserTier, _admin: AdminDep, state: StateDep) -> UserPublic:
    """Move a user to another rate-limit tier (one configured under ``tiers:``), or to none."""
    tier = configured_tier(body.tier, state.router.config.tiers)
    return user_public(await state.users.set_tier(user_id, tier))


@router.put("/users/{user_id}/tools")
async def set_user_tools(user_id: str, body: UserTools, _admin: AdminDep, state: StateDep) -> UserPublic:
    """Set the agent tools and MCP servers a user's agents may use (null: all, ``[]``: none); their keys are
    allowed what both the key's list and this one allow."""
    return user_public(await state.users.set_tools(user_id, body.tools))


@router.post("/teams", status_code=201)
async def create_team(body: TeamCreate, _admin: AdminDep, state: StateDep) -> TeamPublic:
    return team_public(await state.users.create_team(body))


@router.get("/teams")
async def list_teams(_admin: AdminDep, state: StateDep) -> list[TeamPublic]:
    return [team_public(t) for t in await state.users.list_teams()]
