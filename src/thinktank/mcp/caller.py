"""What one caller may do over MCP, done as the HTTP API does it (no MCP here: :mod:`.server` adapts it).

Every operation acts as the caller: their allowed models (``catalog.resolve``/``permit``, a composite's
members included), their rate limits and budgets (a ``gate`` admission, recorded in their usage), their
runs, knowledge bases and memories (another user's are not found). The service calls and checks are the
ones of ``api/routes/openai.py``, ``runs.py``, ``knowledge.py`` and ``memory.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select

from ..api.uploads import MAX_FILE_BYTES, source_name
from ..conversations.memory import Candidate, fact_public, normalize
from ..deliberation.runs import Event
from ..deliberation.service import RunOptions, redact
from ..errors import ConflictError, InvalidRequestError, NotFoundError, PayloadTooLargeError, UnprocessableError
from ..gateway.tokens import estimate_request_tokens, estimate_text_tokens
from ..knowledge.embeddings import LOCAL_MODEL
from ..knowledge.ingest import Source
from ..knowledge.retrieval import SearchOptions
from ..store.tables import KbDocument, KbDocumentText
from ..types import ChatRequest, Message
from .inputs import AddDocumentIn, AskModelIn, RecallIn, RememberIn, RunDebateIn, RunEnsembleIn, SearchKnowledgeIn

if TYPE_CHECKING:
    from ..accounts.governance import Admission
    from ..accounts.principal import Principal
    from ..api.state import AppState
    from ..deliberation.experts import Persona
    from ..knowledge.service import KbView
    from ..store.tables import KnowledgeBase

__all__ = ["RUN_DOCUMENTS", "Answer", "Caller", "Progress", "document_uri", "documents_uri", "run_document_uri"]

RUN_DOCUMENTS = ("plan.md", "tasks.md")
"""The documents a debate run with ``plan`` writes."""

Progress = Callable[[int, str], Awaitable[None]]
"""Told each step of a run as it finishes: how many have finished, and which."""


def run_document_uri(run_id: str, name: str) -> str:
    return f"thinktank://runs/{run_id}/{name}"


def documents_uri(kb_id: str) -> str:
    return f"thinktank://knowledge-bases/{kb_id}/documents"


def document_uri(kb_id: str, doc_id: str) -> str:
    return f"thinktank://knowledge-bases/{kb_id}/documents/{doc_id}"


@dataclass(frozen=True)
class Answer:
    """A model's answer: its text and what the API sends beside it (headers and extra fields)."""

    model: str
    text: str
    served_by: str | None
    run_id: str | None
    cost_usd: float
    citations: list[dict[str, Any]]
    usage: dict[str, Any] | None


