"""A knowledge base read a page at a time, for the web pages: its documents in pages (keyset on the
source, so the thousandth page costs what the first does), one document with its passages, and
who its shares are for. The caller has been given the knowledge base and their access by
``KnowledgeService.get``; what a reader may see follows ``KnowledgeService.documents``: the approved
documents and their own contributions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, or_, select

from ..errors import NotFoundError
from ..store.db import Database
from ..store.tables import KbChunk, KbDocument, KbShare, KnowledgeBase, Team, User

__all__ = ["DocumentPage", "PassagePage", "document", "documents_page", "passages_page", "share_names"]


@dataclass(frozen=True, slots=True)
class DocumentPage:
    documents: list[KbDocument]
    next_after: str | None
    """The source to start the next page after, or None on the last page."""


@dataclass(frozen=True, slots=True)
class PassagePage:
    passages: list[KbChunk]
    page: int
    """From 0."""
    pages: int


def _visible(access: str, user_id: str) -> ColumnElement[bool] | None:
    if access == "admin":
        return None
    return or_(KbDocument.status == "approved", KbDocument.submitted_by == user_id)


async def documents_page(
    db: Database, kb: KnowledgeBase, access: str, user_id: str, *, status: str | None = None,
    after: str | None = None, limit: int = 50,
) -> DocumentPage:
    query = select(KbDocument).where(KbDocument.kb_id == kb.id)
    if status is not None:
        query = query.where(KbDocument.status == status)
    if (visible := _visible(access, user_id)) is not None:
        query = query.where(visible)
    if after:
        query = query.where(KbDocument.source > after)
    async with db.session() as s:
        found = list((await s.execute(query.order_by(KbDocument.source).limit(limit + 1))).scalars().all())
    more = len(found) > limit
    found = found[:limit]
    return DocumentPage(found, found[-1].source if more else None)


async def document(db: Database, kb: KnowledgeBase, access: str, user_id: str, doc_id: str) -> KbDocument:
    """One document the caller may see (404 otherwise, as for one that does not exist)."""
    query = select(KbDocument).where(KbDocument.id == doc_id, KbDocument.kb_id == kb.id)
    if (visible := _visible(access, user_id)) is not None:
        query = query.where(visible)
    async with db.session() as s:
        found = (await s.execute(query)).scalar_one_or_none()
    if found is None:
        raise NotFoundError(f"document '{doc_id}' not found", param="document")
    return found


async def passages_page(db: Database, doc: KbDocument, *, page: int = 0, chunk: int | None = None,
                        size: int = 100) -> PassagePage:
    """A page of the document's passages in their order: page ``page``, or the one holding ``chunk``."""
    async with db.engine.connect() as conn:
        if chunk is not None:
            position = (await conn.execute(select(KbChunk.position).where(
                KbChunk.id == chunk, KbChunk.document_id == doc.id))).scalar_one_or_none()
            if position is not None:
                page = position // size
        pages = max(1, -(-doc.chunk_count // size))
        page = min(max(page, 0), pages - 1)
    async with db.session() as s:
        rows = list((await s.execute(
            select(KbChunk).where(KbChunk.document_id == doc.id, KbChunk.position >= page * size,
                                  KbChunk.position < (page + 1) * size).order_by(KbChunk.position)
        )).scalars().all())
    return PassagePage(rows, page, pages)


async def share_names(db: Database, shares: Sequence[KbShare]) -> dict[str, str]:
    """The email of each user and the name of each team the shares are for, by id."""
    users = [s.user_id for s in shares if s.user_id]
    teams = [s.team_id for s in shares if s.team_id]
    names: dict[str, str] = {}
    async with db.engine.connect() as conn:
        if users:
            names.update({i: e for i, e in (await conn.execute(select(User.id, User.email).where(User.id.in_(users))))})
        if teams:
            names.update({i: n for i, n in (await conn.execute(select(Team.id, Team.name).where(Team.id.in_(teams))))})
    return names
