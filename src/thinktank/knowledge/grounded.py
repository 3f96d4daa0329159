"""Grounding as a model: ``GroundedModel(inner, knowledge_bases)`` answers with any inner model (a
deployment, an ensemble, a debate) from passages of the caller's knowledge bases, and returns the
passages it cites.

A chat request is grounded when it names knowledge bases or uses a ``kb/<name>`` model::

    {"model": "gpt-4o", "messages": [...], "knowledge_bases": ["handbook", "kb_0123abcd"],
     "knowledge": {"top_k": 6, "mode": "hybrid", "rerank_model": "gpt-4o-mini"}}

    {"model": "kb/handbook", "messages": [...]}

- ``knowledge_bases``: names or ids of knowledge bases the caller can read (one they cannot is a 404).
- ``knowledge`` (optional): ``top_k`` 1-50 passages (default from the gateway config, 6), ``mode``
  ``hybrid`` | ``keyword`` | ``vector``, ``rerank_model`` a model that reorders the candidates first.
- ``kb/<name>`` (or ``kb/<id>``) answers with the gateway's ``knowledge.model``, else its first chat
  model. Like any model name, a key restricted to some models may use ``kb/<name>`` only if it lists
  it, and the answering model (and a requested rerank model) must be allowed to the key too.
  ``knowledge_bases`` on a model needs no listing: read access to the knowledge base is what counts.

Neither field goes to the inner model. The answer comes back with ``citations``: the passages it cites
(in a stream, on a last chunk without choices).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..accounts.principal import Principal
from ..config import KnowledgeConfig
from ..errors import InvalidRequestError
from ..gateway.context import CallContext
from ..types import ChatChunk, ChatRequest, ChatResponse, message_text
from .grounding import Grounder, Grounding
from .retrieval import SearchOptions
from .service import KnowledgeService

if TYPE_CHECKING:
    from ..catalog import Catalog
    from ..providers.base import ChatModel

__all__ = ["FIELDS", "GroundedModel", "GroundedModels", "KnowledgeParams"]

FIELDS = ("knowledge_bases", "knowledge")
"""thinktank's own request fields: taken off the request before it goes to the inner model."""
_MAX_KBS = 16


class KnowledgeParams(BaseModel):
    """The ``knowledge`` object of a chat request."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(default=None, ge=1, le=50)
    mode: Literal["hybrid", "keyword", "vector"] | None = None
    rerank_model: str | None = Field(default=None, min_length=1, max_length=256)


def _kb_refs(raw: Any) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(r, str) and 0 < len(r.strip()) <= 200 for r in raw):
        raise InvalidRequestError("knowledge_bases: a list of knowledge base names or ids", param="knowledge_bases")
    if len(raw) > _MAX_KBS:
        raise InvalidRequestError(f"knowledge_bases: at most {_MAX_KBS}", param="knowledge_bases")
    return list(dict.fromkeys(r.strip() for r in raw))


def _params(raw: Any) -> KnowledgeParams:
    if raw is None:
        return KnowledgeParams()
    try:
        return KnowledgeParams.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(("knowledge", *(str(x) for x in err["loc"])))
        raise InvalidRequestError(f"{where}: {err['msg']}", param=where) from None


class GroundedModel:
    """``inner`` answering from passages of ``knowledge_bases``, with citations."""

    def __init__(self, inner: ChatModel, knowledge_bases: list[str], grounder: Grounder, *, name: str,
                 options: SearchOptions, rerank_model: str | None, rerank_if_allowed: str | None = None,
                 allows: Callable[[Principal, str], bool] = lambda _p, _m: True) -> None:
        """``rerank_model``: the caller asked for it (checked); ``rerank_if_allowed``: the configured one, used
        when the caller may use it (``allows`` says: the catalog's check)."""
        self.inner = inner
        self.knowledge_bases = knowledge_bases
        self._grounder = grounder
        self._name = name
        self._options = options
        self._rerank = rerank_model
        self._rerank_if_allowed = rerank_if_allowed
        self._allows = allows

    @property
    def name(self) -> str:
        return self._name

    async def _ground(self, request: ChatRequest, ctx: CallContext | None) -> tuple[ChatRequest, Grounding]:
        principal = ctx.principal if ctx is not None else None
        if principal is None:
            raise InvalidRequestError("A grounded answer needs a caller whose knowledge bases it reads.")
        rerank = self._rerank
        if rerank is None and self._rerank_if_allowed and self._allows(principal, self._rerank_if_allowed):
            rerank = self._rerank_if_allowed
        grounding = await self._grounder.ground(principal, self.knowledge_bases, request.messages,
                                                options=self._options, ctx=ctx, rerank_model=rerank)
        inner = request.model_copy(update={"model": self.inner.name, "messages": grounding.messages})
        return inner, grounding

    async def complete(self, request: ChatRequest, ctx: CallContext | None = None) -> ChatResponse:
        inner, grounding = await self._ground(request, ctx)
        response = await self.inner.complete(inner, ctx)
        answer = message_text(response.choices[0].message) if response.choices else ""
        response.citations = [c.to_dict() for c in grounding.cited(answer)]
        return response

    async def stream(self, request: ChatRequest, ctx: CallContext | None = None) -> AsyncIterator[ChatChunk]:
        inner, grounding = await self._ground(request, ctx)
        parts: list[str] = []
        last: ChatChunk | None = None
        async for chunk in self.inner.stream(inner, ctx):
            if chunk.note is None:
                last = chunk
                parts.extend(c.delta.content for c in chunk.choices if c.index == 0 and c.delta.content)
            yield chunk
        yield ChatChunk(id=last.id if last else "chatcmpl-thinktank", created=last.created if last else 0,
                        model=last.model if last else request.model, choices=[],
                        citations=[c.to_dict() for c in grounding.cited("".join(parts))])


class GroundedModels:
    """Makes grounded models: reads a request's knowledge fields, wraps a model in its knowledge bases."""

    def __init__(self, knowledge: KnowledgeService, catalog: Catalog, config: KnowledgeConfig) -> None:
        self.config = config
        self._allows = catalog.allows
        self.grounder = Grounder(knowledge, catalog, top_k=config.top_k, max_context_tokens=config.max_context_tokens)

    @staticmethod
    def fields(extra: dict[str, Any]) -> tuple[list[str], KnowledgeParams, dict[str, Any]]:
        """The knowledge bases and parameters a request names, and its other extra fields."""
        rest = {k: v for k, v in extra.items() if k not in FIELDS}
        return _kb_refs(extra.get("knowledge_bases")), _params(extra.get("knowledge")), rest

    def wrap(self, inner: ChatModel, knowledge_bases: list[str], *, name: str,
             params: KnowledgeParams | None = None) -> GroundedModel:
        params = params or KnowledgeParams()
        refs = list(knowledge_bases)
        if name.startswith("kb/"):
            refs = list(dict.fromkeys([name[3:].strip(), *refs]))
        return GroundedModel(inner, refs, self.grounder, name=name, rerank_model=params.rerank_model,
                             rerank_if_allowed=self.config.rerank_model, allows=self._allows, options=SearchOptions(
                                 top_k=params.top_k or self.config.top_k, mode=params.mode or "hybrid"))
