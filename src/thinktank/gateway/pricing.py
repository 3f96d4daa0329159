"""Cost in USD, computed in one place.

A deployment's configured ``input_price``/``output_price`` (USD per million tokens) win; else a
shipped table of list prices for popular models (checked 2025; edit the config to override);
else local providers are free; else the config's ``pricing.default``; else the model costs 0 with
``known=False`` (a caller with a budget is refused it: its cost could not be held).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..accounts.config import DefaultPrice
from ..config import DeploymentConfig

__all__ = ["PRICES", "Price", "price_for"]


@dataclass(frozen=True, slots=True)
class Price:
    input: float
    """USD per million input tokens."""
    output: float
    """USD per million output tokens."""
    known: bool = True

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


# USD per million tokens (input, output): public list prices.
PRICES: dict[str, tuple[float, float]] = {
    # OpenAI
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.0),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4": (30.0, 60.0),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.0, 60.0),
    "o1-mini": (1.10, 4.40),
    "o3": (2.0, 8.0),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
    "text-embedding-ada-002": (0.10, 0.0),
    # Anthropic
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-3-5-haiku": (0.80, 4.0),
    "claude-3-opus": (15.0, 75.0),
    "claude-3-haiku": (0.25, 1.25),
    # Google
    "gemini-2.5-pro": (1.25, 10.0),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.0-flash-lite": (0.075, 0.30),
    "gemini-1.5-pro": (1.25, 5.0),
    "gemini-1.5-flash": (0.075, 0.30),
    "text-embedding-004": (0.0, 0.0),
    # Others, by their API model ids
    "deepseek-chat": (0.27, 1.10),
    "deepseek-reasoner": (0.55, 2.19),
    "mistral-large-latest": (2.0, 6.0),
    "mistral-medium-latest": (0.40, 2.0),
    "mistral-small-latest": (0.20, 0.60),
    "codestral-latest": (0.30, 0.90),
    "llama-3.3-70b-versatile": (0.59, 0.79),
    "llama-3.1-8b-instant": (0.05, 0.08),
}

_FREE_PROVIDERS = frozenset({"ollama", "vllm", "mock"})
_FREE = Price(0.0, 0.0)
_UNKNOWN = Price(0.0, 0.0, known=False)


def _lookup(model: str) -> tuple[float, float] | None:
    if model in PRICES:
        return PRICES[model]
    bare = model.rsplit("/", 1)[-1]  # "openai/gpt-4o" (OpenRouter style) -> "gpt-4o"
    if bare in PRICES:
        return PRICES[bare]
    # Dated or suffixed versions ("gpt-4o-2024-08-06", "claude-3-5-sonnet-20241022"):
    # the longest table entry that is a prefix followed by "-" wins.
    best = ""
    for name in PRICES:
        if bare.startswith(name + "-") and len(name) > len(best):
            best = name
    return PRICES[best] if best else None


def price_for(deployment: DeploymentConfig, default: DefaultPrice | None = None) -> Price:
    """``deployment``'s price; ``default`` (the config's ``pricing.default``) for one nothing else prices."""
    if deployment.input_price is not None or deployment.output_price is not None:
        return Price(deployment.input_price or 0.0, deployment.output_price or 0.0)
    if deployment.provider in _FREE_PROVIDERS:
        return _FREE
    found = _lookup(deployment.upstream_model)
    if found is not None:
        return Price(*found)
    if default is not None:
        return Price(default.input_price, default.output_price)
    return _UNKNOWN
