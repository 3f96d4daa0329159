"""Ensemble, arena and agent runs in the browser: start one from a form, its page (rendered from the stored run, so
it works without JavaScript and on reload), the fragment the live page swaps in when the run ends, and votes.

Starting a run goes through the API's own start (the same catalog permission, model checks and admission);
reading one through ``Deliberation.get`` (another user's run is a 404; a blind arena is redacted until the
vote); votes through ``Deliberation.feedback``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ...api.deps import StateDep
from ...api.routes import runs as api_runs
from ...api.routes.runs import EnsembleIn
from ...errors import InvalidRequestError
from ..session import UserPage, WebUser, check_form_csrf
from . import agents
from .common import pages

__all__ = ["router", "run_view"]

router = APIRouter()

MAX_QUESTION = 32_000
MAX_TAGS = 10


def _tags(raw: str) -> list[str]:
    """``"a, b c"`` -> ``["a", "b", "c"]`` (each at most 64 characters, at most ten)."""
    tags = list(dict.fromkeys(t for t in raw.replace(",", " ").split() if t))
    if len(tags) > MAX_TAGS or any(len(t) > 64 for t in tags):
        raise InvalidRequestError(f"tags: at most {MAX_TAGS} tags of at most 64 characters.", param="tags")
    return tags


def _field(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


@router.post("/runs")
async def start_run(request: Request, user: UserPage, state: StateDep) -> Response:
    """The compare and arena pages' forms: run an ensemble (``arena=1``: blind), then show its page."""
    form = await request.form()
    check_form_csrf(request, user, form.get("csrf"))
    ensemble = _field(form, "ensemble").removeprefix("ensemble/")
    question = _field(form, "question")
    if not ensemble:
        raise InvalidRequestError("Choose an ensemble.", param="ensemble")
    if not question:
        raise InvalidRequestError("Write a question first.", param="question")
    if len(question) > MAX_QUESTION:
        raise InvalidRequestError(f"The question is too long (at most {MAX_QUESTION:,} characters).")
    arena = _field(form, "arena") == "1"
    body = EnsembleIn(ensemble=ensemble, question=question, tags=_tags(_field(form, "tags")), arena=arena)
    run = await api_runs.start_run("ensemble", ensemble, body, request, user.principal, state, arena=arena)
    return RedirectResponse(f"/runs/{run.id}", status_code=303)


def _label_map(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(a["label"]): a for a in result.get("answers") or []}


def run_view(record: dict[str, Any], user: WebUser) -> dict[str, Any]:
    """What the run's templates show, from the (redacted) record."""
    result: dict[str, Any] = record.get("result") or {}
    arena = bool((record.get("request") or {}).get("arena")) or bool(result.get("arena"))
    hidden = arena and not result.get("revealed")
    answers = list(result.get("answers") or [])
    failed = list(result.get("failed") or [])
    ranking: dict[str, Any] = result.get("ranking") or {}
    by_label = _label_map(result)
    scores: dict[str, Any] = ranking.get("scores") or {}
    rubric: dict[str, Any] = ranking.get("rubric_scores") or {}
    table = [
        {"rank": i + 1, "label": lb, "model": (by_label.get(lb) or {}).get("model"), "score": scores.get(lb),
         "rubric": rubric.get(lb)}
        for i, lb in enumerate(ranking.get("order") or [])
    ]
    owner = record.get("user_id") == user.id  # a finished run's stored record names its owner
    return {
        "run": record, "result": result, "arena": arena, "hidden": hidden, "answers": answers, "failed": failed,
        "ranking": ranking, "table": table, "synthesis": result.get("synthesis") or {},
        "answer": result.get("answer"), "running": record.get("status") == "running",
        "can_vote": owner and record.get("status") == "completed" and record.get("kind") == "ensemble",
        "winner": result.get("winner"),
    }


async def _record(state: StateDep, run_id: str, user: WebUser) -> dict[str, Any]:
    return await state.deliberation.get(run_id, user.principal)  # 404 unless the user may read it


@router.get("/runs/{run_id}")
async def run_page(request: Request, run_id: str, user: UserPage, state: StateDep) -> Response:
    record = await _record(state, run_id, user)
    if record.get("kind") == "debate":  # a debate has its own page (the timeline, the plan)
        return RedirectResponse(f"/debate/{run_id}", status_code=303)
    if record.get("kind") == "evaluation":  # its summary and matrix
        return RedirectResponse(f"/evals/{run_id}", status_code=303)
    if record.get("kind") == "agent":  # its steps, its answer, the approval card while it waits
        return agents.render_page(request, user, await agents.agent_context(state, user, record))
    view = run_view(record, user)
    title = "Arena" if view["arena"] else f"Run of {record.get('name') or 'an ensemble'}"
    return pages(request).render(request, "compare/run.html", user, title=title,
                                 voted=request.query_params.get("voted", "")[:8], **view)


@router.get("/runs/{run_id}/fragment")
async def run_fragment(request: Request, run_id: str, user: UserPage, state: StateDep) -> Response:
    """The run's body (answers, ranking, synthesis), for the live page to swap in when the run ends."""
    record = await _record(state, run_id, user)
    if record.get("kind") == "agent":
        return agents.render_body(request, user, await agents.agent_context(state, user, record))
    return HTMLResponse(pages(request).fragment("compare/_run_body.html", voted="", csrf=user.csrf,
                                                      **run_view(record, user)))


@router.post("/runs/{run_id}/vote")
async def vote(request: Request, run_id: str, user: UserPage, state: StateDep) -> Response:
    """Up/down on one answer (``answer``, ``vote``), or an arena's ``winner`` (A, B or tie)."""
    form = await request.form()
    check_form_csrf(request, user, form.get("csrf"))
    winner = _field(form, "winner") or None
    answer = _field(form, "answer") or None
    choice = _field(form, "vote") or None
    await state.deliberation.feedback(run_id, user.principal, answer=answer, vote=choice, winner=winner)
    voted = winner or f"{answer}-{choice}"
    return RedirectResponse(f"/runs/{run_id}?voted={voted}", status_code=303)
