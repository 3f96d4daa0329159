"""The Debate pages: start a debate and list yours (``/debate``), follow one (``/debate/{run_id}``).

A debate's page renders fully on the server from the stored run (or, while it runs, from its events);
the page's script follows ``/api/v1/runs/{id}/events`` and re-fetches the timeline fragment
(``/debate/{run_id}/timeline``) as rounds end, so Markdown, diffs and escaping stay on the server.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from pydantic import ValidationError

from ...api.credentials import CSRF_FIELD
from ...api.deps import StateDep
from ...api.routes.runs import DebateIn, start_run
from ...api.state import AppState
from ...bounds import MAX_UNIX_TIME
from ...errors import ConflictError, InvalidRequestError, NotFoundError, ThinktankError
from ..charts import line_chart
from ..session import UserPage, WebUser, check_form_csrf
from .common import pages
from .debate_model import Debate, build_debate, from_events

__all__ = ["router"]

router = APIRouter()

PAGE_SIZE = 20
_DOCUMENTS = ("plan.md", "tasks.md")


def _debates(state: AppState, user: WebUser) -> list[dict[str, Any]]:
    """The configured debates this user may run."""
    return [
        {"name": name, "description": cfg.description or "", "rounds": cfg.rounds, "plan": cfg.plan,
         "follow_up": cfg.follow_up, "experts": cfg.experts}
        for name, cfg in sorted(state.deliberation.debates.items())
        if state.catalog.allows(user.principal, f"debate/{name}")
    ]


async def _index(request: Request, user: WebUser, state: AppState, *, before: float | None = None,
                 error: str = "", form: Mapping[str, Any] | None = None, status: int = 200) -> Response:
    rows = await state.deliberation.list_runs(user.principal, kind="debate", status=None, limit=PAGE_SIZE + 1,
                                              before=before, everyone=False)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    debates = _debates(state, user)
    values = dict(form or {})
    if not form and debates:
        first = debates[0]
        values = {"debate": first["name"], "rounds": first["rounds"], "plan": True, "follow_up": first["follow_up"]}
    return pages(request).render(
        request, "debate/index.html", user, title="Debate", status=status, debates=debates, runs=rows,
        older=repr(rows[-1]["created_at"]) if more and rows else None, newer=before is not None, error=error,
        form=values,
    )


@router.get("/debate")
async def debate_index(
    request: Request, user: UserPage, state: StateDep,
    before: Annotated[float | None, Query(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False)] = None,
) -> Response:
    return await _index(request, user, state, before=before)


def _number(value: object, name: str) -> int | None:
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 3):
        raise InvalidRequestError(f"{name}: give a whole number.", param=name)
    return int(text)


@router.post("/debate")
async def start_debate(request: Request, user: UserPage, state: StateDep) -> Response:
    form = await request.form()
    check_form_csrf(request, user, form.get(CSRF_FIELD))
    values: dict[str, object] = {k: form.get(k) for k in ("debate", "question", "rounds", "experts")}
    values.update(plan=form.get("plan") is not None, follow_up=form.get("follow_up") is not None)
    try:
        name = str(values["debate"] or "")
        if not name:
            raise InvalidRequestError("Choose a debate.", param="debate")
        body = DebateIn(debate=name, question=str(values["question"] or ""), rounds=_number(values["rounds"], "rounds"),
                        experts=_number(values["experts"], "experts"), plan=bool(values["plan"]),
                        follow_up=bool(values["follow_up"]))
        run = await start_run("debate", name, body, request, user.principal, state)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        return await _index(request, user, state, error=str(err["msg"]), form=values, status=400)
    except ThinktankError as exc:
        if exc.status >= 500:
            raise
        response = await _index(request, user, state, error=exc.message, form=values, status=exc.status)
        response.headers.update(exc.headers())  # a 429's Retry-After
        return response
    return RedirectResponse(f"/debate/{run.id}", status_code=303)


async def _load(state: AppState, user: WebUser, run_id: str) -> Debate:
    """The debate, if this user may see it (another user's run, or a run that is not a debate: 404)."""
    record = await state.deliberation.get(run_id, user.principal)
    if record.get("kind") != "debate":
        raise NotFoundError(f"There is no debate '{run_id}'.")
    result: dict[str, Any] = record.get("result") or {}
    if record.get("status") == "completed" and not result.get("partial"):
        raw = result
    else:  # running, or stopped early: the events hold what the stored result may not (a round under way)
        events = state.deliberation.events(run_id, user.principal, 0, follow=False)
        raw = from_events([e async for e in events])
        raw.update({k: result[k] for k in ("stopped", "answer", "plan_error") if result.get(k)})
    return build_debate(record, raw, state.deliberation.library)


def _chart(debate: Debate) -> Markup | None:
    points = debate.agreement_points
    if not points:
        return None
    xs = [x for x, _ in points]
    return line_chart(
        {"agreement": points, "convergence threshold": [(min(xs), debate.threshold), (max(xs), debate.threshold)]},
        title="Agreement per round", x_labels=[(x, f"Round {int(x)}") for x in xs], height=200,
        y_format=lambda v: f"{v:.2f}" if math.isfinite(v) else "n/a",
    )


async def _timeline_context(state: AppState, user: WebUser, run_id: str) -> dict[str, Any]:
    debate = await _load(state, user, run_id)
    documents: dict[str, str] = {}
    if not debate.running:
        for name in _DOCUMENTS:
            if name in debate.documents:
                content = await state.deliberation.document(run_id, user.principal, name)
                if content is not None:
                    documents[name] = content
    return {"d": debate, "chart": _chart(debate), "documents": documents}


@router.get("/debate/{run_id}")
async def debate_page(run_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    context = await _timeline_context(state, user, run_id)
    return pages(request).render(request, "debate/run.html", user, title=f"Debate: {context['d'].question[:60]}",
                                 **context)


@router.get("/debate/{run_id}/timeline")
async def debate_timeline(run_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    """The page's timeline alone, for its script to swap in as the debate goes on."""
    context = await _timeline_context(state, user, run_id)
    html = pages(request).fragment("debate/_timeline.html", csrf=user.csrf, **context)
    return HTMLResponse(html, headers={"cache-control": "no-store"})


@router.post("/debate/{run_id}/cancel")
async def cancel_debate(run_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    """The Cancel button without script (the script calls the API's cancel)."""
    form = await request.form()
    check_form_csrf(request, user, form.get(CSRF_FIELD))
    await _load(state, user, run_id)  # 404 unless it is this user's debate
    with contextlib.suppress(ConflictError):  # it ended meanwhile: the page shows how
        await state.deliberation.cancel(run_id, user.principal)
    return RedirectResponse(f"/debate/{run_id}", status_code=303)
