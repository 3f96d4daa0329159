"""The chat pages: the thread list (search, rename, archive, delete, export, import, a new chat) and a thread
(its messages, the model picker, persona and knowledge bases). Streaming, Stop, edit and regenerate are the
page script's, on the threads API; every form here also works without it."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ...api.deps import StateDep, client_ip
from ...bounds import MAX_INT32, MAX_UNIX_TIME
from ...conversations.exports import ThreadImport, import_thread
from ...conversations.service import TurnOptions
from ...errors import InvalidRequestError, NotFoundError
from ..session import UserPage, WebUser, check_form_csrf
from .chat_parts import Choices, agent_runs, choices, message_view
from .common import pages

__all__ = ["router"]

router = APIRouter()

PAGE_THREADS = 50
"""Threads the list shows at a time (the 'More' link gives the next ones)."""
PAGE_MESSAGES = 200
"""A thread page shows its last this many messages."""
MAX_IMPORT_BYTES = 20_000_000


async def _form(request: Request, user: WebUser) -> dict[str, Any]:
    form = await request.form()
    check_form_csrf(request, user, form.get("csrf"))
    return {k: form.getlist(k) if k == "kb" else v for k, v in form.items()}


def _text(form: dict[str, Any], key: str) -> str:
    value = form.get(key)
    return value if isinstance(value, str) else ""


def _see(path: str) -> Response:
    return RedirectResponse(path, status_code=303)


# -- the thread list ------------------------------------------------------------------------------


@router.get("/chat")
async def chat(
    request: Request, user: UserPage, state: StateDep,
    q: Annotated[str, Query(max_length=200)] = "",
    archived: Annotated[bool, Query()] = False,
    before: Annotated[float | None, Query(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False)] = None,
) -> Response:
    threads = await state.conversations.threads.list_threads(
        user.principal, archived=archived, limit=PAGE_THREADS + 1, before=before, search=q.strip() or None)
    more = threads[PAGE_THREADS - 1]["updated_at"] if len(threads) > PAGE_THREADS else None
    picks = await choices(state, user.principal)
    return pages(request).render(
        request, "chat/list.html", user, title="Chat", threads=threads[:PAGE_THREADS], more=more, q=q,
        archived=archived, before=before, choices=picks, default_model=_default_model(threads, picks))


def _default_model(threads: list[dict[str, Any]], picks: Choices) -> str:
    """The model of the latest thread if it may still be used, else the first the user may use."""
    if threads and picks.allowed(threads[0]["model"]):
        return str(threads[0]["model"])
    return picks.groups[0].models[0].id if picks.groups else ""


@router.post("/chat/new")
async def new_chat(request: Request, user: UserPage, state: StateDep) -> Response:
    """A thread with the chosen model, persona and knowledge bases; its first message answered here when the
    page script did not (it streams it on the thread's page)."""
    form = await _form(request, user)
    thread = await state.conversations.threads.create(
        user.principal, model=_text(form, "model"), title=_text(form, "title"),
        persona_id=_text(form, "persona") or None, knowledge_bases=list(form.get("kb") or []))
    message = _text(form, "message")
    if message.strip():
        turn = await state.conversations.send(user.principal, client_ip(request), thread.id, message, TurnOptions())
        await turn.outcome()
    return _see(f"/chat/{thread.id}")


@router.post("/chat/import")
async def import_chat(request: Request, user: UserPage, state: StateDep) -> Response:
    form = await request.form()
    check_form_csrf(request, user, form.get("csrf"))
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequestError("Choose a thread's JSON export to import.", param="file")
    raw = await upload.read(MAX_IMPORT_BYTES + 1)
    if len(raw) > MAX_IMPORT_BYTES:
        raise InvalidRequestError(f"file: at most {MAX_IMPORT_BYTES:,} bytes", param="file")
    try:
        data = ThreadImport.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError):
        raise InvalidRequestError("file: not a thread exported as JSON from thinktank", param="file") from None
    thread, _warnings = await import_thread(state.conversations.threads, user.principal, data)
    return _see(f"/chat/{thread.id}")


