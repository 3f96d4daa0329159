"""What the Evaluations pages ask of the evaluations service (:mod:`thinktank.evals.service`), in one place:
the user's datasets and evaluations, storing an uploaded dataset, starting an evaluation, reading one.

Each call is the one the API's own route makes, with the signed-in user as the principal, so the pages get the
same permissions, checks, admission and errors as ``/api/v1/eval/...``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import ValidationError

from ...api.deps import client_ip
from ...api.state import AppState
from ...errors import InvalidRequestError, ServiceUnavailableError
from ...evals.service import DatasetIn, EvalRequest, Evaluations
from ..session import WebUser
from .evals_form import Upload
from .forms import first_error

__all__ = ["cancel", "create_dataset", "get", "list_datasets", "list_runs", "rejudge", "start"]

DATASETS_LISTED = 200


def _service(state: AppState) -> Evaluations:
    if state.evals is None:
        raise ServiceUnavailableError("Evaluations are not available in this server.")
    return state.evals


async def list_runs(state: AppState, user: WebUser, *, limit: int) -> list[dict[str, Any]]:
    return await _service(state).evaluations(user.principal, limit=limit, before=None,
                                             status=None)


async def list_datasets(state: AppState, user: WebUser) -> list[dict[str, Any]]:
    return await _service(state).datasets(user.principal, limit=DATASETS_LISTED, before=None)


def _text(upload: Upload) -> str:
    try:
        return upload.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"The file {upload.filename!r} is not UTF-8 text (byte {exc.start + 1:,} is not "
                                  "UTF-8); save it as UTF-8 and upload it again.", param="file") from None


async def create_dataset(state: AppState, user: WebUser, name: str, upload: Upload) -> dict[str, Any]:
    """Store the file's valid items as a dataset of the user's; its bad lines come back as ``errors``."""
    try:
        body = DatasetIn(name=name, content=_text(upload), format=upload.format,
                         filename=upload.filename[:256])
    except ValidationError as exc:
        raise InvalidRequestError(first_error(exc), param="file") from None
    return await _service(state).add_dataset(user.principal, body)


async def start(request: Request, state: AppState, user: WebUser, *, dataset_id: str, candidates: list[str],
                judges: list[str], checks: list[Any], max_cost_usd: float | None, concurrency: int) -> str:
    """Start the evaluation (400 for a model the user may not use, before anything is spent); its run id."""
    try:
        body = EvalRequest(dataset_id=dataset_id, candidates=candidates, judges=judges, checks=checks,
                           max_cost_usd=max_cost_usd, concurrency=concurrency)
    except ValidationError as exc:
        raise InvalidRequestError(first_error(exc)) from None
    run = await _service(state).start(user.principal, body, client_ip(request))
    return str(run.id)


async def get(state: AppState, user: WebUser, run_id: str) -> dict[str, Any]:
    """The evaluation's run record (404 if it is not an evaluation the user may read)."""
    return await _service(state).get(user.principal, run_id)


async def rejudge(request: Request, state: AppState, user: WebUser, run_id: str, *, judges: list[str],
                  checks: list[Any], concurrency: int) -> str:
    """A new evaluation of the same items and candidates with other judges: the answers are reused (asked again
    of no candidate, paid again by nobody); its run id."""
    try:
        body = EvalRequest(rejudge_of=run_id, judges=judges, checks=checks, concurrency=concurrency)
    except ValidationError as exc:
        raise InvalidRequestError(first_error(exc)) from None
    run = await _service(state).start(user.principal, body, client_ip(request))
    return str(run.id)


async def cancel(state: AppState, user: WebUser, run_id: str) -> str:
    """Stop the evaluation (409 once it has ended); what it finished is its result."""
    return await _service(state).cancel(user.principal, run_id)