class Caller:
    """One caller's view of the app's services. ``principal`` says who calls, each time it is asked (stdio
    looks the key up again, so a revoked key stops working); ``ip`` is their address for the limits."""

    def __init__(self, state: AppState, principal: Callable[[], Awaitable[Principal]], ip: str | None) -> None:
        self.state = state
        self.principal = principal
        self.ip = ip

    @classmethod
    def of(cls, state: AppState, principal: Principal, ip: str | None) -> Caller:
        """A caller already authenticated (one HTTP request)."""

        async def fixed() -> Principal:
            return principal

        return cls(state, fixed, ip)

    # -- models ----------------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        """Every name the caller may use, as ``/v1/models`` lists them."""
        entries = await self.state.catalog.models(await self.principal())
        return [{"id": m.id, "kind": m.kind, **({"description": m.description} if m.description else {})}
                for m in entries]

    async def ask(self, args: AskModelIn) -> Answer:
        """One chat completion, as ``POST /v1/chat/completions`` answers it (without streaming)."""
        principal = await self.principal()
        messages = [Message(role="user", content=args.question)]
        if args.system is not None:
            messages.insert(0, Message(role="system", content=args.system))
        request = ChatRequest(model=args.model, messages=messages, max_tokens=args.max_tokens,
                              temperature=args.temperature)
        catalog = self.state.catalog
        model = (catalog.grounded(args.model, principal, args.knowledge_bases) if args.knowledge_bases
                 else catalog.resolve(args.model, principal))
        estimate = estimate_request_tokens(request) + (request.output_limit() or 0)
        async with self.state.gate.admitted(principal, self.ip, request.model, estimate) as admission:
            response = await model.complete(request, admission.ctx)
            cost = admission.ctx.cost()
            run_id = response.run_id or admission.ctx.run_id
        text = (response.choices[0].message.content or "") if response.choices else ""
        usage = response.usage.model_dump(exclude_none=True) if response.usage is not None else None
        return Answer(args.model, text, response.served_by, run_id, cost, list(response.citations or []), usage)

    # -- runs ------------------------------------------------------------------------------------

    async def run(self, args: RunEnsembleIn | RunDebateIn, progress: Progress | None = None) -> dict[str, Any]:
        """Run a configured ensemble or debate to its end, as ``POST /api/v1/ensembles`` (``/debates``) does,
        telling ``progress`` each stage (a round of a debate) as it finishes. The run goes on (and is recorded)
        if the caller goes away. The finished run's record, redacted as the API sends it."""
        principal = await self.principal()
        kind: Literal["ensemble", "debate"]
        if isinstance(args, RunEnsembleIn):
            kind, name, overrides = "ensemble", args.ensemble, {}
        else:
            kind, name = "debate", args.debate
            overrides = {k: v for k, v in (("rounds", args.rounds), ("plan", args.plan)) if v is not None}
        service = self.state.deliberation
        cfg = service.resolve(kind, name, overrides)
        model = f"{kind}/{name}"
        self.state.catalog.permit(principal, model)
        service.check_access(principal, cfg, model)
        estimate = estimate_text_tokens(args.question) + (args.max_tokens or 0)
        admission = await self.state.gate.admit(principal, self.ip, model, estimate)

        async def recorded(status: int, cache_hit: bool) -> None:
            await admission.finish(status, cache_hit=cache_hit)

        options = RunOptions(cache=args.cache, max_cost_usd=args.max_cost_usd, max_tokens=args.max_tokens,
                             temperature=args.temperature)
        run = await service.start(kind, cfg, principal=principal, ctx=admission.ctx,
                                  messages=[Message(role="user", content=args.question)], options=options,
                                  on_end=recorded)
        finished = 0
        async for event in run.follow(0):
            if event.type == "stage_finished" and progress is not None:
                finished += 1
                await progress(finished, _stage(event))
        await service.wait(run)
        return redact(run.record())

    async def get_run(self, run_id: str) -> dict[str, Any]:
        return await self.state.deliberation.get(run_id, await self.principal())

    async def run_document(self, run_id: str, name: str) -> str:
        """``plan.md`` or ``tasks.md`` of a debate run with ``plan`` (404 unless the caller may read the run)."""
        content = await self.state.deliberation.document(run_id, await self.principal(), name)
        if content is None or name not in RUN_DOCUMENTS:
            raise NotFoundError(f"Run '{run_id}' has no document '{name}'.")
        return content

    # -- knowledge -------------------------------------------------------------------------------

    async def _admit_embedding(self, principal: Principal, model: str, tokens: int) -> Admission | None:
        """The gate's admission for work embedding with a gateway model; none for the local model."""
        if model == LOCAL_MODEL:
            return None
        self.state.catalog.permit(principal, model)
        return await self.state.gate.admit(principal, self.ip, model, tokens)

    async def search(self, args: SearchKnowledgeIn) -> list[dict[str, Any]]:
        """The passages that best answer ``args.query``, as ``POST /api/v1/knowledge-bases/search`` finds them,
        each with what a citation needs (document, position, page, snippet)."""
        if not args.query.strip():
            raise InvalidRequestError("The query is empty.", param="query")
        principal = await self.principal()
        knowledge = self.state.knowledge
        kbs: dict[str, KnowledgeBase] = {}
        for ref in args.knowledge_bases:  # 404 on the first the caller may not read
            kb, _ = await knowledge.get(principal, ref)
            kbs.setdefault(kb.id, kb)
        options = SearchOptions(top_k=args.top_k, mode=args.mode)
        models = {kb.embedding_model for kb in kbs.values()}
        admission = None
        if options.mode != "keyword" and len(models) == 1:
            admission = await self._admit_embedding(principal, models.pop(), estimate_text_tokens(args.query))
        async with self.state.gate.recording(admission):
            hits = await knowledge.search(principal, list(kbs), args.query, options,
                                          ctx=admission.ctx if admission is not None else None)
        return [{"rank": rank, "knowledge_base": kbs[h.kb_id].name if h.kb_id in kbs else None,
                 "knowledge_base_id": h.kb_id, "document_id": h.document_id, "title": h.title, "source": h.source,
                 "page": h.page, "position": h.position, "section": h.context, "snippet": h.text,
                 "score": h.score, "uri": document_uri(h.kb_id, h.document_id)}
                for rank, h in enumerate(hits, 1)]

    async def add_document(self, args: AddDocumentIn) -> dict[str, Any]:
        """Add a text or a fetched public URL, as ``POST …/documents`` (``…/urls``) does: a writer's document is
        searchable at once, a reader's waits for an owner's review. The same name (URL) again replaces it."""
        principal = await self.principal()
        found, access = await self.state.knowledge.get(principal, args.knowledge_base)
        if args.url is not None:
            fetched = await self.state.url_fetcher.fetch(args.url)  # public addresses only, redirects checked
            source = Source(name=fetched.name, data=fetched.data, content_type=fetched.content_type,
                            title=args.title or fetched.title, metadata=fetched.metadata)
        else:
            assert args.text is not None  # the arguments say one of the two
            data = args.text.encode("utf-8")
            if len(data) > MAX_FILE_BYTES:
                raise PayloadTooLargeError(f"The text is {len(data):,} bytes, more than the {MAX_FILE_BYTES:,} "
                                           "allowed for one document.")
            name = source_name(args.name) if args.name else f"mcp-{hashlib.sha256(data).hexdigest()[:12]}.md"
            source = Source(name=name, data=data, content_type="text/markdown", title=args.title)
        admission = await self._admit_embedding(principal, found.embedding_model, len(source.data) // 4 + 1)
        async with self.state.gate.recording(admission):
            [result] = await self.state.knowledge.add(principal, found.id, [source],
                                                      ctx=admission.ctx if admission is not None else None)
            if result.status == "failed":
                raise UnprocessableError(result.error or "The document could not be added.")
        pending = access == "read"
        out: dict[str, Any] = {
            "knowledge_base": found.name, "knowledge_base_id": found.id, "document_id": result.document_id,
            "source": result.source, "status": result.status, "chunks": result.chunks,
            "warnings": list(result.warnings),
        }
        if result.document_id is not None:
            out["uri"] = document_uri(found.id, result.document_id)
        if result.status in ("added", "replaced"):
            out["document_status"] = "pending" if pending else "approved"
        if result.error:
            out["detail"] = result.error
        return out

    async def knowledge_bases(self) -> list[KbView]:
        return await self.state.knowledge.visible(await self.principal())

    async def documents(self, kb_ref: str) -> tuple[KnowledgeBase, list[KbDocument]]:
        """A knowledge base and the documents the caller sees in it (a reader: the approved ones and their own)."""
        principal = await self.principal()
        kb, _ = await self.state.knowledge.get(principal, kb_ref)
        return kb, await self.state.knowledge.documents(principal, kb.id)

    async def document_text(self, kb_ref: str, doc_id: str) -> tuple[KbDocument, str]:
        """A document and its text, if the caller may read it (pending and rejected contributions: their author
        and the knowledge base's admins only)."""
        principal = await self.principal()
        kb, access = await self.state.knowledge.get(principal, kb_ref)  # 404 unless readable
        async with self.state.db.session() as s:
            row = (await s.execute(
                select(KbDocument, KbDocumentText.body)
                .join(KbDocumentText, KbDocumentText.document_id == KbDocument.id)
                .where(KbDocument.id == doc_id, KbDocument.kb_id == kb.id)
            )).first()
        if row is None or not (row[0].status == "approved" or access == "admin"
                               or row[0].submitted_by == principal.user_id):
            raise NotFoundError(f"document '{doc_id}' not found in '{kb_ref}'", param="document_id")
        return row[0], str(row[1])

    # -- memory ----------------------------------------------------------------------------------

    async def remember(self, args: RememberIn) -> dict[str, Any]:
        """Keep one memory about the caller (a repeat confirms the one it repeats)."""
        principal = await self.principal()
        memory = self.state.conversations.memory
        text = " ".join(args.text.split())
        if not normalize(text):
            raise InvalidRequestError("text: a memory needs some words", param="text")
        facts = await memory.remember(principal.user_id, [Candidate(args.kind, text)], source_message_id=None,
                                      source_thread_id=None)
        if not facts:
            raise ConflictError("The same memory was being written at the same moment; nothing was written, "
                                "try again.")
        fact = facts[0]
        return {**fact_public(fact), "new": fact.mentions == 1,
                "enabled": await memory.enabled(principal.user_id)}

    async def recall(self, args: RecallIn) -> list[dict[str, Any]]:
        """The caller's memories most related to ``args.query`` (best first), or all of them (oldest first)."""
        principal = await self.principal()
        memory = self.state.conversations.memory
        if args.query is not None:
            facts = await memory.relevant(principal.user_id, args.query, args.limit)
        else:
            facts = (await memory.list_facts(principal))[:args.limit]
        return [fact_public(f) for f in facts]

    async def forget(self, memory_id: str) -> None:
        await self.state.conversations.memory.delete(await self.principal(), memory_id)

    async def memory_enabled(self) -> bool:
        return await self.state.conversations.memory.enabled((await self.principal()).user_id)

    # -- personas --------------------------------------------------------------------------------

    def personas(self) -> list[Persona]:
        """The debate experts' library (the configuration's own first)."""
        return list(self.state.deliberation.library)


def _stage(event: Event) -> str:
    """A finished stage as progress tells it: ``round 2 finished (12.3 s)``."""
    data = event.data
    failed = " failed" if data.get("failed") else " finished"
    seconds = data.get("seconds")
    return f"{data.get('stage', 'a stage')}{failed}" + (f" ({seconds:g} s)" if isinstance(seconds, int | float) else "")
