"""The Evaluations pages: your evaluations and the form that starts one (``/evals``), one evaluation with its
live progress, summary table and matrix of items by candidates (``/evals/{run_id}``).

A dataset file is stored through the evaluation service (its bad lines reported with their numbers, the rest
kept); an evaluation is started through the API's own start (the same catalog permissions, model checks and
admission). The page of a running evaluation follows its events in the browser (``evals.js``) and swaps in the
body the server renders (``/evals/{run_id}/fragment``), so every user's and model's text is escaped here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ...api.credentials import CSRF_FIELD
from ...api.deps import StateDep
from ...api.state import AppState
from ...errors import ConflictError, InvalidRequestError, NotFoundError, ThinktankError
from ..charts import interval_chart
from ..session import UserPage, WebUser, check_form_csrf
from . import evals_api
from .common import pages
from .compare import chat_models
from .evals_form import MAX_CANDIDATES, MAX_DATASET_BYTES, MAX_JUDGES, EvalForm, read_form
from .evals_model import Evaluation, ItemRow, build_evaluation, interval, percent

__all__ = ["router"]

router = APIRouter()

PAGE_SIZE = 50
MAX_LINE_ERRORS = 50
"""The most bad dataset lines the page lists (the count says how many more)."""


def ms(value: float | None) -> str:
    """A latency: ``850 ms``, ``2.4 s``; None -> ``—``."""
    if value is None:
        return "—"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.1f} s"


async def _index(request: Request, user: WebUser, state: AppState, *, form: EvalForm | None = None,
                 error: str = "", uploaded: dict[str, Any] | None = None, status: int = 200) -> Response:
    runs = await evals_api.list_runs(state, user, limit=PAGE_SIZE)
    datasets = await evals_api.list_datasets(state, user)
    values = (form or EvalForm()).values()
    if uploaded is not None:
        errors = list(uploaded.get("errors") or [])
        uploaded = {**uploaded, "errors": errors[:MAX_LINE_ERRORS],
                    "more_errors": max(0, len(errors) - MAX_LINE_ERRORS)}
    return pages(request).render(
        request, "evals/index.html", user, title="Evaluations", status=status, runs=runs, datasets=datasets,
        models=await chat_models(state, user), form=values, error=error, uploaded=uploaded,
        max_candidates=MAX_CANDIDATES, max_judges=MAX_JUDGES, max_bytes=MAX_DATASET_BYTES,
    )


@router.get("/evals")
async def evals_index(request: Request, user: UserPage, state: StateDep) -> Response:
    return await _index(request, user, state)


@router.post("/evals")
async def start_evaluation(request: Request, user: UserPage, state: StateDep) -> Response:
    """The start form: store an uploaded dataset (with bad lines, show them and stop there, the dataset chosen
    for the next submit), then start the evaluation and show its page."""
    form = await read_form(request, user)
    uploaded: dict[str, Any] | None = None
    try:
        form.check_choices()
        checks = form.parsed_checks()
        max_cost = form.cost_limit()
        concurrency = form.concurrency_value()
        if form.upload is not None:
            uploaded = await evals_api.create_dataset(state, user, form.name or form.upload.name, form.upload)
            form.dataset_id = str(uploaded["id"])
            form.name = ""
            if uploaded.get("errors"):  # the rest is stored: the user sees what was left out before spending
                return await _index(request, user, state, form=form, uploaded=uploaded)
        run_id = await evals_api.start(request, state, user, dataset_id=form.dataset_id, candidates=form.candidates,
                                       judges=form.judges, checks=checks, max_cost_usd=max_cost,
                                       concurrency=concurrency)
    except ThinktankError as exc:
        if exc.status >= 500:
            raise
        response = await _index(request, user, state, form=form, error=exc.message, uploaded=uploaded,
                                status=exc.status)
        response.headers.update(exc.headers())  # a 429's Retry-After
        return response
    return RedirectResponse(f"/evals/{run_id}", status_code=303)


async def _record(state: AppState, user: WebUser, run_id: str) -> dict[str, Any]:
    """The evaluation's record, if it is this user's (anyone else's, or a run that is not an evaluation: 404;
    an admin, who may read every run through the API, sees only their own here too)."""
    record = await evals_api.get(state, user, run_id)
    if record.get("kind") != "evaluation" or record.get("user_id") != user.id:
        raise NotFoundError(f"There is no evaluation '{run_id}'.")
    return record


async def _load(state: AppState, user: WebUser, run_id: str) -> Evaluation:
    return build_evaluation(await _record(state, user, run_id))


async def _context(state: AppState, user: WebUser, e: Evaluation, tag: str = "", disagreements: bool = False,
                   *, rejudge_error: str = "", rejudge_judges: Sequence[str] = ()) -> dict[str, Any]:
    tag = tag if tag in e.tags else ""

    def visible(row: ItemRow) -> bool:
        return (not tag or tag in row.tags) and (not disagreements or row.disagreement)

    rates = [(c.name, c.win_rate, *c.win_ci) for c in e.candidates_summary
             if c.win_rate is not None and c.win_ci is not None]
    chart = interval_chart([(str(n), float(w) * 100, lo * 100, hi * 100) for n, w, lo, hi in rates],
                           title="Win rate with 95 % interval (%)") if rates else None
    models = [] if e.running else await chat_models(state, user)  # to judge again with
    return {"e": e, "chart": chart, "filter_tag": tag, "filter_disagreements": disagreements, "visible": visible,
            "shown": sum(1 for r in e.rows if visible(r)), "done": e.done_items, "pct": percent, "ci": interval,
            "ms": ms, "models": models, "max_judges": MAX_JUDGES, "rejudge_error": rejudge_error,
            "rejudge_judges": list(rejudge_judges)}


Tag = Annotated[str, Query(max_length=200)]


@router.get("/evals/{run_id}")
async def evaluation_page(run_id: str, request: Request, user: UserPage, state: StateDep, tag: Tag = "",
                          disagreements: Annotated[str, Query(max_length=8)] = "") -> Response:
    e = await _load(state, user, run_id)
    return pages(request).render(request, "evals/run.html", user, title=f"Evaluation {e.name}".strip(),
                                 **await _context(state, user, e, tag, disagreements == "1"))


@router.get("/evals/{run_id}/fragment")
async def evaluation_fragment(run_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    """The page's body alone, for its script to swap in as the evaluation goes on and when it ends."""
    e = await _load(state, user, run_id)
    html = pages(request).fragment("evals/_body.html", csrf=user.csrf, **await _context(state, user, e))
    return HTMLResponse(html, headers={"cache-control": "no-store"})


