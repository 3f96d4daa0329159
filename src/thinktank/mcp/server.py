"""The MCP server built for one caller: thinktank's tools, resources and prompts on the ``mcp`` SDK's ``Server``.

The SDK's low-level ``Server`` rather than its ``MCPServer``: a server is built for every caller (every HTTP
request, see :mod:`.http`), and the low-level one costs microseconds to build where ``MCPServer`` introspects
every function again (about 40 ms) and configures the process's root logger on the way. The tools' schemas
are the argument models of :mod:`.inputs`, made once.

Errors: a thinktank error (a model that does not exist or is not allowed, a budget, a run that failed) is a
tool result with ``isError`` and its message, as is an argument of the wrong type; a resource or prompt that
is not there is a JSON-RPC error; nothing the caller sends makes the server fail (anything unexpected is
logged and answered with a generic message).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import mcp_types as types
import orjson
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS
from pydantic import BaseModel, ValidationError

from .. import __version__
from ..api.routing import unencodable_text
from ..errors import ThinktankError
from . import inputs
from .caller import RUN_DOCUMENTS, Answer, Caller, document_uri, documents_uri, run_document_uri

if TYPE_CHECKING:
    from ..deliberation.experts import Persona

__all__ = ["INSTRUCTIONS", "TOOLS", "ToolSpec", "build_server"]

log = logging.getLogger("thinktank.mcp")

Ctx = ServerRequestContext[Any, Any]

INSTRUCTIONS = (
    "thinktank: many language models behind one gateway. Ask any model you may use (list_models names them; "
    "ensemble/<name> and debate/<name> answer with several models at once), run an ensemble or a debate and "
    "follow its progress, search your knowledge bases (answers cite document, position and snippet) and add "
    "documents to them, and keep memories about you (remember, recall, forget). Debate runs with a plan "
    "write thinktank://runs/<run_id>/plan.md and tasks.md; knowledge-base documents are resources too. The "
    "prompts are expert personas: each sets up a model to answer as that expert."
)
_INTERNAL = "Internal error; see the server log."
_MAX_LISTED = 500
"""The most documents ``resources/list`` names (the rest are reachable through the templates)."""


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name, what it is for, its arguments (a model of :mod:`.inputs`) and hints about it."""

    name: str
    title: str
    description: str
    arguments: type[BaseModel]
    read_only: bool = False
    destructive: bool = False
    open_world: bool = False
    """It reaches beyond thinktank (models upstream, the web)."""


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec("list_models", "List models", "The model names you may use: models, groups and aliases, ensembles, "
             "debates, agents and knowledge bases (kb/<name>).", inputs.ListModelsIn, read_only=True),
    ToolSpec("ask_model", "Ask a model", "Ask any model you may use (a name from list_models) one question; "
             "optionally grounded in your knowledge bases, then the answer cites its sources.", inputs.AskModelIn,
             open_world=True),
    ToolSpec("run_ensemble", "Run an ensemble", "Several models answer a question at once, their answers are "
             "ranked and the best (or a synthesis) comes back. Reports progress as each stage finishes.",
             inputs.RunEnsembleIn, open_world=True),
    ToolSpec("run_debate", "Run a debate", "A panel of expert personas debates a question over rounds until it "
             "converges; a moderator writes the answer (and, with plan, plan.md and tasks.md). Reports progress "
             "as each stage and round finishes.", inputs.RunDebateIn, open_world=True),
    ToolSpec("get_run", "Get a run", "An ensemble or debate run of yours: its status, answer, steps and cost.",
             inputs.GetRunIn, read_only=True),
    ToolSpec("search_knowledge", "Search knowledge bases", "The passages of your knowledge bases that best match "
             "a query, each with its document, position, page and snippet to cite.", inputs.SearchKnowledgeIn,
             read_only=True),
    ToolSpec("add_document", "Add a document", "Add a text, or a public web page or file by its URL, to a "
             "knowledge base (yours or shared with you; a reader's document waits for an owner's review).",
             inputs.AddDocumentIn, open_world=True),
    ToolSpec("remember", "Remember", "Keep a memory about you (a fact, an interest or a preference) for later "
             "conversations.", inputs.RememberIn),
    ToolSpec("recall", "Recall", "Your memories, those most related to a query first.", inputs.RecallIn,
             read_only=True),
    ToolSpec("forget", "Forget", "Delete one of your memories.", inputs.ForgetIn, destructive=True),
)
_BY_NAME = {t.name: t for t in TOOLS}


