"""Ingestion as a job: ``POST /api/v1/knowledge-bases/{kb}/documents?async=true`` (or ``/urls``, or the header
``Prefer: respond-async``) stages the documents and answers 202 with the job; ``GET
/api/v1/knowledge-bases/{kb}/jobs/{job_id}`` says how far it got, with each document's result so far. A job is
its submitter's alone (404 for anyone else). See ``knowledge.ingestions``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ...accounts.principal import Principal
from ...errors import InvalidRequestError
from ...knowledge.embeddings import LOCAL_MODEL
from ..deps import PrincipalDep, StateDep
from ..routing import StrictJSONRoute
from ..state import AppState
from ..uploads import Item

if TYPE_CHECKING:
    from ...knowledge.ingestions import IngestionView
    from ...store.tables import KnowledgeBase

__all__ = ["ASYNC_HELP", "job_public", "router", "submit_job", "wants_job"]

router = APIRouter(prefix="/api/v1", tags=["knowledge"], route_class=StrictJSONRoute)

ASYNC_HELP = ("Queue the ingestion as a job and answer 202 at once with the job (its status at "
              "GET /api/v1/knowledge-bases/{kb}/jobs/{id}); the same as the header 'Prefer: respond-async'.")


def _prefers_async(request: Request) -> bool:
    prefer = request.headers.get("prefer", "")
    return any(p.split(";")[0].strip().lower() == "respond-async" for p in prefer.split(","))


def wants_job(request: Request, as_job: bool, stream: bool) -> bool:
    """Whether the client asked for a job (``?async=true`` or ``Prefer: respond-async``); 400 with ``stream``."""
    asynchronous = as_job or _prefers_async(request)
    if asynchronous and stream:
        raise InvalidRequestError("Choose stream=true (progress over SSE) or async=true (a job), not both.",
                                  param="async")
    return asynchronous


def job_public(view: IngestionView) -> dict[str, Any]:
    from .knowledge import STATUSES, document_result

    record = view.record
    done = [(i, r) for i, r in enumerate(view.results) if r is not None]
    counts = {s: sum(1 for _, r in done if r.status == s) for s in STATUSES}
    return {
        "object": "ingestion_job", "id": record.id, "knowledge_base_id": record.kb_id, "status": view.status,
        "total": record.total, "done": len(done), "counts": counts, "attempts": record.attempts,
        "error": view.error, "pending_review": record.pending,
        "created_at": record.created_at, "updated_at": record.updated_at, "finished_at": record.finished_at,
        "data": [document_result(i, r, record.pending) for i, r in done],
    }


def _location(record_kb: str, job_id: str) -> str:
    return f"/api/v1/knowledge-bases/{record_kb}/jobs/{job_id}"


async def submit_job(
    found: KnowledgeBase, access: str, items: Sequence[Item], request: Request, principal: Principal, state: AppState,
) -> Response:
    """Stage the documents and queue their ingestion: 202 with the job."""
    if found.embedding_model != LOCAL_MODEL:
        state.catalog.permit(principal, found.embedding_model)  # 404/403 now, not in the job
    view = await state.ingestions.submit(principal, found, access, items)
    headers = {"Location": _location(found.id, view.record.id)}
    if _prefers_async(request):
        headers["Preference-Applied"] = "respond-async"
    return JSONResponse(job_public(view), 202, headers=headers)


@router.get("/knowledge-bases/{kb}/jobs/{job_id}")
async def get_job(kb: str, job_id: str, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """An ingestion job of the caller's: ``status`` (queued, doing, succeeded, failed), ``done`` of ``total``,
    ``counts`` by outcome and, in ``data``, the result of each document ingested so far."""
    return job_public(await state.ingestions.view(principal, kb, job_id))
