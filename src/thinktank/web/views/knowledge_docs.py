"""A knowledge base's document view (its passages, each an anchor a citation links to), and the forms
of the knowledge base's page: delete a document, review a contribution, share and unshare. Access is
``KnowledgeService``'s: a knowledge base the user may not read is a 404, too little access a 403."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from ...bounds import MAX_INT64
from ...errors import InvalidRequestError, ThinktankError
from ...knowledge.browse import document, passages_page
from ..session import UserPage, WebUser
from .common import pages
from .forms import checked_form

__all__ = ["document_url", "router"]

router = APIRouter()


def document_url(kb_id: str, doc_id: str, chunk_id: int | None = None) -> str:
    """Where a passage is shown: its document's page, at the passage (``#chunk-<id>``)."""
    base = f"/knowledge/{kb_id}/documents/{doc_id}"
    return base if chunk_id is None else f"{base}?chunk={chunk_id}#chunk-{chunk_id}"


PASSAGES_PER_PAGE = 100


@router.get("/knowledge/{kb}/documents/{doc_id}")
async def document_page(kb: str, doc_id: str, request: Request, user: UserPage,
                        page: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                        chunk: Annotated[int | None, Query(ge=1, le=MAX_INT64)] = None,
                        at: Annotated[int | None, Query(ge=0, le=MAX_INT64,
                                                        description="A passage's position (a citation's)")] = None,
                        ) -> Response:
    state = request.app.state.thinktank
    found, access = await state.knowledge.get(user.principal, kb)
    doc = await document(state.db, found, access, user.id, doc_id)
    if chunk is None and at is not None:
        page = at // PASSAGES_PER_PAGE
    passages = await passages_page(state.db, doc, page=page, chunk=chunk, size=PASSAGES_PER_PAGE)
    can_delete = access in ("write", "admin") or doc.submitted_by == user.id
    return pages(request).render(request, "knowledge/document.html", user, title=doc.title or doc.source,
                                 kb=found, access=access, doc=doc, passages=passages, chunk=chunk, at=at,
                                 can_delete=can_delete)


async def _form(request: Request, user: WebUser) -> dict[str, str]:
    return {k: v.strip() for k, v in (await checked_form(request, user)).items()}


@router.post("/knowledge/{kb}/documents/{doc_id}/delete")
async def delete_document(kb: str, doc_id: str, request: Request, user: UserPage) -> Response:
    await _form(request, user)
    await request.app.state.thinktank.knowledge.delete_document(user.principal, kb, doc_id)
    return RedirectResponse(f"/knowledge/{kb}", status_code=303)


@router.post("/knowledge/{kb}/documents/{doc_id}/review")
async def review_document(kb: str, doc_id: str, request: Request, user: UserPage) -> Response:
    form = await _form(request, user)
    approve = form.get("decision") == "approve"
    await request.app.state.thinktank.knowledge.review(user.principal, kb, doc_id, approve)
    return RedirectResponse(f"/knowledge/{kb}#review", status_code=303)


@router.post("/knowledge/{kb}/shares")
async def share(kb: str, request: Request, user: UserPage) -> Response:
    from .knowledge import kb_page

    form = await _form(request, user)
    knowledge = request.app.state.thinktank.knowledge
    found, _ = await knowledge.get(user.principal, kb, "admin")  # 404 / 403 as pages, not as the form's error
    who, kind, access = form.get("who", ""), form.get("kind", "user"), form.get("access", "read")
    try:
        if not who:
            raise InvalidRequestError("Name a user (email or id) or a team (name or id).")
        await knowledge.share(user.principal, found.id, access, user=who if kind != "team" else None,
                              team=who if kind == "team" else None)
    except ThinktankError as exc:
        return await kb_page(request, user, found.id, status=exc.status, error=exc.message)
    return RedirectResponse(f"/knowledge/{found.id}#sharing", status_code=303)


@router.post("/knowledge/{kb}/shares/{share_id}/delete")
async def unshare(kb: str, share_id: Annotated[int, Path(ge=1, le=MAX_INT64)], request: Request,
                  user: UserPage) -> Response:
    await _form(request, user)
    await request.app.state.thinktank.knowledge.unshare(user.principal, kb, share_id)
    return RedirectResponse(f"/knowledge/{kb}#sharing", status_code=303)
