"""Conversations: ``/api/v1/threads`` (threads, their messages, export and import) and
``/api/v1/personas``. Every thread and persona is its owner's; anyone else gets a 404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ...bounds import MAX_INT32, MAX_UNIX_TIME, OutputTokens
from ...conversations.exports import ThreadImport, export_json, export_markdown, import_thread
from ...conversations.personas import persona_public
from ...conversations.service import TurnEvent, TurnOptions
from ...conversations.threads import message_public, summary_public, thread_public
from ...errors import InvalidRequestError
from .. import sse
from ..deps import PrincipalDep, ResumeDep, StateDep, client_ip
from ..routing import StrictJSONRoute

router = APIRouter(prefix="/api/v1", tags=["threads"], route_class=StrictJSONRoute)



class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ThreadIn(_In):
    model: str = Field(min_length=1, max_length=256, description="The model that answers in this thread.")
    title: str = Field(default="", description="At most 200 characters; by default the first message's start.")
    persona_id: str | None = None
    knowledge_bases: list[str] = Field(default_factory=list, description="Knowledge bases (ids or names) "
                                       "the replies are grounded in, with citations.")


class ThreadPatch(_In):
    title: str | None = None
    archived: bool | None = None
    model: str | None = Field(default=None, min_length=1, max_length=256)
    persona_id: str | None = Field(default=None, description="null removes the persona.")
    knowledge_bases: list[str] | None = None


class MessageIn(_In):
    content: str = Field(description="The user's message.")
    stream: bool = Field(default=False, description="Answer over SSE: delta events, then the stored message.")
    model: str | None = Field(default=None, min_length=1, max_length=256, description="This turn only.")
    max_tokens: OutputTokens | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    replaces: str | None = Field(default=None, max_length=64, description=(
        "The id of a user message of this thread: it and every message after it are replaced by this turn "
        "(edit a message and answer again; regenerate the last answer by sending its question again)."))


class PersonaIn(_In):
    name: str
    description: str = ""
    system_prompt: str | None = Field(default=None, description="The persona written inline, or ...")
    knowledge_base: str | None = Field(default=None, description="... a knowledge base you can read, with")
    document_id: str | None = Field(default=None, description="the document that describes the persona.")


class PersonaPatch(_In):
    name: str | None = None
    description: str | None = None
    system_prompt: str | None = None
    knowledge_base: str | None = None
    document_id: str | None = None


# -- threads --------------------------------------------------------------------------------------


@router.post("/threads", status_code=201)
async def create_thread(body: ThreadIn, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    thread = await state.conversations.threads.create(
        principal, model=body.model, title=body.title, persona_id=body.persona_id,
        knowledge_bases=body.knowledge_bases)
    return thread_public(thread, messages=0, cost_usd=0.0)


@router.get("/threads")
async def list_threads(
    principal: PrincipalDep, state: StateDep,
    archived: Annotated[str, Query(description="false (default), true or all")] = "false",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[float | None, Query(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False,
                                          description="Threads last active before this Unix time")] = None,
    q: Annotated[str | None, Query(max_length=200, description="Only threads whose title holds this")] = None,
) -> dict[str, Any]:
    which = {"false": False, "true": True, "all": None}
    if archived not in which:
        raise InvalidRequestError("archived: false, true or all", param="archived")
    threads = state.conversations.threads
    return {"data": await threads.list_threads(principal, archived=which[archived], limit=limit, before=before,
                                                 search=q)}


@router.post("/threads/import", status_code=201)
async def import_(body: ThreadImport, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """A thread from ``GET /api/v1/threads/{id}/export?format=json`` (new ids; all or nothing)."""
    thread, warnings = await import_thread(state.conversations.threads, principal, body)
    return {"thread": thread_public(thread, messages=len(body.messages),
                                    cost_usd=sum(m.cost_usd for m in body.messages)), "warnings": warnings}


@router.get("/threads/{thread_id}")
async def get_thread(thread_id: str, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """The thread, its current rolling summary, and its messages count and cost."""
    threads = state.conversations.threads
    thread = await threads.get(principal, thread_id)
    messages = await threads.messages_of(thread.id)
    summary = await threads.latest_summary(thread.id)
    out = thread_public(thread, messages=len(messages), cost_usd=sum(m.cost_usd for m in messages))
    out["summary"] = summary_public(summary) if summary is not None else None
    return out


@router.patch("/threads/{thread_id}")
async def update_thread(thread_id: str, body: ThreadPatch, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """Rename, archive or unarchive, change the model, persona or knowledge bases."""
    extra: dict[str, Any] = {}
    if "persona_id" in body.model_fields_set:
        extra["persona_id"] = body.persona_id
    thread = await state.conversations.threads.update(
        principal, thread_id, title=body.title, archived=body.archived, model=body.model,
        knowledge_bases=body.knowledge_bases, **extra)
    return thread_public(thread)


@router.delete("/threads/{thread_id}", status_code=204)
async def delete_thread(thread_id: str, principal: PrincipalDep, state: StateDep) -> Response:
    await state.conversations.threads.delete(principal, thread_id)
    return Response(status_code=204)


@router.get("/threads/{thread_id}/messages")
async def list_messages(
    thread_id: str, principal: PrincipalDep, state: StateDep,
    after: Annotated[int, Query(ge=0, le=MAX_INT32, description="Messages after this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    rows = await state.conversations.threads.messages(principal, thread_id, after=after, limit=limit)
    return {"data": [message_public(m) for m in rows]}


@router.post("/threads/{thread_id}/messages",
             responses={200: {"description": "The stored turn (or, with stream=true, SSE: delta events, then "
                                             "'message' with the stored turn, or 'error')"}})
async def send_message(
    thread_id: str, body: MessageIn, request: Request, principal: PrincipalDep, state: StateDep,
) -> Response:
    """Add a user message and answer it. The turn is stored whole when the reply is complete, even if the
    client has gone; the learned profile is updated afterwards."""
    turn = await state.conversations.send(
        principal, client_ip(request), thread_id, body.content,
        TurnOptions(model=body.model, stream=body.stream, max_tokens=body.max_tokens, temperature=body.temperature,
                    replaces=body.replaces))
    if not body.stream:
        return JSONResponse(await turn.outcome())
    events = turn.events()
    first = await anext(events, None)
    if first is not None and first.type == "error" and turn.error is not None:
        raise turn.error  # before anything was streamed: a plain JSON error with its status

    async def gen() -> AsyncIterator[bytes]:
        if first is not None:
            yield _sse(first)
        async for event in events:
            yield _sse(event)

    return StreamingResponse(gen(), headers=sse.HEADERS)


@router.get("/threads/{thread_id}/turn/events",
            responses={200: {"description": "SSE: the events of the thread's turn under way (or just ended)"}})
async def turn_events(
    thread_id: str, principal: PrincipalDep, state: StateDep, start: ResumeDep,
) -> Response:
    """Follow the thread's current turn again (a client whose stream broke), through any server that shares
    the database: every event after ``Last-Event-ID`` (or ``after``), then the rest live until the turn ends.
    404 when no turn of the thread is under way or ended in the last ten minutes (the stored messages are the
    record)."""
    turn = await state.conversations.follow(principal, thread_id)
    events = turn.events(start)

    async def gen() -> AsyncIterator[bytes]:
        async for event in events:
            yield _sse(event)

    return StreamingResponse(gen(), headers=sse.HEADERS)


@router.post("/threads/{thread_id}/turn/stop")
async def stop_turn(thread_id: str, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """Stop the thread's reply being written: the upstream call is cancelled and the reply is stored as far
    as it got, with ``finish_reason: "stopped"`` (its stream ends with the ``message`` event as usual).
    ``stopped: false`` when no turn of the thread is under way on this server. A client that merely goes
    away does not stop a turn (it can reconnect with ``GET .../turn/events``)."""
    return {"stopped": await state.conversations.stop(principal, thread_id)}


@router.get("/threads/{thread_id}/export")
async def export_thread(
    thread_id: str, principal: PrincipalDep, state: StateDep,
    format: Annotated[str, Query(description="json or markdown")] = "json",
) -> Response:
    """Everything: every message (with model, tokens, cost, context) and every rolling summary."""
    if format not in ("json", "markdown", "md"):
        raise InvalidRequestError("format: json or markdown", param="format")
    conv = state.conversations
    thread = await conv.threads.get(principal, thread_id)
    persona = await conv.personas.get(principal, thread.persona_id) if thread.persona_id else None
    messages = await conv.threads.messages_of(thread.id)
    summaries = await conv.threads.summaries_of(thread.id)
    if format == "json":
        return JSONResponse(export_json(thread, persona, messages, summaries, state.clock.time()),
                            headers={"content-disposition": f'attachment; filename="{thread.id}.json"'})
    return Response(export_markdown(thread, persona, messages, summaries).encode(),
                    media_type="text/markdown; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{thread.id}.md"'})


# -- personas -------------------------------------------------------------------------------------


@router.post("/personas", status_code=201, tags=["personas"])
async def create_persona(body: PersonaIn, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """A persona for threads: ``system_prompt`` inline, or ``knowledge_base`` + ``document_id``."""
    persona = await state.conversations.personas.create(
        principal, name=body.name, description=body.description, system_prompt=body.system_prompt,
        knowledge_base=body.knowledge_base, document_id=body.document_id)
    return persona_public(persona)


@router.get("/personas", tags=["personas"])
async def list_personas(principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    return {"data": [persona_public(p) for p in await state.conversations.personas.list_personas(principal)]}


@router.get("/personas/{persona_id}", tags=["personas"])
async def get_persona(persona_id: str, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    return persona_public(await state.conversations.personas.get(principal, persona_id))


@router.patch("/personas/{persona_id}", tags=["personas"])
async def update_persona(persona_id: str, body: PersonaPatch, principal: PrincipalDep,
                         state: StateDep) -> dict[str, Any]:
    """Change fields; a ``system_prompt`` makes it inline, ``knowledge_base``/``document_id`` a document persona."""
    sources = {k: getattr(body, k) for k in ("system_prompt", "knowledge_base", "document_id")
               if k in body.model_fields_set}
    persona = await state.conversations.personas.update(
        principal, persona_id, name=body.name, description=body.description, **sources)
    return persona_public(persona)


@router.delete("/personas/{persona_id}", status_code=204, tags=["personas"])
async def delete_persona(persona_id: str, principal: PrincipalDep, state: StateDep) -> Response:
    """Threads that used it go on without a persona."""
    await state.conversations.personas.delete(principal, persona_id)
    return Response(status_code=204)


def _sse(event: TurnEvent) -> bytes:
    return sse.event(event.json(), id=event.id or None, name=event.type)