# -- a thread -------------------------------------------------------------------------------------


@router.get("/chat/{thread_id}")
async def thread_page(
    thread_id: str, request: Request, user: UserPage, state: StateDep,
    before: Annotated[int | None, Query(ge=1, le=MAX_INT32, description="Earlier messages: those before this one")]
    = None,
) -> Response:
    threads = state.conversations.threads
    thread = await threads.get(user.principal, thread_id)
    rows = await threads.last_messages(thread.id, PAGE_MESSAGES + 1, before=before)
    earlier = rows[1].seq if len(rows) > PAGE_MESSAGES else None
    rows = rows[-PAGE_MESSAGES:]
    last_answer = rows[-1].id if rows and rows[-1].role == "assistant" and before is None else None
    agents = await agent_runs(state, user.principal, rows)
    messages = [message_view(m, last_answer=m.id == last_answer, agent=agents.get(m.id)) for m in rows]
    picks = await choices(state, user.principal)
    kb_names = {kb.id: kb.name for kb in picks.knowledge_bases}
    return pages(request).render(
        request, "chat/thread.html", user, title=thread.title or "New chat", thread=thread, messages=messages,
        earlier=earlier, before=before, choices=picks, kb_names=kb_names, model_allowed=picks.allowed(thread.model))


@router.get("/chat/{thread_id}/messages/{message_id}")
async def message_fragment(thread_id: str, message_id: str, request: Request, user: UserPage,
                           state: StateDep) -> Response:
    """One stored message as the thread page shows it (the page script swaps it in when a turn ends)."""
    threads = state.conversations.threads
    thread = await threads.get(user.principal, thread_id)
    found = await threads.message_of(thread.id, message_id)
    if found is None:
        raise NotFoundError(f"There is no message '{message_id}' in this thread.", param="message_id")
    last = await threads.last_messages(thread.id, 1)
    agents = await agent_runs(state, user.principal, [found])
    view = message_view(found, last_answer=found.role == "assistant" and bool(last) and last[0].id == found.id,
                        agent=agents.get(found.id))
    html = pages(request).fragment("chat/_message.html", thread=thread, mv=view, csrf=user.csrf)
    return HTMLResponse(html, headers={"cache-control": "no-store"})


@router.post("/chat/{thread_id}/send")
async def send(thread_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    """The composer without the page script: the answer is waited for, then the thread is shown again."""
    form = await _form(request, user)
    turn = await state.conversations.send(
        user.principal, client_ip(request), thread_id, _text(form, "message"),
        TurnOptions(replaces=_text(form, "replaces") or None))
    await turn.outcome()
    return _see(f"/chat/{thread_id}#end")


@router.post("/chat/{thread_id}/settings")
async def settings(thread_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    form = await _form(request, user)
    await state.conversations.threads.update(
        user.principal, thread_id, model=_text(form, "model") or None, persona_id=_text(form, "persona") or None,
        knowledge_bases=list(form.get("kb") or []))
    return _see(f"/chat/{thread_id}")


@router.post("/chat/{thread_id}/rename")
async def rename(thread_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    form = await _form(request, user)
    await state.conversations.threads.update(user.principal, thread_id, title=_text(form, "title"))
    return _see(_text(form, "back") if _text(form, "back") == "/chat" else f"/chat/{thread_id}")


@router.post("/chat/{thread_id}/archive")
async def archive(thread_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    form = await _form(request, user)
    archived = _text(form, "archived") == "1"
    await state.conversations.threads.update(user.principal, thread_id, archived=archived)
    return _see("/chat?archived=1" if not archived else "/chat")


@router.post("/chat/{thread_id}/delete")
async def delete(thread_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    await _form(request, user)
    await state.conversations.threads.delete(user.principal, thread_id)
    return _see("/chat")
