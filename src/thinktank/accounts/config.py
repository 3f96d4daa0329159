"""The ``pricing:`` and ``rate_limits:`` sections of the YAML configuration.

``pricing`` says what a model costs when neither its entry nor the shipped price table knows (a caller with
a budget is refused a model without a price: its cost could not be held), and how long an answer a budget
hold assumes when a request gives no ``max_tokens``. ``rate_limits`` chooses how request and token limits
count: fixed windows (cheapest; a burst may straddle two windows) or sliding windows (never more than the
limit within any window-long span).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..bounds import OutputTokens

__all__ = ["DefaultPrice", "PricingConfig", "RateLimitsConfig"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DefaultPrice(_In):
    """USD per million tokens, for every deployment whose price is not known otherwise."""

    input_price: float = Field(ge=0)
    output_price: float = Field(ge=0)


class PricingConfig(_In):
    default: DefaultPrice | None = None
    """The price of a model that has none in its entry (``input_price``/``output_price``) and none in the
    shipped table. Without it such a model is free for callers without a budget and refused (403
    ``model_unpriced``) to callers with one."""
    default_output_tokens: OutputTokens = 4096
    """The answer length a budget hold assumes when a request gives no ``max_tokens``; the request then goes
    upstream with this ``max_tokens``, so its cost cannot pass what was held."""
    min_output_tokens: OutputTokens = 64
    """When a budget cannot hold the whole answer, the request goes upstream with the ``max_tokens`` it can
    hold, if at least this many (or the request's own ``max_tokens``, if smaller); else 429."""


class RateLimitsConfig(_In):
    window: Literal["fixed", "sliding"] = "fixed"
    """``fixed``: one counter per window (a burst at a window's end and the next window's start may reach
    twice the limit within one window's length). ``sliding``: never more than the limit within any span of
    one window's length (a request counts for between 1 and 1.1 windows; see ``accounts/sliding.py``)."""
