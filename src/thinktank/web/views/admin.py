"""The admin pages: an overview, users (create, tier, agent tools, revoke), teams (create, list) and every key (revoke).
The usage dashboard, model health and budgets are in :mod:`.admin_ops`. Members get 403 on each."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from ...accounts.schemas import TeamCreate, UserCreate, UserTools
from ...accounts.tool_access import parse_tool_list
from ...accounts.users import configured_tier
from ...api.deps import StateDep
from ...api.state import AppState
from ...errors import InvalidRequestError, ThinktankError
from ..session import AdminPage, WebUser
from . import admin_ops
from .common import pages
from .forms import checked_form, first_error, notice, optional_float

__all__ = ["router"]

router = APIRouter()
router.include_router(admin_ops.router)

PAGE_SIZE = 100


def _page_number(request: Request) -> int:
    """``?page=``: a page number in ASCII digits ("²" and full-width digits are ``isdigit`` but not ``int``);
    anything else is the first page."""
    raw = request.query_params.get("page", "1")
    return max(1, int(raw)) if raw.isascii() and raw.isdigit() and len(raw) < 7 else 1


def _paged(rows: list[Any], page: int) -> tuple[list[Any], int]:
    pages_count = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(page, pages_count)
    return rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE], pages_count


@router.get("/admin")
async def overview(request: Request, user: AdminPage, state: StateDep) -> Response:
    await state.usage_writer.flush()
    now = state.clock.time()
    today = await state.usage_query.aggregate(user.principal, "model", now - 86400, None, "cost", 1000)
    health = state.router.health_snapshot()
    return pages(request).render(
        request, "admin/overview.html", user, title="Admin",
        users=len(await state.users.list_users()), teams=len(await state.users.list_teams()),
        keys=len(await state.keys.list(user.principal)),
        day_cost=sum(r["cost_usd"] for r in today), day_requests=sum(r["requests"] for r in today),
        day_errors=sum(r["errors"] for r in today),
        deployments=len(health), unhealthy=[d for d in health if d["status"] != "ok"],
    )


# -- users -------------------------------------------------------------------------------------------


async def _users_page(request: Request, user: WebUser, state: AppState, *, error: str = "", status: int = 200,
                      form: dict[str, str] | None = None) -> Response:
    teams = await state.users.list_teams()
    rows, count = _paged(await state.users.list_users(), _page_number(request))
    return pages(request).render(
        request, "admin/users.html", user, title="Users", status=status, error=error, notice=notice(request),
        users=rows, pages_count=count, page=_page_number(request), teams=teams,
        team_names={t.id: t.name for t in teams}, tiers=sorted(state.router.config.tiers), form=form or {},
    )


@router.get("/admin/users")
async def users_page(request: Request, user: AdminPage, state: StateDep) -> Response:
    return await _users_page(request, user, state)


@router.post("/admin/users")
async def user_create(request: Request, user: AdminPage, state: StateDep) -> Response:
    form = await checked_form(request, user)
    try:
        tier = configured_tier(form.get("tier") or None, state.router.config.tiers)
        data = UserCreate.model_validate({
            "email": form.get("email", "").strip(), "password": form.get("password", ""),
            "role": form.get("role") or "member", "team_id": form.get("team_id") or None, "tier": tier,
            "budget_usd": optional_float(form.get("budget_usd"), "budget_usd"),
            "budget_period": form.get("budget_period") or "month",
            "tools": parse_tool_list(form["tools"]) if "tools" in form else None,
        })
        await state.users.create_user(data)
    except ValidationError as exc:
        return await _users_page(request, user, state, error=first_error(exc), status=400, form=form)
    except ThinktankError as exc:
        return await _users_page(request, user, state, error=exc.message, status=exc.status, form=form)
    return RedirectResponse("/admin/users?done=user_created", status_code=303)


@router.post("/admin/users/{user_id}/tier")
async def user_tier(user_id: str, request: Request, user: AdminPage, state: StateDep) -> Response:
    form = await checked_form(request, user)
    try:
        tier = configured_tier(form.get("tier") or None, state.router.config.tiers)
    except InvalidRequestError as exc:
        return await _users_page(request, user, state, error=exc.message, status=exc.status)
    await state.users.set_tier(user_id, tier)
    return RedirectResponse("/admin/users?done=tier_changed", status_code=303)


@router.post("/admin/users/{user_id}/tools")
async def user_tools(user_id: str, request: Request, user: AdminPage, state: StateDep) -> Response:
    """The tools field: comma-separated entries, ``*`` for every tool, empty for none."""
    form = await checked_form(request, user)
    try:
        data = UserTools.model_validate({"tools": parse_tool_list(form.get("tools", ""))})
    except ValidationError as exc:
        return await _users_page(request, user, state, error=first_error(exc), status=400)
    await state.users.set_tools(user_id, data.tools)
    return RedirectResponse("/admin/users?done=tools_changed", status_code=303)


@router.post("/admin/users/{user_id}/revoke")
async def user_revoke(user_id: str, request: Request, user: AdminPage, state: StateDep) -> Response:
    await checked_form(request, user)
    if user_id == user.id:
        return await _users_page(request, user, state, status=400,
                                 error="You cannot revoke yourself here; ask another admin.")
    await state.users.revoke_user(user_id)
    return RedirectResponse("/admin/users?done=user_revoked", status_code=303)


# -- teams -------------------------------------------------------------------------------------------


async def _teams_page(request: Request, user: WebUser, state: AppState, *, error: str = "",
                      status: int = 200, form: dict[str, str] | None = None) -> Response:
    rows, count = _paged(await state.users.list_teams(), _page_number(request))
    return pages(request).render(request, "admin/teams.html", user, title="Teams", status=status, error=error,
                                 notice=notice(request), teams=rows, pages_count=count,
                                 page=_page_number(request), form=form or {})


@router.get("/admin/teams")
async def teams_page(request: Request, user: AdminPage, state: StateDep) -> Response:
    return await _teams_page(request, user, state)


@router.post("/admin/teams")
async def team_create(request: Request, user: AdminPage, state: StateDep) -> Response:
    form = await checked_form(request, user)
    try:
        data = TeamCreate.model_validate({
            "name": form.get("name", "").strip(), "budget_usd": optional_float(form.get("budget_usd"), "budget_usd"),
            "budget_period": form.get("budget_period") or "month",
        })
        await state.users.create_team(data)
    except ValidationError as exc:
        return await _teams_page(request, user, state, error=first_error(exc), status=400, form=form)
    except ThinktankError as exc:
        return await _teams_page(request, user, state, error=exc.message, status=exc.status, form=form)
    return RedirectResponse("/admin/teams?done=team_created", status_code=303)


# -- keys --------------------------------------------------------------------------------------------


@router.get("/admin/keys")
async def keys_page(request: Request, user: AdminPage, state: StateDep) -> Response:
    show_revoked = request.query_params.get("revoked") == "1"
    keys = await state.keys.list(user.principal, include_revoked=show_revoked)
    keys.sort(key=lambda k: k.created_at, reverse=True)
    rows, count = _paged(keys, _page_number(request))
    emails = {u.id: u.email for u in await state.users.list_users()}
    return pages(request).render(request, "admin/keys.html", user, title="API keys", notice=notice(request),
                                 keys=rows, emails=emails, show_revoked=show_revoked, pages_count=count,
                                 page=_page_number(request))


@router.post("/admin/keys/{key_id}/revoke")
async def key_revoke(key_id: str, request: Request, user: AdminPage, state: StateDep) -> Response:
    await checked_form(request, user)
    await state.keys.revoke(user.principal, key_id)
    return RedirectResponse("/admin/keys?done=key_revoked", status_code=303)
