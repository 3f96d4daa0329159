"""A thread out and in: JSON (everything, for import) and Markdown (to read).

The JSON export holds every message with its model, tokens, cost and context, and every rolling summary;
importing it makes a new thread of the importer's, equal to the exported one but for ids. An import is
written in one transaction: a malformed one (422 from validation, 400 from the checks here) leaves nothing.
A persona or knowledge base the importer cannot use is dropped, with a warning in the answer.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..accounts.principal import Principal
from ..bounds import MAX_SAFE_INT, MAX_USD, Seq, TokenCount, UnixTime, Usd
from ..errors import InvalidRequestError, NotFoundError
from ..store.tables import ChatPersona, Thread, ThreadMessage, ThreadSummary, new_id
from .threads import MAX_KNOWLEDGE_BASES, ThreadService, check_title, message_public, summary_public, thread_public

__all__ = ["EXPORT_FORMAT", "ThreadImport", "export_json", "export_markdown", "import_thread"]

EXPORT_FORMAT = "thinktank.thread"
EXPORT_VERSION = 1
MAX_IMPORT_MESSAGES = 10_000


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _UsageIn(_In):
    prompt_tokens: TokenCount = 0
    completion_tokens: TokenCount = 0
    total_tokens: int | None = Field(default=None, ge=0, le=2 * MAX_SAFE_INT)
    """Ignored (the sum of the two): an export of ours holds it."""


class _MessageIn(_In):
    id: str | None = None
    thread_id: str | None = None
    seq: Seq | None = None
    role: Literal["user", "assistant", "system"]
    content: str = Field(max_length=1_000_000)
    model: str | None = Field(default=None, max_length=256)
    deployment: str | None = Field(default=None, max_length=256)
    usage: _UsageIn = Field(default_factory=_UsageIn)
    cost_usd: Usd = 0.0
    finish_reason: str | None = Field(default=None, max_length=32)
    citations: list[dict[str, Any]] | None = None
    """Ignored: the citations are the context's."""
    context: dict[str, Any] | None = None
    created_at: UnixTime | None = None


class _SummaryIn(_In):
    id: str | None = None
    through_seq: Seq
    content: str = Field(max_length=1_000_000)
    model: str | None = Field(default=None, max_length=256)
    usage: _UsageIn = Field(default_factory=_UsageIn)
    cost_usd: Usd = 0.0
    created_at: UnixTime | None = None


class _PersonaRef(_In):
    id: str
    name: str | None = None


class _ThreadIn(_In):
    id: str | None = None
    object: Literal["thread"] | None = None
    title: str = ""
    model: str = Field(min_length=1, max_length=256)
    persona_id: str | None = None
    persona: _PersonaRef | None = None
    knowledge_bases: list[str] = Field(default_factory=list)
    archived: bool = False
    created_at: UnixTime | None = None
    updated_at: UnixTime | None = None
    message_count: int | None = Field(default=None, ge=0, le=MAX_SAFE_INT)
    cost_usd: float | None = Field(default=None, ge=0, le=MAX_USD * MAX_IMPORT_MESSAGES)


class ThreadImport(_In):
    """The body of ``POST /api/v1/threads/import``: what ``GET .../export?format=json`` gives."""

    format: Literal["thinktank.thread"] = "thinktank.thread"
    version: Literal[1] = 1
    exported_at: UnixTime | None = None
    thread: _ThreadIn
    messages: list[_MessageIn] = Field(default_factory=list, max_length=MAX_IMPORT_MESSAGES)
    summaries: list[_SummaryIn] = Field(default_factory=list, max_length=MAX_IMPORT_MESSAGES)