@functools.cache
def _input_schema(name: str) -> dict[str, Any] | None:
    """A tool's ``inputSchema`` (made once: the models do not change)."""
    spec = _BY_NAME.get(name)
    return None if spec is None else spec.arguments.model_json_schema()


@functools.cache
def _tools() -> list[types.Tool]:
    return [
        types.Tool(name=t.name, title=t.title, description=t.description, input_schema=_input_schema(t.name) or {},
                   annotations=types.ToolAnnotations(title=t.title, read_only_hint=t.read_only,
                                                     destructive_hint=t.destructive, open_world_hint=t.open_world))
        for t in TOOLS
    ]


# -- results ---------------------------------------------------------------------------------------

def _json(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def _result(text: str, data: Mapping[str, Any] | None = None,
            links: Sequence[types.ResourceLink] = ()) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text), *links],
                                structured_content=dict(data) if data is not None else None)


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _thinktank_error(exc: ThinktankError) -> str:
    if exc.status == 429 and exc.retry_after is not None:
        return f"{exc.message} (try again in {max(1, round(exc.retry_after))} s)"
    return exc.message


def _arguments_error(tool: str, exc: ValidationError) -> str:
    """The first problem with a tool's arguments, named by the argument (union arms left out)."""
    errors = exc.errors(include_url=False, include_input=False)
    useful = [e for e in errors if e["type"] != "none_required"] or errors
    first = useful[0]
    loc = first["loc"]
    where = ".".join([str(loc[0]), *(str(p) for p in loc[1:] if isinstance(p, int))]) if loc else "arguments"
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(useful) - 1} more problems)" if len(useful) > 1 else ""
    return f"Invalid arguments for {tool}: {where}: {message}{more}"


