"""Which embedder serves a knowledge base: the local model, or an embedding model configured in the
gateway (any OpenAI-compatible ``/v1/embeddings`` upstream, reached through the router, so its
retries, fallbacks, cooldowns and cost accounting apply)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidRequestError, UpstreamBadResponseError
from ..gateway.context import CallContext
from ..gateway.router import Router
from ..gateway.tokens import estimate_text_tokens
from ..types import EmbeddingRequest
from .embeddings import LOCAL_MODEL, Embedder, LocalEmbedder

__all__ = ["Embedders", "GatewayEmbedder"]

_BATCH = 256
"""Texts per upstream request (OpenAI takes up to 2048; smaller requests retry cheaper)."""


class GatewayEmbedder:
    """An embedding model of the gateway. ``ctx`` carries who pays: usage is accounted to that caller."""

    def __init__(self, router: Router, model: str, ctx: CallContext | None = None, *, max_tokens: int = 8000) -> None:
        self.router = router
        self.name = model
        self.ctx = ctx
        self.max_tokens = max_tokens
        self.dimension = 0
        """Known after the first call."""

    def count_tokens(self, text: str) -> int:
        return estimate_text_tokens(text)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[np.ndarray] = []
        for start in range(0, len(texts), _BATCH):
            batch = list(texts[start:start + _BATCH])
            response = await self.router.embed(EmbeddingRequest(model=self.name, input=batch), self.ctx)
            data = sorted(response.data, key=lambda d: d.index)
            if len(data) != len(batch) or any(not isinstance(d.embedding, list) for d in data):
                raise UpstreamBadResponseError(f"'{self.name}' answered {len(data)} embeddings for {len(batch)} texts")
            block = np.asarray([d.embedding for d in data], dtype=np.float32)
            if block.ndim != 2 or block.shape[1] == 0 or (rows and block.shape[1] != rows[0].shape[1]):
                raise UpstreamBadResponseError(f"'{self.name}' answered vectors of different lengths")
            rows.append(block)
        if not rows:
            return np.zeros((0, self.dimension), np.float32)
        out = np.concatenate(rows)
        self.dimension = int(out.shape[1])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


class Embedders:
    """The local model (one instance, loaded on first use) and gateway models by name."""

    def __init__(self, router: Router | None, cache_dir: Path, *, local: LocalEmbedder | None = None) -> None:
        self.router = router
        self.local = local or LocalEmbedder(cache_dir)
        self._owns_local = local is None

    def check(self, model: str) -> None:
        """Raise unless ``model`` can embed: the local model or a model the gateway serves."""
        if model == LOCAL_MODEL:
            return
        if self.router is None or model not in {m.id for m in self.router.models()}:
            raise InvalidRequestError(
                f"embedding model '{model}' is neither {LOCAL_MODEL} nor a model of this gateway",
                param="embedding_model",
            )

    def get(self, model: str, ctx: CallContext | None = None) -> Embedder:
        self.check(model)
        if model == LOCAL_MODEL:
            return self.local
        assert self.router is not None
        return GatewayEmbedder(self.router, model, ctx)

    def close(self) -> None:
        """Stop the local model's worker (unless it was handed in, and so is someone else's to close)."""
        if self._owns_local:
            self.local.close()
