"""The Compare pages: models side by side (/compare), the blind arena's form (/arena), the leaderboard.

The side-by-side answers stream in the browser (``compare.js`` calls ``/v1/chat/completions`` once per
model); when one ends, the page swaps in the Markdown the server renders for it (``POST /compare/render``).
Ensemble and arena runs are started and shown by :mod:`.runs`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from ...api.deps import StateDep
from ...api.state import AppState
from ...catalog import ModelEntry
from ...errors import InvalidRequestError, ThinktankError
from ..session import UserPage, WebUser, check_form_csrf
from .common import pages

__all__ = ["MAX_MODELS", "MAX_RENDER_BYTES", "MIN_MODELS", "router"]

router = APIRouter()

MIN_MODELS = 2
MAX_MODELS = 6
MAX_RENDER_BYTES = 256 * 1024
"""The most text ``POST /compare/render`` turns into Markdown (a long answer is a few dozen KB)."""


async def chat_models(state: AppState, user: WebUser) -> list[ModelEntry]:
    """What the user may ask in a compare: every catalog name they may use that answers chat."""
    embedding = {m.name for m in state.router.config.models if m.mode == "embedding"}
    return [m for m in await state.catalog.models(user.principal) if m.id not in embedding]


async def ensembles(state: AppState, user: WebUser) -> list[ModelEntry]:
    """The ensembles the user may run (as ``ensemble/<name>``)."""
    return [m for m in await state.catalog.models(user.principal, knowledge_bases=False) if m.kind == "ensemble"]


@router.get("/compare")
async def compare_page(request: Request, user: UserPage, state: StateDep) -> Response:
    models = await chat_models(state, user)
    recent = await state.deliberation.list_runs(user.principal, kind="ensemble", status=None, limit=10, before=None,
                                                everyone=False)
    return pages(request).render(
        request, "compare/compare.html", user, title="Compare", models=models, min_models=MIN_MODELS,
        max_models=MAX_MODELS, ensembles=[m for m in models if m.kind == "ensemble"],
        recent=recent,
    )


async def _read_bounded(request: Request, limit: int) -> bytes:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise InvalidRequestError(f"The text is too long to render (at most {limit // 1024} KB).")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InvalidRequestError(f"The text is too long to render (at most {limit // 1024} KB).")
    return bytes(body)


@router.post("/compare/render")
async def render_answer(request: Request, user: UserPage) -> Response:
    """An answer that finished streaming, as the server's sanitised Markdown (an HTML fragment).

    The page's script posts the plain text with the session's CSRF header; nothing is stored."""
    check_form_csrf(request, user, request.headers.get("x-csrf-token"))
    raw = await _read_bounded(request, MAX_RENDER_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("The text must be UTF-8.") from None
    render = pages(request).markdown
    # Long Markdown takes a while in pure Python: in a thread, so the event loop (and every other request)
    # keeps going meanwhile.
    html = render(text) if len(raw) < 16_384 else await asyncio.to_thread(render, text)
    return HTMLResponse(f'<div class="md">{html}</div>')


@router.get("/arena")
async def arena_page(request: Request, user: UserPage, state: StateDep) -> Response:
    arena_ok = [e for e in await ensembles(state, user) if _members(state, e.id) >= MIN_MODELS]
    return pages(request).render(request, "compare/arena.html", user, title="Arena", ensembles=arena_ok)


def _members(state: AppState, model_id: str) -> int:
    cfg = state.deliberation.ensembles.get(model_id.removeprefix("ensemble/"))
    return len(cfg.members) if cfg is not None else 0


@router.get("/leaderboard")
async def leaderboard_page(
    request: Request, user: UserPage, state: StateDep,
    tag: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    from ..charts import interval_chart

    tag = (tag or "").strip() or None
    error = ""
    try:
        board = await state.deliberation.leaderboard(tag)
    except ThinktankError as exc:  # pragma: no cover - the service raises none today; shown if it ever does
        board, error = [], exc.message
    chart = interval_chart(
        [(str(r["model"]), float(r["rating"]), float(r["ci_low"]), float(r["ci_high"])) for r in board],
        title="Bradley–Terry rating with 95 % interval" + (f" (tag {tag})" if tag else ""),
    ) if board else None
    return pages(request).render(request, "compare/leaderboard.html", user, title="Leaderboard", board=board,
                                 chart=chart, tag=tag or "", error=error)


__all__ += ["chat_models", "ensembles"]
