"""``/api/v1/knowledge-bases``: knowledge bases, their shares and documents, and search (how uploads are
read and checked is ``api.uploads``).

``{kb}`` is an id (``kb_...``) or a name; one the caller may not read is a 404, one they may read
but need more access for is a 403 (the service decides). A knowledge base that embeds with a
gateway model passes its uploads and searches through the gate (rate limits, budgets, usage), so
what the embeddings cost is the caller's; the local model costs nothing and needs no admission.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select

from ...accounts.principal import Principal
from ...bounds import MAX_INT64, Seq
from ...errors import InvalidRequestError, ThinktankError
from ...gateway.tokens import estimate_text_tokens
from ...knowledge.embeddings import LOCAL_MODEL
from ...knowledge.explain import Parts, score_parts
from ...knowledge.index import Filters
from ...knowledge.ingest import IngestResult, Progress, Source
from ...knowledge.ingestions import estimate_tokens
from ...knowledge.retrieval import Retrieved, SearchOptions
from ...store.tables import KbChunk
from .. import sse
from ..deps import PrincipalDep, StateDep, client_ip
from ..routing import StrictJSONRoute
from ..state import AppState
from ..uploads import MAX_FILE_BYTES, Item, Scalar, metadata_of, read_items, source_name
from .knowledge_jobs import ASYNC_HELP, submit_job, wants_job

if TYPE_CHECKING:
    from ...accounts.governance import Admission
    from ...knowledge.service import KbView
    from ...store.tables import KbDocument, KbShare, KnowledgeBase

__all__ = ["MAX_FILE_BYTES", "STATUSES", "SearchOneIn", "document_result", "router", "run_search", "source_name"]

router = APIRouter(prefix="/api/v1", tags=["knowledge"], route_class=StrictJSONRoute)
T = TypeVar("T")

STATUSES = ("added", "replaced", "unchanged", "duplicate", "failed")
_MAX_WEIGHT = 1000.0
"""Search weights are relative: a larger one only risks arithmetic that overflows."""


# -- inputs ----------------------------------------------------------------------------------------

class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class KbCreate(_In):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=2000)
    embedding_model: str | None = Field(default=None, description=f"Default {LOCAL_MODEL}; or a gateway model.")
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None


class ShareIn(_In):
    user: str | None = Field(default=None, description="A user's id or email.")
    team: str | None = Field(default=None, description="A team's id or name.")
    access: Literal["read", "write"] = "read"


class ReviewIn(_In):
    approve: bool


class FiltersIn(_In):
    document_ids: list[str] | None = Field(default=None, max_length=1000)
    kinds: list[str] | None = Field(default=None, max_length=20)
    source_prefix: str | None = Field(default=None, max_length=1024)
    pages: tuple[Seq, Seq] | None = Field(default=None, description="First and last page, inclusive.")

    @field_validator("pages")
    @classmethod
    def _pages(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not 1 <= v[0] <= v[1]:
            raise ValueError("pages is [first, last] with 1 <= first <= last")
        return v

    def filters(self) -> Filters:
        return Filters(document_ids=tuple(self.document_ids or ()), kinds=tuple(self.kinds or ()),
                       source_prefix=self.source_prefix or None, pages=self.pages)


class SearchOneIn(_In):
    query: str = Field(max_length=10_000)
    top_k: int = 8
    mode: Literal["hybrid", "keyword", "vector"] = "hybrid"
    fusion: Literal["score", "rrf"] = "score"
    keyword_weight: float | None = Field(default=None, ge=0, le=_MAX_WEIGHT)
    vector_weight: float | None = Field(default=None, ge=0, le=_MAX_WEIGHT)
    filters: FiltersIn | None = None
    explain: bool = Field(default=False, description="Give each result its keyword_score (its document's BM25) "
                          "and vector_score (the cosine of its chunk) beside the fused score.")

    def options(self) -> SearchOptions:
        defaults = SearchOptions()
        return SearchOptions(
            top_k=self.top_k, mode=self.mode, fusion=self.fusion,
            keyword_weight=defaults.keyword_weight if self.keyword_weight is None else self.keyword_weight,
            vector_weight=defaults.vector_weight if self.vector_weight is None else self.vector_weight,
            filters=self.filters.filters() if self.filters is not None else Filters(),
        )


class SearchIn(SearchOneIn):
    knowledge_bases: list[str] = Field(min_length=1, max_length=50)


# -- outputs ---------------------------------------------------------------------------------------

def _kb(view: KbView) -> dict[str, Any]:
    kb = view.kb
    return {
        "object": "knowledge_base", "id": kb.id, "name": kb.name, "description": kb.description,
        "owner_id": kb.owner_id, "access": view.access, "embedding_model": kb.embedding_model,
        "dimension": kb.dimension, "chunk_tokens": kb.chunk_tokens, "chunk_overlap": kb.chunk_overlap,
        "documents": view.documents, "chunks": view.chunks, "pending": view.pending,
        "created_at": kb.created_at, "updated_at": kb.updated_at,
    }


def _share(share: KbShare) -> dict[str, Any]:
    return {"object": "share", "id": share.id, "knowledge_base_id": share.kb_id, "user_id": share.user_id,
            "team_id": share.team_id, "access": share.access, "created_at": share.created_at}


def _document(doc: KbDocument) -> dict[str, Any]:
    return {
        "object": "document", "id": doc.id, "knowledge_base_id": doc.kb_id, "source": doc.source,
        "title": doc.title, "kind": doc.kind, "size_bytes": doc.size_bytes, "pages": doc.pages,
        "chunks": doc.chunk_count, "status": doc.status, "submitted_by": doc.submitted_by,
        "reviewed_by": doc.reviewed_by, "metadata": doc.metadata_ or {}, "warnings": doc.warnings or [],
        "content_hash": doc.content_hash, "created_at": doc.created_at, "updated_at": doc.updated_at,
    }


# -- knowledge bases -------------------------------------------------------------------------------

@router.post("/knowledge-bases", status_code=201)
async def create_kb(body: KbCreate, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """A knowledge base of the caller's. Its embedding model can be changed later with ``…/reembed``."""
    if body.embedding_model is not None and body.embedding_model != LOCAL_MODEL:
        state.catalog.permit(principal, body.embedding_model)
    view = await state.knowledge.create(
        principal, body.name, description=body.description, embedding_model=body.embedding_model,
        chunk_tokens=body.chunk_tokens, chunk_overlap=body.chunk_overlap,
    )
    return _kb(view)


