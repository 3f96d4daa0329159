"""What the Evaluations pages ask of the evaluation service (``thinktank.evals.service``), in one place:
the user's datasets and evaluations, storing an uploaded dataset, starting an evaluation, reading one.

Each call is the one the API's own route makes, with the signed-in user as the principal, so the pages get the
same permissions, checks and errors as ``/api/v1/eval/...``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from ...api.state import AppState
from ..session import WebUser
from .evals_form import Upload

__all__ = ["create_dataset", "get", "list_datasets", "list_runs", "start"]


def _service(state: AppState) -> Any:
    return getattr(state, "evals")  # noqa: B009 - wired by the evaluation service's branch


async def list_runs(state: AppState, user: WebUser, *, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await _service(state).list_runs(user.principal, limit=limit)
    return rows


async def list_datasets(state: AppState, user: WebUser) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await _service(state).list_datasets(user.principal)
    return rows


async def create_dataset(state: AppState, user: WebUser, name: str, upload: Upload) -> dict[str, Any]:
    created: dict[str, Any] = await _service(state).create_dataset(user.principal, name=name, data=upload.data,
                                                                   format=upload.format, filename=upload.filename)
    return created


async def start(request: Request, state: AppState, user: WebUser, *, dataset_id: str, candidates: list[str],
                judges: list[str], checks: list[Any], max_cost_usd: float | None, concurrency: int) -> str:
    run = await _service(state).start(user.principal, request=request, dataset_id=dataset_id, candidates=candidates,
                                      judges=judges, checks=checks, max_cost_usd=max_cost_usd,
                                      concurrency=concurrency)
    return str(run.id)


async def get(state: AppState, user: WebUser, run_id: str) -> dict[str, Any]:
    record: dict[str, Any] = await state.deliberation.get(run_id, user.principal)
    return record
