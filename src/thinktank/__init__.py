"""thinktank: many LLM providers behind one OpenAI-compatible endpoint.

Light at import: the server and router load on first use of their names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ChatChunk",
    "ChatModel",
    "ChatRequest",
    "ChatResponse",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "GatewayConfig",
    "Message",
    "Router",
    "Settings",
    "ThinktankError",
    "Usage",
    "__version__",
    "create_app",
    "load_config",
]

_LAZY = {
    "ChatChunk": "thinktank.types",
    "ChatRequest": "thinktank.types",
    "ChatResponse": "thinktank.types",
    "EmbeddingRequest": "thinktank.types",
    "EmbeddingResponse": "thinktank.types",
    "Message": "thinktank.types",
    "Usage": "thinktank.types",
    "ChatModel": "thinktank.providers.base",
    "GatewayConfig": "thinktank.config",
    "Settings": "thinktank.config",
    "load_config": "thinktank.config",
    "ThinktankError": "thinktank.errors",
    "Router": "thinktank.gateway.router",
    "create_app": "thinktank.api.app",
}

if TYPE_CHECKING:
    from .api.app import create_app
    from .config import GatewayConfig, Settings, load_config
    from .errors import ThinktankError
    from .gateway.router import Router
    from .providers.base import ChatModel
    from .types import ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Message, Usage


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'thinktank' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