@router.post("/evals/{run_id}/cancel")
async def cancel_evaluation(run_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    """The Cancel button without script (the script calls the API's cancel)."""
    form = await request.form()
    check_form_csrf(request, user, form.get(CSRF_FIELD))
    await _load(state, user, run_id)  # 404 unless it is this user's evaluation
    with contextlib.suppress(ConflictError):  # it ended meanwhile: the page shows how
        await evals_api.cancel(state, user, run_id)
    return RedirectResponse(f"/evals/{run_id}", status_code=303)


@router.post("/evals/{run_id}/rejudge")
async def rejudge_evaluation(run_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    """Judge a finished evaluation again with other judges (its checks too): a new evaluation reusing its answers."""
    async with request.form(max_files=0, max_fields=200, max_part_size=4096) as form:
        check_form_csrf(request, user, form.get(CSRF_FIELD))
        judges = list(dict.fromkeys(j.strip() for j in form.getlist("judge") if isinstance(j, str) and j.strip()))
    record = await _record(state, user, run_id)
    raw = record.get("config")
    config: dict[str, Any] = raw if isinstance(raw, dict) else {}
    concurrency = config.get("concurrency")
    try:
        if not judges:
            raise InvalidRequestError("Choose at least one judge.", param="judge")
        if len(judges) > MAX_JUDGES:
            raise InvalidRequestError(f"Choose at most {MAX_JUDGES} judges (you chose {len(judges)}).", param="judge")
        new_id = await evals_api.rejudge(request, state, user, run_id, judges=judges,
                                         checks=list(config.get("checks") or []),
                                         concurrency=concurrency if isinstance(concurrency, int) else 4)
    except ThinktankError as exc:
        if exc.status >= 500:
            raise
        e = build_evaluation(record)
        response = pages(request).render(
            request, "evals/run.html", user, title=f"Evaluation {e.name}".strip(), status=exc.status,
            **await _context(state, user, e, rejudge_error=exc.message, rejudge_judges=judges))
        response.headers.update(exc.headers())
        return response
    return RedirectResponse(f"/evals/{new_id}", status_code=303)
