"""The Me page: what thinktank learned about me (memory), my sessions, my API keys (in :mod:`.me_keys`); and
my usage and spend (``/me/usage``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ...accounts.keys import key_public
from ...accounts.principal import Principal
from ...api.deps import StateDep
from ...api.state import AppState
from ...conversations.memory import KINDS
from ...errors import ThinktankError
from ..charts import bar_chart, line_chart
from ..render import money
from ..session import UserPage, WebUser, clear_session_cookie, is_secure
from . import me_keys
from .common import pages
from .forms import checked_form, notice

__all__ = ["me_page", "own_scope", "router"]

router = APIRouter()
router.include_router(me_keys.router)

USAGE_DAYS = 30
DAY = 86400.0


def own_scope(principal: Principal) -> Principal:
    """The principal as it reads usage on its own page: only its own rows, even for an admin (who would
    otherwise see everyone's)."""
    return dataclasses.replace(principal, role="member") if principal.is_admin else principal


async def _usage(state: AppState, principal: Principal) -> dict[str, Any]:
    """My last 30 days: totals, spend per day (a line chart) and per model (bars and a table)."""
    await state.usage_writer.flush()  # what was just answered is counted
    now = state.clock.time()
    start = (int(now // DAY) - USAGE_DAYS + 1) * DAY
    scope = own_scope(principal)
    by_model = await state.usage_query.aggregate(scope, "model", start, None, "cost", 50)
    by_day = await state.usage_query.aggregate(scope, "day", start, None, "group", USAGE_DAYS + 1)
    spend = {row["group"]: row["cost_usd"] for row in by_day}
    requests = {row["group"]: row["requests"] for row in by_day}
    days = [_day(start + i * DAY) for i in range(USAGE_DAYS)]
    ticks = [(float(i), days[i][5:]) for i in range(0, USAGE_DAYS, 7)]
    totals = {k: sum(int(r[k]) for r in by_model) for k in ("requests", "prompt_tokens", "completion_tokens",
                                                            "errors")}
    return {
        "by_model": by_model,
        "totals": totals,
        "total_cost": sum(r["cost_usd"] for r in by_model),
        "spend_chart": line_chart(
            {"Spend (USD)": [(float(i), float(spend.get(d, 0.0))) for i, d in enumerate(days)]},
            title="My spend per day, last 30 days", x_labels=ticks, y_format=money),
        "requests_chart": line_chart(
            {"Requests": [(float(i), float(requests.get(d, 0))) for i, d in enumerate(days)]},
            title="My requests per day, last 30 days", x_labels=ticks),
        "model_chart": bar_chart([(str(r["group"]), float(r["cost_usd"])) for r in by_model[:10]],
                                 title="My spend by model, last 30 days", value_format=money),
    }


def _day(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


async def render_me(request: Request, user: WebUser, state: AppState, *, error: str = "",
                    status: int = 200) -> Response:
    memory = state.conversations.memory
    principal = user.principal
    keys = [key_public(k) for k in await state.keys.list(principal) if k.owner_id == principal.user_id]
    return pages(request).render(
        request, "me/index.html", user, title="Me", status=status, error=error, notice=notice(request),
        memory_on=await memory.enabled(principal.user_id), facts=await memory.list_facts(principal), kinds=KINDS,
        sessions=await state.users.list_sessions(principal.user_id), current_session=principal.session_id,
        keys=keys,
    )


@router.get("/me")
async def me_page(request: Request, user: UserPage, state: StateDep) -> Response:
    return await render_me(request, user, state)


@router.get("/me/usage")
async def my_usage_page(request: Request, user: UserPage, state: StateDep) -> Response:
    """A page of its own: it reads a month of usage rows, which the Me page need not wait for."""
    return pages(request).render(request, "me/usage.html", user, title="My usage and spend",
                                 usage=await _usage(state, user.principal))


def _back(done: str, anchor: str) -> Response:
    return RedirectResponse(f"/me?done={done}#{anchor}", status_code=303)


# -- memory ------------------------------------------------------------------------------------------


@router.post("/me/memory/settings")
async def memory_switch(request: Request, user: UserPage, state: StateDep) -> Response:
    form = await checked_form(request, user)
    on = form.get("enabled") == "on"
    await state.conversations.memory.set_enabled(user.id, on)
    return _back("memory_on" if on else "memory_off", "memory")


@router.post("/me/memory/clear")
async def memory_clear(request: Request, user: UserPage, state: StateDep) -> Response:
    await checked_form(request, user)
    await state.conversations.memory.clear(user.principal)
    return _back("memory_cleared", "memory")


@router.post("/me/memory/{memory_id}")
async def memory_edit(memory_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    form = await checked_form(request, user)
    try:
        await state.conversations.memory.update(user.principal, memory_id, text=form.get("text"),
                                                kind=form.get("kind") or None)
    except ThinktankError as exc:
        if exc.status == 404:
            raise
        return await render_me(request, user, state, error=exc.message, status=exc.status)
    return _back("memory_saved", "memory")


@router.post("/me/memory/{memory_id}/delete")
async def memory_delete(memory_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    await checked_form(request, user)
    await state.conversations.memory.delete(user.principal, memory_id)
    return _back("memory_deleted", "memory")


# -- sessions ----------------------------------------------------------------------------------------


@router.post("/me/sessions/{session_id}/revoke")
async def session_revoke(session_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    """Sign one of my sessions out; signing out this one ends up on the sign-in page."""
    await checked_form(request, user)
    await state.users.revoke_session(user.id, session_id)
    if session_id == user.principal.session_id:
        response = RedirectResponse("/login", status_code=303)
        clear_session_cookie(response, is_secure(request))
        return response
    return _back("session_revoked", "sessions")