def export_json(thread: Thread, persona: ChatPersona | None, messages: list[ThreadMessage],
                summaries: list[ThreadSummary], now: float) -> dict[str, Any]:
    head = thread_public(thread, messages=len(messages), cost_usd=sum(m.cost_usd for m in messages))
    head["persona"] = {"id": persona.id, "name": persona.name} if persona is not None else None
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported_at": now, "thread": head,
            "messages": [message_public(m) for m in messages], "summaries": [summary_public(s) for s in summaries]}


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _sources(citations: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for c in citations:
        where = str(c.get("title") or c.get("source") or c.get("document_id") or "?")
        extra = [str(c["source"])] if c.get("source") and c.get("source") != where else []
        if c.get("page") is not None:
            extra.append(f"p. {c['page']}")
        if c.get("kb_name"):
            extra.append(f"knowledge base {c['kb_name']}")
        out.append(f"{c.get('index', len(out) + 1)}. {where}" + (f" ({', '.join(extra)})" if extra else ""))
    return out


def export_markdown(thread: Thread, persona: ChatPersona | None, messages: list[ThreadMessage],
                    summaries: list[ThreadSummary]) -> str:
    cost = sum(m.cost_usd for m in messages)
    lines = [f"# {thread.title or 'Untitled thread'}", "", f"- Thread: `{thread.id}`", f"- Model: `{thread.model}`"]
    if persona is not None:
        lines.append(f"- Persona: {persona.name}")
    if thread.knowledge_bases:
        lines.append(f"- Knowledge bases: {', '.join(f'`{k}`' for k in thread.knowledge_bases)}")
    lines += [f"- Created: {_when(thread.created_at)}", f"- Messages: {len(messages)}, cost ${cost:.6f}"]
    if thread.archived:
        lines.append("- Archived")
    for m in messages:
        head = f"### {m.role.capitalize()} · {_when(m.created_at)}"
        if m.role == "assistant":
            head += f" · `{m.model}` · {m.prompt_tokens} + {m.completion_tokens} tokens · ${m.cost_usd:.6f}"
        lines += ["", head, "", m.content]
        citations = list((m.context or {}).get("citations") or [])
        if citations:
            lines += ["", "Sources:", "", *_sources(citations)]
    for s in summaries:
        lines += ["", f"## Rolling summary of messages 1–{s.through_seq} ({_when(s.created_at)})", "", s.content]
    return "\n".join(lines) + "\n"


async def import_thread(
    threads: ThreadService, principal: Principal, data: ThreadImport,
) -> tuple[Thread, list[str]]:
    """A new thread of ``principal``'s from an export; returns it and warnings about what was dropped."""
    head = data.thread
    title = check_title(head.title)
    threads.check_model(principal, head.model)
    warnings: list[str] = []
    persona_ref = head.persona.id if head.persona is not None else head.persona_id
    persona_id: str | None = None
    if persona_ref is not None:
        try:
            persona_id = await threads.owned_persona(principal, persona_ref)
        except NotFoundError:
            warnings.append(f"persona '{persona_ref}' is not one of yours; the thread has none")
    if len(head.knowledge_bases) > MAX_KNOWLEDGE_BASES:
        raise InvalidRequestError(f"thread.knowledge_bases: at most {MAX_KNOWLEDGE_BASES}",
                                  param="thread.knowledge_bases")
    kbs: list[str] = []
    for ref in head.knowledge_bases:
        try:
            kbs += [k for k in await threads.knowledge.readable_ids(principal, [ref]) if k not in kbs]
        except NotFoundError:
            warnings.append(f"knowledge base '{ref}' is not readable by you; it was left out")
    seqs = [m.seq for m in data.messages]
    if any(s is not None for s in seqs) and seqs != list(range(1, len(seqs) + 1)):
        raise InvalidRequestError("messages: seq must run 1, 2, 3... in order (or be left out)", param="messages")
    for i, s in enumerate(data.summaries):
        if s.through_seq > len(data.messages):
            raise InvalidRequestError(f"summaries[{i}].through_seq: there are only {len(data.messages)} messages",
                                      param=f"summaries.{i}.through_seq")
    now = threads.clock.time()
    thread = Thread(id=new_id("thr"), user_id=principal.user_id, title=title, model=head.model,
                    persona_id=persona_id, knowledge_bases=kbs, archived=head.archived,
                    created_at=head.created_at if head.created_at is not None else now,
                    updated_at=head.updated_at if head.updated_at is not None else now)
    rows = [
        ThreadMessage(id=new_id("msg"), thread_id=thread.id, seq=i, role=m.role, content=m.content, model=m.model,
                      deployment=m.deployment, prompt_tokens=m.usage.prompt_tokens,
                      completion_tokens=m.usage.completion_tokens, cost_usd=m.cost_usd, finish_reason=m.finish_reason,
                      context=m.context, created_at=m.created_at if m.created_at is not None else now)
        for i, m in enumerate(data.messages, 1)
    ]
    summary_rows = [
        ThreadSummary(id=new_id("sum"), thread_id=thread.id, through_seq=s.through_seq, content=s.content,
                      model=s.model, prompt_tokens=s.usage.prompt_tokens, completion_tokens=s.usage.completion_tokens,
                      cost_usd=s.cost_usd, created_at=s.created_at if s.created_at is not None else now)
        for s in data.summaries
    ]
    async with threads.db.session() as session:
        session.add(thread)
        await session.flush()
        session.add_all(rows)
        session.add_all(summary_rows)
    return thread, warnings
