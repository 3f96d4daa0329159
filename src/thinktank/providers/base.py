"""The ChatModel protocol every layer speaks, and what a provider needs to build one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..clock import Clock, SystemClock
from ..types import ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse

if TYPE_CHECKING:
    from ..config import DeploymentConfig
    from ..gateway.context import CallContext
    from ._http import HttpClient

__all__ = ["ChatModel", "DeploymentModel", "EmbeddingModel", "ProviderContext", "ProviderFactory"]


@runtime_checkable
class ChatModel(Protocol):
    """Anything that answers an OpenAI-format chat request: a provider deployment, the router, an
    ensemble, a debate, a grounded model. Composites hold the models they use as ChatModels.

    ``ctx`` carries who pays, the budget meter, the run the call belongs to; the router accounts every
    upstream answer into it. A provider deployment (a leaf, called by the router) may ignore it, and
    third-party providers written as ``complete(self, request)`` keep working: the router calls them
    with the request alone.
    """

    @property
    def name(self) -> str: ...

    async def complete(self, request: ChatRequest, ctx: CallContext | None = None) -> ChatResponse: ...

    def stream(self, request: ChatRequest, ctx: CallContext | None = None) -> AsyncIterator[ChatChunk]:
        """Chunks as they arrive. The last chunk carries ``usage`` when the upstream reports it; a
        composite may send :meth:`ChatChunk.progress` chunks (no choices) while it works."""
        ...


@runtime_checkable
class DeploymentModel(Protocol):
    """What a provider builds for one deployment: the upstream's wire format and nothing else. The
    router routes, retries, times out, holds budgets and accounts around it, so it takes no context."""

    @property
    def name(self) -> str: ...

    async def complete(self, request: ChatRequest) -> ChatResponse: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...


@runtime_checkable
class EmbeddingModel(Protocol):
    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse: ...


@runtime_checkable
class Probe(Protocol):
    async def check(self) -> str:
        """Ask the upstream whether it answers; return a short status, raise ProviderError if not."""
        ...


@dataclass
class ProviderContext:
    """What the gateway lends a provider: one shared HTTP client and the clock."""

    http: HttpClient
    clock: Clock = field(default_factory=SystemClock)


class ProviderFactory(Protocol):
    """The object an entry point in group ``thinktank.providers`` names (usually the class)."""

    def __call__(self, deployment: DeploymentConfig, ctx: ProviderContext) -> DeploymentModel: ...
