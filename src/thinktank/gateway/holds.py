"""The worst case one upstream attempt may cost, and the answer length a budget can still hold.

A hold covers the prompt (its estimate times :data:`PROMPT_SAFETY`) and an answer of ``output`` tokens per
choice; the router sends the attempt upstream with ``max_tokens`` at most ``output``, so a provider that
honours ``max_tokens`` can never answer past what was held. When a budget cannot hold the answer asked for
(or the default length), a shorter one it can hold is taken instead, down to a minimal answer
(``pricing.min_output_tokens``); below that the request is refused.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import PermissionDeniedError
from ..types import ChatRequest

if TYPE_CHECKING:
    from .pricing import Price
    from .strategies import Deployment

__all__ = ["PROMPT_SAFETY", "UnpricedModelError", "capped", "held_prompt", "longest_fitting", "worst_case"]

#: USD of float rounding forgiven, as the budget stores forgive it (``spent + leased + amount <= limit + 1e-9``).
_SLACK = 1e-9

#: The prompt estimate (about 4 characters a token) is inflated for holds, so that a text that
#: tokenizes badly still fits inside what was reserved.
PROMPT_SAFETY = 1.5


class UnpricedModelError(PermissionDeniedError):
    """403: a caller with a budget asked for a model whose price is unknown (its cost could not be held)."""

    code = "model_unpriced"

    def __init__(self, deployment: Deployment) -> None:
        model = deployment.config.upstream_model
        super().__init__(
            f"The model '{deployment.name}' (upstream model '{model}') has no known price, so its cost cannot be "
            "held against your budget. An administrator can give it one in the config (input_price and "
            f"output_price, USD per million tokens, on the '{deployment.name}' entry of models) or set a default "
            "price for every unpriced model (pricing: {default: {input_price: ..., output_price: ...}}).",
            param="model",
        )
        self.deployment = deployment.id


def held_prompt(prompt_tokens: int) -> int:
    """The prompt tokens a hold covers."""
    return math.ceil(prompt_tokens * PROMPT_SAFETY)


def worst_case(price: Price, prompt_tokens: int, output_tokens: int, choices: int = 1) -> float:
    """USD: the prompt held and ``choices`` answers of ``output_tokens`` each."""
    return price.cost(held_prompt(prompt_tokens), output_tokens * choices)


def longest_fitting(price: Price, prompt_tokens: int, choices: int, room: float, wanted: int, minimum: int
                    ) -> int | None:
    """The longest answer (tokens per choice, at most ``wanted``) whose worst case fits in ``room`` USD; None
    when not even ``min(minimum, wanted)`` tokens fit."""
    floor = min(minimum, wanted)
    room += _SLACK
    prompt_cost = price.cost(held_prompt(prompt_tokens), 0)
    if price.output <= 0:
        return wanted if prompt_cost <= room else None
    per_token = price.output * choices / 1_000_000
    out = min(wanted, math.floor((room - prompt_cost) / per_token)) if room > prompt_cost else -1
    while out >= floor and worst_case(price, prompt_tokens, out, choices) > room:  # float rounding
        out -= 1
    return out if out >= floor else None


def capped(request: ChatRequest, cap: int | None, model: object) -> ChatRequest:
    """``request`` asking for answers of at most ``cap`` tokens (``request`` itself if it asks for no more).

    A limit the request carries (``max_tokens``, ``max_completion_tokens``) is lowered to ``cap``; a request
    with none gets the field ``model`` reads (its ``output_limit_field``, else ``max_tokens``).
    """
    if cap is None:
        return request
    given = request.max_tokens, request.max_completion_tokens
    if given[0] is None and given[1] is None:
        return request.model_copy(update={getattr(model, "output_limit_field", "max_tokens"): cap})
    if (given[0] or 0) <= cap and (given[1] or 0) <= cap:
        return request
    update = {name: cap for name, value in zip(("max_tokens", "max_completion_tokens"), given, strict=True)
              if value is not None and value > cap}
    return request.model_copy(update=update)
