"""The tools thinktank brings itself: search the caller's knowledge bases, ask another model, fetch a public
web page, recall, store and forget the caller's memories, tell the time. No code execution, no shell.

:class:`BuiltinTools` holds the app's services and hands out one :class:`~.tools.Tool` per name
(``get``). Every tool works for ``tc.principal`` only: a knowledge base, a memory or a model the caller
cannot use is "not found" (a :class:`~.tools.ToolError` the model reads), never someone else's data.

Each tool checks its own arguments (a wrong type, a missing or unknown field is a ToolError, never a
crash), although the loop validates them against the tool's schema first.

Costs: ``ask_model`` calls ``catalog.complete`` under ``tc.ctx.child(tc.run_id)`` (same payer, meter and
budgets; the run as parent) and then appends that child context's usage records to ``tc.ctx.records``,
whether the call answered, failed or was cancelled; the output's ``data`` says what the call cost.
``knowledge_search`` embeds its query under ``tc.ctx`` (a priced embedding model records there too).
A budget refusal (:class:`~thinktank.accounts.budgets.BudgetExceededError`) is raised as it is, not as a
ToolError: the run stops, as it does for its own model calls.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..accounts.budgets import BudgetExceededError
from ..errors import ThinktankError
from ..types import ChatRequest, Message, message_text
from .arguments import Args, cut_text, object_schema
from .config import BUILTIN_TOOLS
from .fetch_tool import DEFAULT_FETCH_CHARS, MAX_FETCH_CHARS, FetchUrl
from .tools import Tool, ToolContext, ToolError, ToolOutput, ToolSpec

if TYPE_CHECKING:
    from ..catalog import Catalog
    from ..clock import Clock
    from ..conversations.memory import MemoryService
    from ..knowledge.retrieval import Retrieved
    from ..knowledge.service import KbView, KnowledgeService
    from ..knowledge.urls import UrlFetcher
    from ..store.tables import MemoryFact

__all__ = ["DEFAULT_FETCH_CHARS", "MAX_FETCH_CHARS", "PASSAGE_CHARS", "BuiltinTools"]

PASSAGE_CHARS = 1500
"""The longest passage ``knowledge_search`` shows the model (its citation's snippet is shorter)."""
_MAX_TOP_K = 20
_MAX_RECALL = 50
_MAX_QUESTION = 100_000


class KnowledgeSearch:
    """``knowledge_search``: hybrid search of the caller's knowledge bases; passages as text, citations beside."""

    def __init__(self, knowledge: KnowledgeService) -> None:
        from ..knowledge.grounding import QUERY_CHARS

        self.spec = ToolSpec(
            "knowledge_search", "knowledge_search",
            "Search the user's knowledge bases (their documents) and return the most relevant passages, numbered "
            "[1], [2]... with the document they come from. Cite a passage by its number when you use it. Without "
            "knowledge_bases, searches the ones this agent is set up with, else all the user can read.",
            object_schema({
                "query": {"type": "string", "minLength": 1, "maxLength": QUERY_CHARS,
                          "description": "What to look for: a question or key words."},
                "knowledge_bases": {"type": "array", "maxItems": 16,
                                    "items": {"type": "string", "minLength": 1, "maxLength": 200},
                                    "description": "Knowledge bases to search, by name or id."},
                "top_k": {"type": "integer", "minimum": 1, "maximum": _MAX_TOP_K,
                          "description": "How many passages (default 6)."},
            }, ["query"]),
        )
        self.knowledge = knowledge
        self.query_chars = QUERY_CHARS

    async def call(self, arguments: dict[str, Any], tc: ToolContext) -> ToolOutput:
        from ..knowledge.grounding import SNIPPET_CHARS, Citation
        from ..knowledge.retrieval import SearchOptions

        args = Args(arguments, self.spec)
        query = args.required_text("query", max_chars=self.query_chars)
        named = args.texts("knowledge_bases", max_items=16, max_chars=200)
        top_k = args.integer("top_k", low=1, high=_MAX_TOP_K, default=6)
        groups, names = await self._targets(tc, named or tc.knowledge_bases)
        options = SearchOptions(top_k=top_k, mode="hybrid")
        found: list[Retrieved] = []
        try:
            for ids in groups:
                found.extend(await self.knowledge.search(tc.principal, ids, query, options, ctx=tc.ctx))
        except BudgetExceededError:
            raise
        except ThinktankError as exc:
            raise ToolError(f"knowledge_search: {exc.message}") from None
        found = sorted(found, key=lambda r: -r.score)[:top_k] if len(groups) > 1 else found[:top_k]
        if not found:
            searched = ", ".join(sorted(set(names.values())))
            return ToolOutput(f"No passages matched the query in: {searched}.", citations=[])
        citations: list[dict[str, Any]] = []
        parts: list[str] = []
        for index, item in enumerate(found, tc.citation_start):
            passage, _ = cut_text(item.text, PASSAGE_CHARS)
            snippet, cut = cut_text(item.text, SNIPPET_CHARS - 1)
            kb_name = names.get(item.kb_id, "")
            citations.append(Citation(
                index=index, document_id=item.document_id, kb_id=item.kb_id, kb_name=kb_name, source=item.source,
                title=item.title, page=item.page, position=item.position, context=item.context,
                snippet=snippet + ("…" if cut else ""), score=item.score).to_dict())
            where = [f'knowledge base "{kb_name}"', f"part {item.position + 1}"]
            if item.page is not None:
                where.append(f"page {item.page}")
            if item.context and item.context != item.title:
                where.append(f"section: {item.context}")
            title = item.title or item.source
            parts.append(f"[{index}] {title} ({', '.join(where)})\n{passage}")
        return ToolOutput("\n\n".join(parts), citations=citations,
                          data={"query": query, "knowledge_bases": sorted(set(names.values()))})

    async def _targets(self, tc: ToolContext, refs: list[str]) -> tuple[list[list[str]], dict[str, str]]:
        """The knowledge base ids to search, grouped so each group embeds with one model, and their names.
        Named ones must all be readable (one that is not is "not found"); all the caller reads otherwise."""
        views: list[tuple[str, str, str]] = []  # (id, name, embedding model)
        if refs:
            for ref in refs:
                try:
                    kb, _ = await self.knowledge.get(tc.principal, ref)
                except ThinktankError as exc:
                    raise ToolError(f"knowledge_search: {exc.message}") from None
                views.append((kb.id, kb.name, kb.embedding_model))
        else:
            visible: list[KbView] = await self.knowledge.visible(tc.principal)
            views = [(v.kb.id, v.kb.name, v.kb.embedding_model) for v in visible]
            if not views:
                raise ToolError("knowledge_search: the user has no knowledge bases to search")
        names = {kb_id: name for kb_id, name, _ in views}
        if refs:  # named together: the service says if they cannot be searched together
            return [list(names)], names
        by_model: dict[str, list[str]] = {}
        for kb_id, _, model in views:
            by_model.setdefault(model, []).append(kb_id)
        return list(by_model.values()), names


class AskModel:
    """``ask_model``: one question to a model of the agent's ``models`` the caller may use, costed to the run."""

    def __init__(self, catalog: Catalog) -> None:
        self.spec = ToolSpec(
            "ask_model", "ask_model",
            "Ask another model a question and get its answer (a second opinion, a specialist, an ensemble or a "
            "debate). Only the models this agent is set up with can be asked; the question must say everything "
            "the model needs, it does not see this conversation.",
            object_schema({
                "model": {"type": "string", "minLength": 1, "maxLength": 256, "description": "The model's name."},
                "question": {"type": "string", "minLength": 1, "maxLength": _MAX_QUESTION,
                             "description": "The full question."},
                "system": {"type": "string", "maxLength": _MAX_QUESTION,
                           "description": "Optional instructions for the model (a system message)."},
            }, ["model", "question"]),
        )
        self.catalog = catalog

    def allowed(self, tc: ToolContext) -> list[str]:
        """What ``tc``'s agent may ask, as far as the caller may use it."""
        return [m for m in dict.fromkeys(tc.models) if self.catalog.allows(tc.principal, m)]

    async def call(self, arguments: dict[str, Any], tc: ToolContext) -> ToolOutput:
        args = Args(arguments, self.spec)
        model = args.required_text("model", max_chars=256)
        question = args.required_text("question", max_chars=_MAX_QUESTION)
        system = args.text("system", max_chars=_MAX_QUESTION)
        allowed = self.allowed(tc)
        if model not in allowed:
            listed = ", ".join(allowed) if allowed else "none (this agent has no models to ask)"
            raise ToolError(f"ask_model: '{model}' cannot be asked here; the models you can ask: {listed}")
        try:
            self.catalog.check(tc.principal, model)  # every name it reaches, and no cycle
        except ThinktankError as exc:
            raise ToolError(f"ask_model: {exc.message}") from None
        messages = ([Message(role="system", content=system)] if system else []) + [
            Message(role="user", content=question)]
        child = tc.ctx.child(tc.run_id)
        try:
            response = await self.catalog.complete(ChatRequest(model=model, messages=messages), child)
        except BudgetExceededError:
            raise
        except ThinktankError as exc:
            raise ToolError(f"ask_model: {model} failed: {exc.message}") from None
        finally:
            tc.ctx.records.extend(child.records)  # what the call cost, answered or not
        answer = message_text(response.choices[0].message) if response.choices else ""
        data = {
            "model": model, "run_id": child.run_id or response.run_id,
            "deployment": child.records[-1].deployment if child.records else response.served_by,
            "prompt_tokens": sum(r.prompt_tokens for r in child.records),
            "completion_tokens": sum(r.completion_tokens for r in child.records),
            "cost_usd": round(child.cost(), 10),
        }
        return ToolOutput(answer or f"({model} gave an empty answer)", citations=response.citations, data=data)


def _fact_line(fact: MemoryFact) -> str:
    return f"- {fact.id} ({fact.kind}) {fact.text}"


def _fact_data(fact: MemoryFact) -> dict[str, Any]:
    return {"id": fact.id, "kind": fact.kind, "text": fact.text, "mentions": fact.mentions,
            "updated_at": fact.updated_at}


_MEMORY_OFF = "memory is switched off for this user (they can switch it on in their settings)"


class MemoryRecall:
    """``memory_recall``: the caller's memories most relevant to a query, or the latest."""

    def __init__(self, memory: MemoryService) -> None:
        self.spec = ToolSpec(
            "memory_recall", "memory_recall",
            "Recall what is remembered about the user (facts, interests, preferences from earlier conversations): "
            "the memories most relevant to query, or the latest ones without a query. Each comes with its id.",
            object_schema({
                "query": {"type": "string", "maxLength": 2000, "description": "What the memories should be about."},
                "limit": {"type": "integer", "minimum": 1, "maximum": _MAX_RECALL,
                          "description": "How many memories at most (default 10)."},
            }, []),
        )
        self.memory = memory

    async def call(self, arguments: dict[str, Any], tc: ToolContext) -> ToolOutput:
        args = Args(arguments, self.spec)
        query = args.text("query", max_chars=2000)
        limit = args.integer("limit", low=1, high=_MAX_RECALL, default=10)
        user_id = tc.principal.user_id
        if not await self.memory.enabled(user_id):
            raise ToolError(f"memory_recall: {_MEMORY_OFF}")
        if query:
            facts = await self.memory.relevant(user_id, query, limit)
        else:
            every = await self.memory.list_facts(tc.principal)
            facts = sorted(every, key=lambda f: (-f.updated_at, f.id))[:limit]
        if not facts:
            return ToolOutput("Nothing is remembered about the user" + (" on this." if query else "."), data=[])
        return ToolOutput("\n".join(_fact_line(f) for f in facts), data=[_fact_data(f) for f in facts])


class MemoryRemember:
    """``memory_remember``: one memory stored for the caller (a duplicate confirms the known one)."""

    def __init__(self, memory: MemoryService) -> None:
        from ..conversations.memory import KINDS, MAX_TEXT

        self.spec = ToolSpec(
            "memory_remember", "memory_remember",
            "Remember something about the user for later conversations: one short sentence about them in the "
            "third person, without a subject (\"Lives in Lyon.\", \"Prefers answers in French.\"). Only what the "
            "user said about themselves.",
            object_schema({
                "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "description": "The memory."},
                "kind": {"type": "string", "enum": list(KINDS),
                         "description": "fact (default), interest or preference."},
            }, ["text"]),
        )
        self.memory = memory
        self.max_text = MAX_TEXT
        self.kinds = KINDS

    async def call(self, arguments: dict[str, Any], tc: ToolContext) -> ToolOutput:
        from ..conversations.memory import Candidate, normalize

        args = Args(arguments, self.spec)
        text = " ".join(args.required_text("text", max_chars=self.max_text).split())
        kind = args.text("kind", max_chars=20) or "fact"
        if kind not in self.kinds:
            raise ToolError(f"memory_remember: 'kind' is one of {', '.join(self.kinds)}")
        if not normalize(text):
            raise ToolError("memory_remember: a memory needs some words")
        user_id = tc.principal.user_id
        if not await self.memory.enabled(user_id):
            raise ToolError(f"memory_remember: {_MEMORY_OFF}")
        touched = await self.memory.remember(user_id, [Candidate(kind, text)], source_message_id=None,
                                             source_thread_id=None)
        if not touched:
            raise ToolError("memory_remember: the same memory was being stored at the same moment; recall to check")
        fact = touched[0]
        said = "Already remembered (confirmed)" if fact.mentions > 1 else "Remembered"
        return ToolOutput(f"{said}: {fact.id} ({fact.kind}) {fact.text}", data=_fact_data(fact))


class MemoryForget:
    """``memory_forget``: one of the caller's memories deleted by id."""

    def __init__(self, memory: MemoryService) -> None:
        self.spec = ToolSpec(
            "memory_forget", "memory_forget",
            "Forget (delete) one of the user's memories by its id (memory_recall gives the ids).",
            object_schema({"id": {"type": "string", "minLength": 1, "maxLength": 64,
                                  "description": "The memory's id."}}, ["id"]),
        )
        self.memory = memory

    async def call(self, arguments: dict[str, Any], tc: ToolContext) -> ToolOutput:
        args = Args(arguments, self.spec)
        fact_id = args.required_text("id", max_chars=64)
        try:
            await self.memory.delete(tc.principal, fact_id)
        except ThinktankError as exc:
            raise ToolError(f"memory_forget: {exc.message}") from None
        return ToolOutput(f"Forgotten: {fact_id}", data={"id": fact_id})


class CurrentTime:
    """``current_time``: the injected clock's time, in UTC or an IANA zone."""

    def __init__(self, clock: Clock) -> None:
        self.spec = ToolSpec(
            "current_time", "current_time",
            "The current date and time, in UTC or in the named IANA time zone (\"Europe/Paris\").",
            object_schema({"timezone": {"type": "string", "maxLength": 64,
                                  "description": "An IANA time zone name (default UTC)."}}, []),
        )
        self.clock = clock

    async def call(self, arguments: dict[str, Any], tc: ToolContext) -> ToolOutput:
        args = Args(arguments, self.spec)
        name = args.text("timezone", max_chars=64) or "UTC"
        try:
            zone = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise ToolError(f"current_time: unknown time zone '{name}'; use an IANA name such as "
                            "'UTC' or 'Europe/Paris'") from None
        now = datetime.fromtimestamp(self.clock.time(), tz=zone)
        iso = now.isoformat(timespec="seconds")
        return ToolOutput(f"{iso} ({name}, {now.strftime('%A')})",
                          data={"iso": iso, "timezone": name, "unix": self.clock.time()})


# -- the set -------------------------------------------------------------------------------------

class BuiltinTools:
    """The built-in tools over the app's services, one instance each, shared by every run (they keep
    no state of their own between calls)."""

    def __init__(self, catalog: Catalog, knowledge: KnowledgeService, memory: MemoryService,
                 fetcher: UrlFetcher, clock: Clock) -> None:
        """``fetcher``: the app's (public addresses only); ``clock``: what ``current_time`` reads."""
        self._tools: dict[str, Tool] = {
            "knowledge_search": KnowledgeSearch(knowledge),
            "ask_model": AskModel(catalog),
            "fetch_url": FetchUrl(fetcher),
            "memory_recall": MemoryRecall(memory),
            "memory_remember": MemoryRemember(memory),
            "memory_forget": MemoryForget(memory),
            "current_time": CurrentTime(clock),
        }
        self._fetch = self._tools["fetch_url"]

    def use_fetcher(self, fetcher: UrlFetcher) -> None:
        """Fetch with ``fetcher`` from now on (a test's, allowed to reach its loopback server)."""
        assert isinstance(self._fetch, FetchUrl)
        self._fetch.fetcher = fetcher
        assert tuple(self._tools) == BUILTIN_TOOLS

    @staticmethod
    def names() -> tuple[str, ...]:
        """Every built-in tool's name (the same as :data:`~.config.BUILTIN_TOOLS`)."""
        return BUILTIN_TOOLS

    def get(self, name: str) -> Tool | None:
        """The built-in tool called ``name``, None for any other name."""
        return self._tools.get(name)
