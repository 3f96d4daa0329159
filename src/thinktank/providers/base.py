"""The ChatModel protocol every layer speaks, and what a provider needs to build one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..clock import Clock, SystemClock
from ..types import ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse

if TYPE_CHECKING:
    from ..config import DeploymentConfig
    from ._http import HttpClient

__all__ = ["ChatModel", "EmbeddingModel", "ProviderContext", "ProviderFactory"]


@runtime_checkable
class ChatModel(Protocol):
    """Anything that answers an OpenAI-format chat request: a provider deployment, the router,
    an ensemble, a debate."""

    @property
    def name(self) -> str: ...

    async def complete(self, request: ChatRequest) -> ChatResponse: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Chunks as they arrive. The last chunk carries ``usage`` when the upstream reports it."""
        ...


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

    def __call__(self, deployment: DeploymentConfig, ctx: ProviderContext) -> ChatModel: ...
