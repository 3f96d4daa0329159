"""Agent runs in the browser: a run's page (its steps, its answer, the approval card while it waits) and the
card's form, which approves (with the arguments as edited) or denies a proposed tool call.

The page script decides through the API (``/api/v1/runs/{id}/approve``, ``/deny``) and follows the run's
events; the form here does the same without it. Both go through ``Agents.approve`` / ``Agents.deny``: only
the run's owner decides (another user's run is a 404), a run that waits for nothing is a 409.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ...api.deps import StateDep
from ...api.state import AppState
from ...errors import InvalidRequestError, NotFoundError
from ..session import UserPage, WebUser, check_form_csrf
from .agent_model import load_agent_run
from .common import pages

__all__ = ["agent_context", "render_body", "render_page", "router"]

router = APIRouter()

MAX_REASON = 2000
MAX_ARGUMENTS = 100_000
"""Characters of edited arguments a form may send."""

_BACK = re.compile(r"/(?:chat|runs)/[A-Za-z0-9_-]{1,128}(?:#[A-Za-z0-9_-]{1,128})?")
"""Where the card's form may return: a thread or a run page of this app (never another site)."""


def _field(form: Any, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def agent_context(state: AppState, user: WebUser, record: dict[str, Any]) -> dict[str, Any]:
    """What ``agents/run.html`` and its body show of the (already permitted) run ``record``."""
    view = await load_agent_run(state, user.principal, str(record["id"]), calls=list(record.get("calls") or []))
    if view is None:
        raise NotFoundError(f"There is no run '{record['id']}'.")
    result: dict[str, Any] = record.get("result") or {}
    answer = result.get("answer") if isinstance(result.get("answer"), str) else None
    return {"run": record, "v": view, "answer": answer if answer is not None else view.answer,
            "final": not (view.running or view.paused), "back": f"/runs/{record['id']}"}


def render_page(request: Request, user: WebUser, context: dict[str, Any]) -> Response:
    return pages(request).render(request, "agents/run.html", user, title=f"Agent run of {context['run']['name']}",
                                 **context)


def render_body(request: Request, user: WebUser, context: dict[str, Any]) -> Response:
    html = pages(request).fragment("agents/_run_body.html", csrf=user.csrf, **context)
    return HTMLResponse(html, headers={"cache-control": "no-store"})


async def _edited(state: AppState, run_id: str, call_id: str | None, raw: str) -> dict[str, Any] | None:
    """The arguments the form sends, or None when they are the proposed ones (approved as they are)."""
    if len(raw) > MAX_ARGUMENTS:
        raise InvalidRequestError(f"arguments: at most {MAX_ARGUMENTS:,} characters", param="arguments")
    try:
        arguments = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"arguments: not valid JSON ({exc}); nothing was decided.",
                                  param="arguments") from None
    if not isinstance(arguments, dict):
        raise InvalidRequestError("arguments: must be a JSON object ({...}); nothing was decided.",
                                  param="arguments")
    checkpoint = await state.agents.store.state(run_id)
    waiting = checkpoint.waiting() if checkpoint is not None else []
    proposed = next((c for c in waiting if call_id is None or c.id == call_id), None)
    return None if proposed is not None and proposed.arguments == arguments else arguments


@router.post("/runs/{run_id}/decide")
async def decide(run_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    """The approval card without the page script: ``decision`` (approve or deny) on ``call_id``, with the
    ``arguments`` as edited or a ``reason``; then back to the page the card was on."""
    form = await request.form()
    check_form_csrf(request, user, form.get("csrf"))
    found = await state.agents.store.owner(run_id)
    if found is None or found[0] != user.id or found[1] != "agent":
        raise NotFoundError(f"There is no agent run '{run_id}'.")
    call_id = _field(form, "call_id").strip() or None
    decision = _field(form, "decision")
    back = _field(form, "back")
    if decision == "approve":
        if _field(form, "reason").strip():  # Enter in the reason field submits with the first button, Approve
            raise InvalidRequestError("You wrote a reason, so nothing was decided: press Deny to deny the call "
                                      "with it, or clear the reason to approve.", param="reason")
        arguments = await _edited(state, run_id, call_id, _field(form, "arguments"))
        await state.agents.approve(run_id, user.principal, call_id=call_id, arguments=arguments)
    elif decision == "deny":
        reason = _field(form, "reason").strip()
        if len(reason) > MAX_REASON:
            raise InvalidRequestError(f"reason: at most {MAX_REASON:,} characters", param="reason")
        await state.agents.deny(run_id, user.principal, call_id=call_id, reason=reason or None)
    else:
        raise InvalidRequestError("decision: approve or deny", param="decision")
    return RedirectResponse(back if _BACK.fullmatch(back) else f"/runs/{run_id}", status_code=303)

