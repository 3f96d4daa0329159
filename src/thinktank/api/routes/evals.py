"""Evaluations: ``/api/v1/eval/datasets`` (a user's datasets) and ``/api/v1/eval/runs`` (evaluations: runs of
kind ``evaluation``; their events at ``/api/v1/runs/{id}/events`` like every run's). Everything is its owner's:
someone else's dataset or evaluation is a 404."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from ...bounds import MAX_UNIX_TIME
from ...errors import ConflictError, ServiceUnavailableError
from ...evals.export import to_csv, to_markdown
from ...evals.service import DatasetIn, EvalRequest, Evaluations
from .. import sse
from ..deps import PrincipalDep, StateDep, client_ip
from ..routing import StrictJSONRoute
from ..state import AppState
from .runs import sse_events

router = APIRouter(prefix="/api/v1/eval", tags=["evaluations"], route_class=StrictJSONRoute)

_Before = Annotated[float | None, Query(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False,
                                        description="Only those created before this Unix time")]
_Limit = Annotated[int, Query(ge=1, le=500)]
_Status = Literal["running", "completed", "failed", "cancelled", "budget_exceeded"]


def _evals(state: AppState) -> Evaluations:
    if state.evals is None:
        raise ServiceUnavailableError("Evaluations are not available in this server.")
    return state.evals


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json", headers=headers)


# -- datasets --------------------------------------------------------------------------------------
@router.post("/datasets", status_code=201)
async def add_dataset(body: DatasetIn, principal: PrincipalDep, state: StateDep) -> Response:
    """Store a dataset (items as JSON, or a JSONL or CSV file's text): the lines left out are listed in
    ``errors`` with their numbers; 400 when no line is valid."""
    return _json(await _evals(state).add_dataset(principal, body), 201)


@router.get("/datasets")
async def datasets(principal: PrincipalDep, state: StateDep, limit: _Limit = 100,
                   before: _Before = None) -> dict[str, Any]:
    return {"data": await _evals(state).datasets(principal, limit=limit, before=before)}


@router.get("/datasets/{dataset_id}")
async def dataset(dataset_id: str, principal: PrincipalDep, state: StateDep) -> Response:
    """The dataset with its items (``data``)."""
    return _json(await _evals(state).dataset(principal, dataset_id))


@router.delete("/datasets/{dataset_id}", status_code=204)
async def delete_dataset(dataset_id: str, principal: PrincipalDep, state: StateDep) -> Response:
    await _evals(state).delete_dataset(principal, dataset_id)
    return Response(status_code=204)


# -- evaluations -----------------------------------------------------------------------------------
@router.post("/runs", status_code=202, responses={
    200: {"description": "The finished record (wait=true), or the run's events over SSE (stream=true)"}})
async def start(body: EvalRequest, request: Request, principal: PrincipalDep, state: StateDep) -> Response:
    """Evaluate candidates on a dataset: every candidate answers every item, the answers are checked and judged
    pair by pair. Every candidate and judge is checked first (400: nothing is spent)."""
    evals = _evals(state)
    run = await evals.start(principal, body, client_ip(request))
    headers = {"x-thinktank-run-id": run.id}
    if body.stream:
        return StreamingResponse(sse_events(run.follow(0)), headers={**headers, **sse.HEADERS})
    if body.wait:
        await state.deliberation.wait(run)
        return _json(await evals.get(principal, run.id), 200, headers)
    errors = run.request.get("item_errors") or []
    return _json({"id": run.id, "status": run.status, **({"errors": errors} if errors else {})}, 202,
                 {**headers, "Location": f"/api/v1/eval/runs/{run.id}"})


@router.get("/runs")
async def evaluations(principal: PrincipalDep, state: StateDep, limit: _Limit = 50, before: _Before = None,
                      status: _Status | None = None) -> dict[str, Any]:
    """The caller's evaluations, newest first."""
    return {"data": await _evals(state).evaluations(principal, limit=limit, before=before, status=status)}


@router.get("/runs/{run_id}")
async def evaluation(run_id: str, principal: PrincipalDep, state: StateDep,
                     calls: Annotated[bool, Query(description="With every model call (prompts too)")] = True
                     ) -> Response:
    """The evaluation's run record; its ``result`` is ``{"summary", "items"}`` (partial while it runs, or after a
    budget or a cancel stopped it)."""
    record = await _evals(state).get(principal, run_id)
    if not calls:
        record.pop("calls", None)
    return _json(record)


@router.post("/runs/{run_id}/cancel", status_code=202)
async def cancel(run_id: str, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """Stop the evaluation; the items finished so far are its result. 409 if it has already ended."""
    return {"id": run_id, "status": await _evals(state).cancel(principal, run_id)}


@router.get("/runs/{run_id}/export")
async def export(run_id: str, principal: PrincipalDep, state: StateDep,
                 format: Literal["json", "csv", "markdown"] = "json") -> Response:
    """The result as JSON, CSV (a row per item and candidate) or Markdown (the summary table and the pairs)."""
    record = await _evals(state).get(principal, run_id)
    result = record.get("result")
    if not result:
        raise ConflictError(f"The evaluation has no result yet ({record['status']}).")
    name = f"evaluation-{run_id}"
    if format == "csv":
        return Response(to_csv(result).encode(), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="{name}.csv"'})
    if format == "markdown":
        return Response(to_markdown(result, title=record["name"]).encode(), media_type="text/markdown; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="{name}.md"'})
    return _json(result, headers={"content-disposition": f'attachment; filename="{name}.json"'})