def _unencodable(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` holds a string that is not valid Unicode (a lone surrogate: JSON lets one through as
    ``"\\ud800"``; no database, model or response can carry it)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if depth > 32:
        return False
    if isinstance(value, Mapping):
        return any(_unencodable(k, depth + 1) or _unencodable(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_unencodable(v, depth + 1) for v in value)
    return False


_BAD_UNICODE = "The request holds text that is not valid Unicode (a lone surrogate such as \\ud800); send UTF-8 text."


def _answer_text(answer: Answer) -> str:
    """The answer, then the passages it cites as search_knowledge shows them."""
    parts = [answer.text]
    if answer.citations:
        cited = []
        for i, c in enumerate(answer.citations, 1):
            page = f", page {c['page']}" if c.get("page") else ""
            cited.append(f"[{c.get('index', i)}] {c.get('title') or c.get('source')} ({c.get('kb_name')}, document "
                         f"{c.get('document_id')}, position {c.get('position')}{page})")
        parts.append("Sources:\n" + "\n".join(cited))
    return "\n\n".join(p for p in parts if p)


def _run_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    result = record.get("result") or {}
    return {k: v for k, v in {
        "id": record.get("id"), "kind": record.get("kind"), "name": record.get("name"),
        "status": record.get("status"), "question": record.get("question"), "answer": result.get("answer"),
        "cost_usd": record.get("cost_usd"), "documents": record.get("documents") or None,
        "error": record.get("error"), "created_at": record.get("created_at"),
        "finished_at": record.get("finished_at"),
    }.items() if v is not None}


# -- resources -------------------------------------------------------------------------------------

_RUN_DOC = re.compile(r"^thinktank://runs/([^/?#]+)/(plan\.md|tasks\.md)$")
_KB_DOCS = re.compile(r"^thinktank://knowledge-bases/([^/?#]+)/documents/?$")
_KB_DOC = re.compile(r"^thinktank://knowledge-bases/([^/?#]+)/documents/([^/?#]+)$")

TEMPLATES = (
    types.ResourceTemplate(uri_template="thinktank://runs/{run_id}/plan.md", name="plan.md", title="A debate's plan",
                           description="The plan a debate run with plan wrote.", mime_type="text/markdown"),
    types.ResourceTemplate(uri_template="thinktank://runs/{run_id}/tasks.md", name="tasks.md",
                           title="A debate's tasks", description="The task list a debate run with plan wrote.",
                           mime_type="text/markdown"),
    types.ResourceTemplate(uri_template="thinktank://knowledge-bases/{kb}/documents", name="documents",
                           title="A knowledge base's documents",
                           description="The documents of a knowledge base (its id or name), as JSON.",
                           mime_type="application/json"),
    types.ResourceTemplate(uri_template="thinktank://knowledge-bases/{kb}/documents/{doc_id}", name="document",
                           title="A document's text", description="The text of a knowledge base's document.",
                           mime_type="text/plain"),
)


def _contents(uri: str, text: str, mime_type: str) -> types.ReadResourceResult:
    return types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, text=text, mime_type=mime_type)])


# -- the handlers ----------------------------------------------------------------------------------

Tool = Callable[[Any, Ctx], Awaitable[types.CallToolResult]]


class _Handlers:
    """The server's request handlers, for one caller."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self._tools: dict[str, Tool] = {
            "list_models": self._list_models, "ask_model": self._ask_model, "run_ensemble": self._run,
            "run_debate": self._run, "get_run": self._get_run, "search_knowledge": self._search,
            "add_document": self._add_document, "remember": self._remember, "recall": self._recall,
            "forget": self._forget,
        }

    # -- tools -----------------------------------------------------------------------------------

    async def list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=_tools())

    async def call_tool(self, ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        spec, tool = _BY_NAME.get(params.name), self._tools.get(params.name)
        if spec is None or tool is None:
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {params.name!r}. tools/list names the tools.")
        raw = params.arguments or {}
        if _unencodable(raw):
            return _error(_BAD_UNICODE)
        try:
            args = spec.arguments.model_validate(raw)
        except ValidationError as exc:
            return _error(_arguments_error(spec.name, exc))
        try:
            return await tool(args, ctx)
        except ThinktankError as exc:
            return _error(_thinktank_error(exc))
        except Exception as exc:
            client = unencodable_text(exc)
            if client is not None:
                return _error(client.message)
            log.exception("the MCP tool %s failed", spec.name)
            return _error(_INTERNAL)

    async def _list_models(self, args: inputs.ListModelsIn, ctx: Ctx) -> types.CallToolResult:
        models = await self.caller.models()
        lines = [f"{m['id']} ({m['kind']})" + (f": {m['description']}" if m.get("description") else "")
                 for m in models]
        return _result("\n".join(lines) or "No models are available to you.", {"models": models})

    async def _ask_model(self, args: inputs.AskModelIn, ctx: Ctx) -> types.CallToolResult:
        answer = await self.caller.ask(args)
        data = {"model": answer.model, "answer": answer.text, "served_by": answer.served_by, "run_id": answer.run_id,
                "cost_usd": answer.cost_usd, "citations": answer.citations, "usage": answer.usage}
        return _result(_answer_text(answer), {k: v for k, v in data.items() if v is not None})

    async def _run(self, args: inputs.RunEnsembleIn | inputs.RunDebateIn, ctx: Ctx) -> types.CallToolResult:
        async def progress(done: int, message: str) -> None:
            await ctx.session.report_progress(done, None, message)

        record = await self.caller.run(args, progress)
        summary = _run_summary(record)
        run_id = str(record["id"])
        links = [types.ResourceLink(uri=run_document_uri(run_id, name), name=name, mime_type="text/markdown",
                                    title=f"{name} of run {run_id}")
                 for name in record.get("documents") or () if name in RUN_DOCUMENTS]
        if record["status"] != "completed":
            why = record.get("error") or record["status"]
            return types.CallToolResult(content=[types.TextContent(text=f"Run {run_id} {record['status']}: {why}")],
                                        structured_content=summary, is_error=True)
        answer = summary.get("answer") or ""
        cost = f", cost ${record.get('cost_usd') or 0:.6f}"
        return _result(f"{answer}\n\n(run {run_id}{cost})", summary, links)

    async def _get_run(self, args: inputs.GetRunIn, ctx: Ctx) -> types.CallToolResult:
        record = await self.caller.get_run(args.run_id)
        return _result(_json(_run_summary(record)), record)

    async def _search(self, args: inputs.SearchKnowledgeIn, ctx: Ctx) -> types.CallToolResult:
        hits = await self.caller.search(args)
        lines = []
        for h in hits:
            page = f", page {h['page']}" if h.get("page") else ""
            lines.append(f"[{h['rank']}] {h['title'] or h['source']} ({h['knowledge_base']}, document "
                         f"{h['document_id']}, position {h['position']}{page})\n{h['snippet']}")
        text = "\n\n".join(lines) or f"Nothing in {', '.join(args.knowledge_bases)} matches the query."
        return _result(text, {"query": args.query, "results": hits})

    async def _add_document(self, args: inputs.AddDocumentIn, ctx: Ctx) -> types.CallToolResult:
        added = await self.caller.add_document(args)
        pending = added.get("document_status") == "pending"
        text = (f"{added['source']}: {added['status']} in {added['knowledge_base']} (document "
                f"{added['document_id']}, {added['chunks']} passages)"
                + ("; it waits for an owner's review before it is searchable" if pending else ""))
        links = ([types.ResourceLink(uri=added["uri"], name=added["source"], mime_type="text/plain")]
                 if "uri" in added else [])
        return _result(text, added, links)

    async def _remember(self, args: inputs.RememberIn, ctx: Ctx) -> types.CallToolResult:
        fact = await self.caller.remember(args)
        text = f"Remembered ({fact['kind']}, {fact['id']}): {fact['text']}" if fact["new"] else \
            f"Already known, confirmed ({fact['id']}): {fact['text']}"
        if not fact["enabled"]:
            text += " (Memory is switched off for you: it is kept, but not used until you switch it on.)"
        return _result(text, fact)

    async def _recall(self, args: inputs.RecallIn, ctx: Ctx) -> types.CallToolResult:
        facts = await self.caller.recall(args)
        text = "\n".join(f"- ({f['kind']}, {f['id']}) {f['text']}" for f in facts) or "No memories."
        return _result(text, {"memories": facts, "enabled": await self.caller.memory_enabled()})

    async def _forget(self, args: inputs.ForgetIn, ctx: Ctx) -> types.CallToolResult:
        await self.caller.forget(args.memory_id)
        return _result(f"Forgot {args.memory_id}.", {"deleted": args.memory_id})

    # -- resources -------------------------------------------------------------------------------

    async def list_resources(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        resources: list[types.Resource] = []
        async with _resource_errors("resources/list"):
            for view in await self.caller.knowledge_bases():
                kb = view.kb
                resources.append(types.Resource(uri=documents_uri(kb.id), name=f"{kb.name}/documents",
                                                title=f"Documents of {kb.name}", mime_type="application/json"))
                if len(resources) >= _MAX_LISTED:
                    break
                _, docs = await self.caller.documents(kb.id)
                for doc in docs[:_MAX_LISTED - len(resources)]:
                    resources.append(types.Resource(
                        uri=document_uri(kb.id, doc.id), name=f"{kb.name}/{doc.source}", title=doc.title or None,
                        description=f"{doc.kind} document in {kb.name} ({doc.status})", mime_type="text/plain"))
        return types.ListResourcesResult(resources=resources)

    async def list_resource_templates(self, ctx: Ctx, params: types.PaginatedRequestParams | None
                                      ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=list(TEMPLATES))

    async def read_resource(self, ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        if _unencodable(uri):
            raise MCPError(INVALID_PARAMS, _BAD_UNICODE)
        async with _resource_errors(uri):
            if found := _RUN_DOC.match(uri):
                text = await self.caller.run_document(unquote(found[1]), found[2])
                return _contents(uri, text, "text/markdown")
            if found := _KB_DOC.match(uri):
                _, text = await self.caller.document_text(unquote(found[1]), unquote(found[2]))
                return _contents(uri, text, "text/plain")
            if found := _KB_DOCS.match(uri):
                kb, docs = await self.caller.documents(unquote(found[1]))
                listing = [{"id": d.id, "uri": document_uri(kb.id, d.id), "source": d.source, "title": d.title,
                            "kind": d.kind, "status": d.status, "chunks": d.chunk_count, "updated_at": d.updated_at}
                           for d in docs]
                return _contents(uri, _json({"knowledge_base": kb.name, "knowledge_base_id": kb.id,
                                             "documents": listing}), "application/json")
        raise MCPError(INVALID_PARAMS, f"Unknown resource: {uri}. resources/templates/list names the resources.")

    # -- prompts ---------------------------------------------------------------------------------

    def _personas(self) -> dict[str, Persona]:
        slugs: dict[str, Persona] = {}
        for persona in self.caller.personas():
            slug = _slug(persona.name)
            while slug in slugs:
                slug += "-2"
            slugs[slug] = persona
        return slugs

    async def list_prompts(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        prompts = [
            types.Prompt(name=slug, title=p.name, description=f"Answer as {p.name}, an expert in {p.domain} "
                         f"({p.stance}).", arguments=[types.PromptArgument(
                             name="question", description="A question to ask the expert.", required=False)])
            for slug, p in self._personas().items()
        ]
        return types.ListPromptsResult(prompts=prompts)

    async def get_prompt(self, ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        persona = self._personas().get(params.name)
        if persona is None:
            raise MCPError(INVALID_PARAMS, f"Unknown prompt: {params.name!r}. prompts/list names the prompts.")
        arguments = dict(params.arguments or {})
        unknown = sorted(set(arguments) - {"question"})
        if unknown:
            raise MCPError(INVALID_PARAMS, f"Unknown prompt argument: {unknown[0]!r}; the prompt takes 'question'.")
        if _unencodable(arguments):
            raise MCPError(INVALID_PARAMS, _BAD_UNICODE)
        messages = [types.PromptMessage(role="user", content=types.TextContent(text=persona.system_prompt()))]
        question = (arguments.get("question") or "").strip()
        if question:
            messages.append(types.PromptMessage(role="user", content=types.TextContent(text=question)))
        return types.GetPromptResult(
            description=f"The system prompt of {persona.name} (use it as the system message), then the question.",
            messages=messages)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "persona"


@contextlib.asynccontextmanager
async def _resource_errors(what: str) -> AsyncIterator[None]:
    """Errors met reading resources as JSON-RPC errors: what is not found and the caller's other mistakes as
    invalid params (the SDK's convention), anything unexpected logged and answered generically."""
    try:
        yield
    except MCPError:
        raise
    except ThinktankError as exc:
        raise MCPError(INVALID_PARAMS if exc.status < 500 else INTERNAL_ERROR, exc.message, {"uri": what}) from None
    except Exception as exc:
        client = unencodable_text(exc)
        if client is not None:
            raise MCPError(INVALID_PARAMS, client.message) from None
        log.exception("reading %s failed", what)
        raise MCPError(INTERNAL_ERROR, _INTERNAL) from None


def build_server(caller: Caller) -> Server[Any]:
    """The MCP server answering for ``caller``: built in microseconds, for one HTTP request or a stdio session."""
    h = _Handlers(caller)
    return Server(
        "thinktank", version=__version__, title="thinktank", instructions=INSTRUCTIONS,
        get_tool_input_schema=_input_schema,
        on_list_tools=h.list_tools, on_call_tool=h.call_tool,
        on_list_resources=h.list_resources, on_list_resource_templates=h.list_resource_templates,
        on_read_resource=h.read_resource,
        on_list_prompts=h.list_prompts, on_get_prompt=h.get_prompt,
    )

