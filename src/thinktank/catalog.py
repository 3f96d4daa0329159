"""The catalog: every public name as a ChatModel, for one principal.

A name is a deployment, a group or an alias (served by the Router), ``ensemble/<name>``,
``debate/<name>`` or ``agent/<name>`` (a run), or ``kb/<name>`` (the knowledge model grounded in that knowledge base); a
chat request's ``knowledge_bases`` grounds any of them. Composites hold the models they use by name and
reach them through the catalog again, so any name works in any role: an ensemble member that is
``kb/handbook``, a debate expert that is ``ensemble/council``, a thread on ``debate/panel``.

This is the one place that checks a key's allowed models (every name a request reaches, directly or
through a composite, must be allowed) and that refuses cycles (an ensemble containing itself, directly
or through another model), with the path named.

The catalog is itself a ChatModel routed by ``request.model``: ``catalog.complete(request, ctx)`` is what
a composite calls for each step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .accounts.principal import Principal
from .errors import InvalidRequestError, ModelNotFoundError
from .gateway.context import CallContext
from .gateway.router import Router
from .names import KB_PREFIX, MAX_DEPTH, RUN_PREFIXES, find_cycle, reachable
from .types import ChatChunk, ChatRequest, ChatResponse

_COMPOSITE = (KB_PREFIX, *RUN_PREFIXES)

if TYPE_CHECKING:
    from .deliberation.service import Deliberation
    from .knowledge.grounded import GroundedModels, KnowledgeParams
    from .knowledge.service import KnowledgeService
    from .providers.base import ChatModel

__all__ = ["KB_PREFIX", "Catalog", "ModelEntry", "RoutedModel", "refuse_tool_sources"]

Kind = Literal["model", "group", "alias", "ensemble", "debate", "agent", "knowledge_base"]
RunKind = Literal["ensemble", "debate", "agent"]


def _kind(prefix: str) -> RunKind:
    return "ensemble" if prefix == "ensemble" else "debate" if prefix == "debate" else "agent"


@dataclass(frozen=True)
class ModelEntry:
    """One name a principal may use, as ``/v1/models`` lists it."""

    id: str
    kind: Kind
    owned_by: str
    description: str | None = None


class RoutedModel:
    """A deployment, group or alias: the Router serves it (retries, fallbacks, budgets, cost)."""

    def __init__(self, router: Router, name: str) -> None:
        self._router = router
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def _for_me(self, request: ChatRequest) -> ChatRequest:
        return request if request.model == self._name else request.model_copy(update={"model": self._name})

    async def complete(self, request: ChatRequest, ctx: CallContext | None = None) -> ChatResponse:
        return await self._router.complete(self._for_me(request), ctx)

    def stream(self, request: ChatRequest, ctx: CallContext | None = None) -> AsyncIterator[ChatChunk]:
        return self._router.stream(self._for_me(request), ctx)


_SOURCE_FIELDS = ("mcp_servers", "mcp_server", "mcp", "servers", "command", "server_url")


def refuse_tool_sources(request: ChatRequest) -> None:
    """400 for a request that names an MCP server or a command: thinktank connects only to the MCP servers of
    its own configuration and runs no command a request gives. Tools in a request are functions (the client
    runs them), as in OpenAI's API."""
    named = next((f for f in _SOURCE_FIELDS if f in (request.model_extra or {})), None)
    if named is not None:
        raise InvalidRequestError(f"{named}: a request cannot name MCP servers or commands; agents use the MCP "
                                  "servers of the server's configuration", param=named)
    for i, tool in enumerate(request.tools or []):
        if tool.get("type", "function") != "function" or any(f in tool for f in _SOURCE_FIELDS):
            raise InvalidRequestError(f"tools[{i}]: only function tools (run by the client) are accepted; thinktank "
                                      "does not connect to MCP servers or run commands named in a request",
                                      param=f"tools[{i}]")


