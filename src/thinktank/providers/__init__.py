"""Provider adapters: each deployment of a provider is a ChatModel."""

from .base import ChatModel, EmbeddingModel, ProviderContext, ProviderFactory

__all__ = ["ChatModel", "EmbeddingModel", "ProviderContext", "ProviderFactory"]
