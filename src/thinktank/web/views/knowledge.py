"""The Knowledge pages: the user's knowledge bases (create, delete) and one knowledge base's page (its
documents a page at a time, the upload area the page's script drives, the search playground, and
for its owner the shares and the contributions waiting for review). The document view, shares and
reviews are in ``knowledge_docs``. Every lookup goes through ``KnowledgeService.get``: a knowledge
base the user may not read is a 404 on every page and form."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from ...api.routes.knowledge import SearchOneIn, run_search
from ...errors import ThinktankError
from ...knowledge.browse import documents_page, share_names
from ..session import UserPage, WebUser, check_form_csrf
from .common import pages
from .knowledge_docs import router as docs_router

__all__ = ["kb_page", "router"]

router = APIRouter()
router.include_router(docs_router)

_MODES = ("hybrid", "keyword", "vector")


def _text(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


async def _list_page(request: Request, user: WebUser, *, status: int = 200, error: str | None = None,
                     name: str = "", description: str = "") -> Response:
    state = request.app.state.thinktank
    views = await state.knowledge.visible(user.principal)
    return pages(request).render(request, "knowledge/list.html", user, status=status, title="Knowledge",
                                 kbs=views, error=error, kb_name=name, description=description)


@router.get("/knowledge")
async def knowledge_list(request: Request, user: UserPage) -> Response:
    return await _list_page(request, user)


@router.post("/knowledge")
async def create_kb(request: Request, user: UserPage) -> Response:
    form = await request.form()
    check_form_csrf(request, user, form.get("csrf"))
    name, description = _text(form, "name"), _text(form, "description")
    try:
        view = await request.app.state.thinktank.knowledge.create(user.principal, name, description=description)
    except ThinktankError as exc:
        return await _list_page(request, user, status=exc.status, error=exc.message, name=name,
                                description=description)
    return RedirectResponse(f"/knowledge/{view.kb.id}", status_code=303)


@router.post("/knowledge/{kb}/delete")
async def delete_kb(kb: str, request: Request, user: UserPage) -> Response:
    form = await request.form()
    check_form_csrf(request, user, form.get("csrf"))
    await request.app.state.thinktank.knowledge.delete(user.principal, kb)
    return RedirectResponse("/knowledge", status_code=303)


async def _search(request: Request, user: WebUser, kb_id: str, q: str, mode: str) -> tuple[Any, str | None]:
    try:
        body = SearchOneIn(query=q, mode=mode if mode in _MODES else "hybrid", top_k=10, explain=True)
        return await run_search([kb_id], body, request, user.principal, request.app.state.thinktank), None
    except ValidationError as exc:
        return None, str(exc.errors()[0].get("msg"))
    except ThinktankError as exc:
        return None, exc.message


async def kb_page(request: Request, user: WebUser, kb: str, *, status: int = 200, error: str | None = None,
                  after: str | None = None, q: str = "", mode: str = "hybrid") -> Response:
    """A knowledge base's page (also shown again, with ``error``, when one of its forms fails)."""
    state = request.app.state.thinktank
    view = await state.knowledge.view(user.principal, kb)
    found, access = view.kb, view.access
    docs = await documents_page(state.db, found, access, user.id, after=after or None)
    shares, names, pending = [], {}, None
    if access == "admin":
        shares = await state.knowledge.shares(user.principal, found.id)
        names = await share_names(state.db, shares)
        pending = await documents_page(state.db, found, access, user.id, status="pending")
    results, search_error = (await _search(request, user, found.id, q, mode)) if q.strip() else (None, None)
    return pages(request).render(
        request, "knowledge/kb.html", user, status=status, title=found.name, view=view, kb=found, access=access,
        can_write=access in ("write", "admin"), docs=docs, after=after, shares=shares, names=names, pending=pending,
        q=q, mode=mode if mode in _MODES else "hybrid", modes=_MODES, results=results, search_error=search_error,
        error=error,
    )


@router.get("/knowledge/{kb}")
async def knowledge_base(kb: str, request: Request, user: UserPage, after: str = "", q: str = "",
                         mode: str = "hybrid") -> Response:
    return await kb_page(request, user, kb, after=after[:1024], q=q, mode=mode)