class Catalog:
    """Names to ChatModels. ``bind_runs`` and ``bind_knowledge`` add ensembles and debates, and knowledge
    bases (the app factory does; a catalog of the router alone serves its deployments)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.config = router.config
        self._runs: Deliberation | None = None
        self._knowledge: KnowledgeService | None = None
        self._grounding: GroundedModels | None = None
        self._routed_models: dict[str, RoutedModel] = {}
        """One RoutedModel per name served (they hold nothing but the name)."""

    def bind_runs(self, runs: Deliberation) -> None:
        """(The configuration's own cycles were refused when it was read: ``GatewayConfig``.)"""
        self._runs = runs

    def bind_knowledge(self, knowledge: KnowledgeService) -> None:
        self._knowledge = knowledge

    @property
    def name(self) -> str:
        return "catalog"

    # -- what a name uses -------------------------------------------------------------------------
    def knowledge_model(self) -> str | None:
        """The model behind ``kb/<name>``: the configured one, else the first chat model, else None."""
        if self.config.knowledge.model:
            return self.config.knowledge.model
        return next((d.name for d in self.router.deployments if d.config.mode == "chat"), None)

    def uses(self, name: str) -> list[str]:
        """The names ``name`` calls (directly): an ensemble's members, judges and chairman; a debate's
        models and its personas' own; the knowledge model of ``kb/...``. Nothing for the router's names."""
        if name.startswith(KB_PREFIX):
            answering = self.knowledge_model()
            return [answering] if answering else []
        if name.startswith(RUN_PREFIXES) and self._runs is not None:
            kind, short = name.split("/", 1)
            cfg = self._runs.table(_kind(kind)).get(short)
            return self._runs.models_of(cfg) if cfg is not None else []
        return []

    def _refuse_cycles(self, root: str, *, start: Iterable[str] | None = None) -> None:
        """A name that reaches itself (or nests too deep) is a 400 naming the path."""
        why = find_cycle(root, self.uses, start=start)
        if why is not None:
            raise InvalidRequestError(why, param="model", code="model_cycle")

    # -- access ----------------------------------------------------------------------------------
    def allows(self, principal: Principal | None, name: str) -> bool:
        """Whether ``name`` exists here and ``principal`` may use it (a key may be limited to some models)."""
        if principal is not None and not principal.may_use(name):
            return False
        return self._exists(name)

    def permit(self, principal: Principal | None, name: str) -> None:
        """404 unless ``principal`` may use ``name`` (as for a name that does not exist: a key does not learn
        what it may not use). Existence is the caller's to check (an embedding model, say)."""
        if principal is not None:
            principal.check_model(name)

    def _exists(self, name: str) -> bool:
        if name.startswith(KB_PREFIX):
            return bool(name[len(KB_PREFIX):].strip()) and self.knowledge_model() is not None
        if name.startswith(RUN_PREFIXES):
            if self._runs is None:
                return False
            kind, short = name.split("/", 1)
            return short in self._runs.table(_kind(kind))
        try:
            self.router.resolve(name)
        except ModelNotFoundError:
            return False
        return True

    def check(self, principal: Principal | None, name: str, *, uses: Iterable[str] | None = None,
              role: str = "model") -> None:
        """404 unless ``name`` exists and is allowed to ``principal``; 400 naming the model unless every name
        it reaches (``uses``, default: its own) is too; 400 naming the path for a cycle."""
        if uses is None:
            self.permit(principal, name)
            if not self._exists(name):
                if name.startswith(KB_PREFIX) and not name[len(KB_PREFIX):].strip():
                    raise InvalidRequestError("model: name the knowledge base, as kb/<name>", param="model")
                if name.startswith(KB_PREFIX):
                    raise InvalidRequestError(
                        f"'{name}' needs a model to answer with, and this gateway has no chat model; configure one "
                        "(and optionally knowledge: {model: ...}).", param="model")
                raise ModelNotFoundError(
                    f"The model '{name}' does not exist here. GET /v1/models lists the models you can use.",
                    param="model")
            if not name.startswith(_COMPOSITE):
                return  # the router's: it uses no other name
        self._refuse_cycles(name, start=uses)
        seen: set[str] = set()
        pending = list(self.uses(name) if uses is None else uses)
        while pending:
            used = pending.pop()
            if used in seen:
                continue
            seen.add(used)
            if not self.allows(principal, used):
                raise InvalidRequestError(
                    f"The model '{used}' used by '{name}' does not exist here (or is not allowed to your key).",
                    param=role, code="model_not_found")
            pending.extend(self.uses(used))

    # -- resolving -------------------------------------------------------------------------------
    def resolve(self, name: str, principal: Principal | None = None) -> ChatModel:
        """The ChatModel for ``name``, checked for ``principal`` (everything it reaches included)."""
        self.check(principal, name)
        return self._model(name)

    def _model(self, name: str) -> ChatModel:
        if name.startswith(RUN_PREFIXES):
            assert self._runs is not None  # _exists said so
            from .deliberation.models import RunModel

            kind, short = name.split("/", 1)
            return RunModel(self._runs, _kind(kind), short)
        if name.startswith(KB_PREFIX):
            answering = self.knowledge_model()
            assert answering is not None
            return self.grounding().wrap(self._model(answering), [name[len(KB_PREFIX):].strip()], name=name)
        routed = self._routed_models.get(name)
        if routed is None:
            routed = self._routed_models[name] = RoutedModel(self.router, name)
        return routed

    def for_request(self, request: ChatRequest, principal: Principal | None) -> tuple[ChatModel, ChatRequest]:
        """The model that answers a chat request, and the request it gets: thinktank's own fields
        (``knowledge_bases``, ``knowledge``) taken off, and the model grounded when they ask for it."""
        extra = request.model_extra or {}
        refuse_tool_sources(request)
        if "knowledge_bases" not in extra and "knowledge" not in extra:
            return self.resolve(request.model, principal), request
        refs, params, rest = self.grounding().fields(extra)
        if not refs and not request.model.startswith(KB_PREFIX):
            raise InvalidRequestError("knowledge: name the knowledge bases in knowledge_bases (or use a kb/<name> "
                                      "model)", param="knowledge_bases")
        plain = request.model_copy()
        plain.__pydantic_extra__ = rest
        return self.grounded(request.model, principal, refs, params=params), plain

    def grounded(self, name: str, principal: Principal | None, knowledge_bases: list[str], *,
                 params: KnowledgeParams | None = None) -> ChatModel:
        """``name`` answering from ``knowledge_bases`` too (checked for ``principal``, and so is a requested
        rerank model): grounded once, so ``kb/x`` with more knowledge bases searches them all together."""
        self.check(principal, name)
        if params is not None and params.rerank_model is not None:
            self._check_helper(principal, params.rerank_model, "knowledge.rerank_model")
        answering = self.knowledge_model() if name.startswith(KB_PREFIX) else name
        assert answering is not None  # check() said so
        return self.grounding().wrap(self._model(answering), knowledge_bases, name=name, params=params)

    def _check_helper(self, principal: Principal | None, name: str, param: str) -> None:
        if not self.allows(principal, name):
            raise InvalidRequestError(f"The model '{name}' does not exist here (or is not allowed to your key).",
                                      param=param, code="model_not_found")

    def grounding(self) -> GroundedModels:
        """Grounded models, made on first use (no knowledge imports for gateways that never ground)."""
        if self._grounding is None:
            if self._knowledge is None:
                raise InvalidRequestError("Knowledge bases are not available in this server.",
                                          param="knowledge_bases")
            from .knowledge.grounded import GroundedModels

            self._grounding = GroundedModels(self._knowledge, self, self.config.knowledge)
        return self._grounding

    # -- the catalog as a model routed by request.model ------------------------------------------
    def _routed(self, request: ChatRequest, ctx: CallContext | None) -> ChatModel:
        principal = ctx.principal if ctx is not None else None
        if ctx is not None and ctx.depth > MAX_DEPTH:
            raise InvalidRequestError(f"models nest deeper than {MAX_DEPTH} levels", param="model",
                                      code="model_cycle")
        self.permit(principal, request.model)
        if not self._exists(request.model):
            self.check(None, request.model)  # raises what a client would get for the name
        return self._model(request.model)

    async def complete(self, request: ChatRequest, ctx: CallContext | None = None) -> ChatResponse:
        return await self._routed(request, ctx).complete(request, ctx)

    async def stream(self, request: ChatRequest, ctx: CallContext | None = None) -> AsyncIterator[ChatChunk]:
        async for chunk in self._routed(request, ctx).stream(request, ctx):
            yield chunk

    # -- listing ---------------------------------------------------------------------------------
    async def models(self, principal: Principal, *, knowledge_bases: bool = True) -> list[ModelEntry]:
        """Every name ``principal`` may use: deployments, groups, aliases, ensembles, debates and (one query)
        the knowledge bases they can read."""
        out = [ModelEntry(m.id, m.kind, m.owned_by, m.description) for m in self.router.models()
               if principal.may_use(m.id)]
        if self._runs is not None:
            for mid, kind, description in self._runs.models():
                if principal.may_use(mid):  # listed as the key names it; using it says what it lacks
                    out.append(ModelEntry(mid, _kind(kind), "thinktank", description))
        answering = self.knowledge_model()
        if knowledge_bases and self._knowledge is not None and answering is not None \
                and self.allows(principal, answering):
            from .knowledge.grounding import knowledge_base_models

            for kb in await knowledge_base_models(self._knowledge.db, principal):
                if principal.may_use(kb.id):
                    out.append(ModelEntry(kb.id, "knowledge_base", "thinktank", kb.description or
                                          f"answers from knowledge base {kb.id[len(KB_PREFIX):]} with {answering}"))
        return out

    def configured(self) -> list[str]:
        """Every name the configuration defines (deployments, groups, aliases, ensembles, debates), for
        anyone; knowledge bases, which are data, come with :meth:`models`."""
        return [m.id for m in self.router.models()] + ([mid for mid, _, _ in self._runs.models()] if self._runs else [])

    def context_window(self, name: str, default: int) -> int:
        """The context window a prompt for ``name`` must fit: the smallest of the deployments it reaches
        (a composite's members all get the prompt), ``default`` when none says."""
        windows: list[int] = []
        for current in reachable(name, self.uses):
            if self.uses(current):
                continue  # a composite: its members get the prompt
            try:
                group = self.router.resolve(current)
            except ModelNotFoundError:
                continue
            windows += [d.config.context_window for d in group.deployments if d.config.context_window]
        return min(windows) if windows else default

