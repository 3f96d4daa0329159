"""Grounded chat on ``/v1/chat/completions``: the request fields that name knowledge bases, and the
request that goes upstream instead.

A request is grounded when it names knowledge bases or uses a ``kb/<name>`` model::

    {"model": "gpt-4o", "messages": [...], "knowledge_bases": ["handbook", "kb_0123abcd"],
     "knowledge": {"top_k": 6, "mode": "hybrid", "rerank_model": "gpt-4o-mini"}}

    {"model": "kb/handbook", "messages": [...]}

- ``knowledge_bases``: names or ids of knowledge bases the caller can read (one they cannot is a 404).
- ``knowledge`` (optional): ``top_k`` 1-50 passages (default from the gateway config, 6), ``mode``
  ``hybrid`` | ``keyword`` | ``vector``, ``rerank_model`` a model that reorders the candidates first.
- ``kb/<name>`` (or ``kb/<id>``) answers with the gateway's ``knowledge.model``, else its first chat
  model. Like any model name, a key restricted to some models may use ``kb/<name>`` only if it lists
  it; and, as for an ensemble's members, the answering model (and a requested rerank model) must be
  allowed to the key too. ``knowledge_bases`` on a normal model needs no listing: read access to the
  knowledge base is what counts.

Neither field goes upstream. The answer comes back with ``citations``: the passages it cites.
Ensembles and debates do not take knowledge bases (400).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..accounts.principal import Principal
from ..errors import InvalidRequestError, ModelNotFoundError
from ..gateway.context import CallContext
from ..knowledge.grounding import Grounder, Grounding
from ..knowledge.retrieval import SearchOptions
from ..types import ChatRequest
from .state import AppState

__all__ = ["FIELDS", "KB_PREFIX", "GroundedChat", "KnowledgeParams"]

KB_PREFIX = "kb/"
FIELDS = ("knowledge_bases", "knowledge")
"""thinktank's own request fields: taken off the request before it goes upstream."""
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


class GroundedChat:
    """Turns a grounded chat request into the request the answering model gets."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        cfg = state.router.config.knowledge
        self.config = cfg
        self.grounder = Grounder(state.knowledge, state.router, top_k=cfg.top_k,
                                 max_context_tokens=cfg.max_context_tokens)

    def answering_model(self) -> str | None:
        """The model behind ``kb/<name>``: the configured one, else the first chat model, else None."""
        if self.config.model:
            return self.config.model
        return next((d.name for d in self.state.router.deployments if d.config.mode == "chat"), None)

    def _check_model(self, principal: Principal, model: str, what: str, param: str) -> None:
        try:
            if not principal.may_use(model):
                raise ModelNotFoundError(model)
            self.state.router.resolve(model)
        except ModelNotFoundError:
            raise InvalidRequestError(f"The {what} '{model}' does not exist here (or is not allowed to your key).",
                                      param=param, code="model_not_found") from None

    async def prepare(self, request: ChatRequest, principal: Principal, ctx: CallContext) -> tuple[
            ChatRequest, Grounding]:
        """The request for the answering model (passages added, thinktank's fields removed) and its grounding."""
        extra = dict(request.model_extra or {})
        raw_refs, raw_params = extra.pop("knowledge_bases", None), extra.pop("knowledge", None)
        if request.model.startswith(("ensemble/", "debate/")):
            raise InvalidRequestError("Ensembles and debates do not take knowledge bases yet; use a single model "
                                      "or a kb/<name> model.", param="knowledge_bases")
        refs = _kb_refs(raw_refs)
        params = _params(raw_params)
        model = request.model
        if model.startswith(KB_PREFIX):
            ref = model[len(KB_PREFIX):].strip()
            if not ref:
                raise InvalidRequestError("model: name the knowledge base, as kb/<name>", param="model")
            refs = list(dict.fromkeys([ref, *refs]))
            answering = self.answering_model()
            if answering is None:
                raise InvalidRequestError(
                    f"'{model}' needs a model to answer with, and this gateway has no chat model; configure one "
                    "(and optionally knowledge: {model: ...}).", param="model")
            self._check_model(principal, answering, "answering model", "model")
            model = answering
        elif not refs:
            raise InvalidRequestError("knowledge: name the knowledge bases in knowledge_bases (or use a kb/<name> "
                                      "model)", param="knowledge_bases")
        rerank = params.rerank_model
        if rerank is not None:
            self._check_model(principal, rerank, "rerank model", "knowledge.rerank_model")
        elif self.config.rerank_model and principal.may_use(self.config.rerank_model):
            rerank = self.config.rerank_model
        options = SearchOptions(top_k=params.top_k or self.config.top_k, mode=params.mode or "hybrid")
        grounding = await self.grounder.ground(principal, refs, request.messages, options=options, ctx=ctx,
                                               rerank_model=rerank)
        upstream = request.model_copy(update={"model": model, "messages": grounding.messages})
        upstream.__pydantic_extra__ = extra
        return upstream, grounding