@router.get("/knowledge-bases")
async def list_kbs(principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """The caller's own knowledge bases and those shared with them or their team."""
    return {"object": "list", "data": [_kb(v) for v in await state.knowledge.visible(principal)]}


@router.get("/knowledge-bases/{kb}")
async def get_kb(kb: str, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    return _kb(await state.knowledge.view(principal, kb))


@router.delete("/knowledge-bases/{kb}", status_code=204)
async def delete_kb(kb: str, principal: PrincipalDep, state: StateDep) -> Response:
    """Remove the knowledge base with its documents and shares (its owner or an admin)."""
    await state.knowledge.delete(principal, kb)
    return Response(status_code=204)


class ReembedIn(_In):
    embedding_model: str = Field(min_length=1, max_length=256)


@router.post("/knowledge-bases/{kb}/reembed")
async def reembed_kb(kb: str, body: ReembedIn, request: Request, principal: PrincipalDep,
                     state: StateDep) -> dict[str, Any]:
    """Embed every chunk again with another model and switch to it (owner or admin). Searches go on with
    the old vectors until the new ones are all written, in one transaction."""
    found, _ = await state.knowledge.get(principal, kb, "admin")
    state.embedders.check(body.embedding_model)  # an unknown model is a 400 before anything is admitted
    async with state.db.engine.connect() as conn:
        text_bytes = (await conn.execute(select(func.coalesce(func.sum(func.length(KbChunk.text)), 0))
                                         .where(KbChunk.kb_id == found.id))).scalar_one()
    admission = await _admit(state, principal, request, body.embedding_model, int(text_bytes) // 4 + 1)
    view = await _settled(state, admission, state.knowledge.reembed(principal, found.id, body.embedding_model,
                                                             admission.ctx if admission is not None else None))
    return _kb(view)


# -- shares ----------------------------------------------------------------------------------------

@router.post("/knowledge-bases/{kb}/shares", status_code=201)
async def share_kb(kb: str, body: ShareIn, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """Give a user or a team read or write access (sharing again changes it)."""
    return _share(await state.knowledge.share(principal, kb, body.access, user=body.user, team=body.team))


@router.get("/knowledge-bases/{kb}/shares")
async def list_shares(kb: str, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    return {"object": "list", "data": [_share(s) for s in await state.knowledge.shares(principal, kb)]}


@router.delete("/knowledge-bases/{kb}/shares/{share_id}", status_code=204)
async def unshare_kb(kb: str, share_id: Annotated[int, Path(ge=1, le=MAX_INT64)], principal: PrincipalDep,
                     state: StateDep) -> Response:
    await state.knowledge.unshare(principal, kb, share_id)
    return Response(status_code=204)


# -- documents -------------------------------------------------------------------------------------

async def _admit(
    state: AppState, principal: Principal, request: Request, model: str, tokens: int,
) -> Admission | None:
    """The gate's admission for work embedding with a gateway model; none for the local model."""
    if model == LOCAL_MODEL:
        return None
    state.catalog.permit(principal, model)
    return await state.gate.admit(principal, client_ip(request), model, tokens)


async def _settled(state: AppState, admission: Admission | None, work: Awaitable[T]) -> T:
    """``work``'s result, its admission (if any) recorded as 200, or with the error's status."""
    async with state.gate.recording(admission):
        return await work


def document_result(index: int, r: IngestResult, pending: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "object": "document_result", "index": index, "source": r.source, "status": r.status,
        "document_id": r.document_id, "chunks": r.chunks, "warnings": list(r.warnings),
    }
    if r.status in ("added", "replaced"):
        out["document_status"] = "pending" if pending else "approved"
    if r.status == "failed":
        out["error"] = {"message": r.error or "failed", "status": r.status_code or 422}
    elif r.error:
        out["detail"] = r.error
    return out


def _status(results: Sequence[IngestResult]) -> int:
    if any(r.status in ("added", "replaced") for r in results):
        return 201
    if any(r.status != "failed" for r in results):
        return 200
    codes = {r.status_code or 422 for r in results}
    return codes.pop() if len(codes) == 1 else 422


def _answer(kb: KnowledgeBase, results: Sequence[IngestResult], pending: bool) -> tuple[int, dict[str, Any]]:
    counts = {s: sum(1 for r in results if r.status == s) for s in STATUSES}
    body: dict[str, Any] = {
        "object": "list", "knowledge_base_id": kb.id,
        "data": [document_result(i, r, pending) for i, r in enumerate(results)],
        "counts": counts, "pending_review": pending and (counts["added"] + counts["replaced"]) > 0,
    }
    if body["pending_review"]:
        body["note"] = ("You have read access: your documents are contributions, searchable once an owner of "
                        f"'{kb.name}' approves them.")
    status = _status(results)
    if status >= 400:
        first = next(r for r in results if r.status == "failed")
        message = (first.error or "failed") if len(results) == 1 else f"None of the {len(results)} documents was added."
        body["error"] = {"message": message, "type": "invalid_request_error", "param": "files", "code": None}
    return status, body


def _merge(items: Sequence[Item], ingested: Sequence[IngestResult]) -> list[IngestResult]:
    """The results in the order of the inputs."""
    done = iter(ingested)
    return [item if isinstance(item, IngestResult) else next(done) for item in items]


@router.post("/knowledge-bases/{kb}/documents", responses={
    201: {"description": "Something was added or replaced: one result per input, in order"},
    200: {"description": "Every input was unchanged or a duplicate"},
})
async def add_documents(
    kb: str, request: Request, principal: PrincipalDep, state: StateDep,
    stream: Annotated[bool, Query(description="Answer with progress events and the results over SSE.")] = False,
    as_job: Annotated[bool, Query(alias="async", description=ASYNC_HELP)] = False,
) -> Response:
    """Add documents: ``multipart/form-data`` with ``files`` parts (and an optional ``metadata`` JSON
    object for all), or JSON ``{"documents": [{"name", "text", "content_type"?, "title"?, "metadata"?}]}``.
    Writers add them; a reader's documents wait for review. The same name again replaces a changed
    document and leaves an unchanged one alone."""
    found, access = await state.knowledge.get(principal, kb)  # 404 before the body is read
    asynchronous = wants_job(request, as_job, stream)
    return await _ingest(found, access, await read_items(request), request, principal, state, stream, asynchronous)


async def _ingest(
    found: KnowledgeBase, access: str, items: Sequence[Item], request: Request, principal: Principal,
    state: AppState, stream: bool, asynchronous: bool = False,
) -> Response:
    """Ingest what was read (or answer for what was refused already), as JSON or as SSE, or queue it as a job."""
    if asynchronous:
        return await submit_job(found, access, items, request, principal, state)
    sources = [i for i in items if isinstance(i, Source)]
    pending = access == "read"
    admission = None
    if sources:
        admission = await _admit(state, principal, request, found.embedding_model, estimate_tokens(sources))

    async def ingest(progress: Callable[[Progress], None] | None) -> list[IngestResult]:
        if not sources:
            return []
        return await state.knowledge.add(principal, found.id, sources, progress=progress,
                                         ctx=admission.ctx if admission is not None else None)

    if stream:
        return StreamingResponse(_stream(state, found, items, pending, ingest, admission), headers=sse.HEADERS)
    async with state.gate.recording(admission):
        ingested = await ingest(None)
        status, body = _answer(found, _merge(items, ingested), pending)
        if admission is not None:
            admission.status = status
    return JSONResponse(body, status)


class UrlsIn(_In):
    urls: list[Annotated[str, Field(min_length=1, max_length=2048)]] = Field(min_length=1, max_length=20)
    metadata: dict[str, Scalar] | None = None


@router.post("/knowledge-bases/{kb}/urls", responses={
    201: {"description": "Something was added or replaced: one result per URL, in order"},
})
async def add_urls(
    kb: str, body: UrlsIn, request: Request, principal: PrincipalDep, state: StateDep,
    stream: Annotated[bool, Query(description="Answer with progress events and the results over SSE.")] = False,
    as_job: Annotated[bool, Query(alias="async", description=ASYNC_HELP)] = False,
) -> Response:
    """Fetch public web pages or files and add them, each under its URL (fetching the same URL again
    replaces a changed document). URLs to loopback, private, link-local or metadata addresses, in any
    spelling, before or after a redirect, are refused (400); one that cannot be fetched fails alone."""
    found, access = await state.knowledge.get(principal, kb)
    asynchronous = wants_job(request, as_job, stream)
    metadata = metadata_of(body.metadata, "metadata")
    fetched = await asyncio.gather(*(state.url_fetcher.fetch(url) for url in body.urls), return_exceptions=True)
    items: list[Item] = []
    for url, got in zip(body.urls, fetched, strict=True):
        if isinstance(got, ThinktankError):
            items.append(IngestResult(url, "failed", error=got.message, status_code=got.status))
        elif isinstance(got, BaseException):
            raise got
        else:
            items.append(Source(name=got.name, data=got.data, content_type=got.content_type, title=got.title,
                                metadata={**(metadata or {}), **(got.metadata or {})}))
    return await _ingest(found, access, items, request, principal, state, stream, asynchronous)


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return sse.event(orjson.dumps({"type": kind, **data}), name=kind)


async def _stream(
    state: AppState, kb: KnowledgeBase, items: Sequence[Item], pending: bool,
    ingest: Callable[[Callable[[Progress], None] | None], Awaitable[list[IngestResult]]], admission: Admission | None,
) -> AsyncIterator[bytes]:
    """Progress events as the ingestion goes, then the results (with the status a plain request would have
    had), then ``[DONE]``. A client that goes away stops the ingestion; what was written stays whole."""
    queue: asyncio.Queue[Progress | None] = asyncio.Queue()
    refused = sum(1 for i in items if isinstance(i, IngestResult))

    async def run() -> list[IngestResult]:
        try:
            return await ingest(queue.put_nowait)
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run())
    if admission is not None:
        admission.stream, admission.status = True, 499  # until the end is sent
    async with state.gate.recording(admission):
        try:
            while (p := await queue.get()) is not None:
                yield _event("progress", {"done": p.done + refused, "total": p.total + refused, "chunks": p.chunks})
            try:
                ingested = await task
            except ThinktankError as exc:
                status = exc.status
                yield _event("error", exc.to_body())
            else:
                status, body = _answer(kb, _merge(items, ingested), pending)
                yield _event("result", {"status": status, **body})
            if admission is not None:
                admission.status = status
            yield sse.DONE
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


@router.get("/knowledge-bases/{kb}/documents")
async def list_documents(
    kb: str, principal: PrincipalDep, state: StateDep,
    status: Literal["approved", "pending", "rejected"] | None = None,
) -> dict[str, Any]:
    """The documents (a reader sees the approved ones and their own contributions)."""
    return {"object": "list", "data": [_document(d) for d in await state.knowledge.documents(principal, kb, status)]}


@router.delete("/knowledge-bases/{kb}/documents/{doc_id}", status_code=204)
async def delete_document(kb: str, doc_id: str, principal: PrincipalDep, state: StateDep) -> Response:
    await state.knowledge.delete_document(principal, kb, doc_id)
    return Response(status_code=204)


@router.post("/knowledge-bases/{kb}/documents/{doc_id}/review")
async def review_document(kb: str, doc_id: str, body: ReviewIn, principal: PrincipalDep,
                          state: StateDep) -> dict[str, Any]:
    """Approve a contribution (it becomes searchable) or reject it."""
    return _document(await state.knowledge.review(principal, kb, doc_id, body.approve))


# -- search ----------------------------------------------------------------------------------------

async def run_search(
    refs: Sequence[str], body: SearchOneIn, request: Request, principal: Principal, state: AppState,
) -> dict[str, Any]:
    """The search answer (the web's search playground shows it too): each knowledge base checked for
    the caller, the query's embedding admitted through the gate when a gateway model makes it."""
    if not body.query.strip():
        raise InvalidRequestError("The query is empty.", param="query")
    options = body.options()
    kbs: dict[str, KnowledgeBase] = {}
    for ref in refs:  # 404 on the first the caller may not read
        kb, _ = await state.knowledge.get(principal, ref)
        kbs.setdefault(kb.id, kb)
    models = {kb.embedding_model for kb in kbs.values()}
    admission = None
    if options.mode != "keyword" and len(models) == 1:
        tokens = estimate_text_tokens(body.query) * (2 if body.explain else 1)
        admission = await _admit(state, principal, request, models.pop(), tokens)
    ctx = admission.ctx if admission is not None else None

    async def work() -> tuple[list[Retrieved], dict[int, Parts]]:
        hits = await state.knowledge.search(principal, list(kbs), body.query, options, ctx=ctx)
        if not body.explain:
            return hits, {}
        return hits, await score_parts(state.knowledge, hits, body.query, options.mode,
                                       {k: kb.embedding_model for k, kb in kbs.items()}, ctx)

    hits, parts = await _settled(state, admission, work())
    data = []
    for rank, h in enumerate(hits, 1):
        item = {"object": "search_result", "rank": rank, "chunk_id": h.chunk_id, "document_id": h.document_id,
                "knowledge_base_id": h.kb_id, "knowledge_base": kbs[h.kb_id].name if h.kb_id in kbs else None,
                "source": h.source, "title": h.title, "page": h.page, "position": h.position, "context": h.context,
                "text": h.text, "score": h.score}
        if body.explain:
            part = parts.get(h.chunk_id)
            item["keyword_score"] = part.keyword if part is not None else None
            item["vector_score"] = part.vector if part is not None else None
        data.append(item)
    return {"object": "list", "query": body.query, "data": data}


@router.post("/knowledge-bases/search")
async def search_many(body: SearchIn, request: Request, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """Search several knowledge bases at once (they must embed with one model, unless mode is keyword)."""
    return await run_search(body.knowledge_bases, body, request, principal, state)


@router.post("/knowledge-bases/{kb}/search")
async def search_one(kb: str, body: SearchOneIn, request: Request, principal: PrincipalDep,
                     state: StateDep) -> dict[str, Any]:
    return await run_search([kb], body, request, principal, state)
