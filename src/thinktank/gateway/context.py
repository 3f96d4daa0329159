"""What travels with one request through every model it reaches: who pays, what it cost, the run it
belongs to.

The router calls ``meter.reserve`` before every upstream attempt and settles or releases the hold
after it, so budgets see the worst case before any money is spent, and a retry or a fallback
never pays twice. Every accounted answer is appended to ``records``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .router import UsageRecord
    from .strategies import Deployment

__all__ = ["Account", "CallContext", "Hold", "Meter"]


class Hold(Protocol):
    @property
    def output_tokens(self) -> int | None:
        """The answer (tokens per choice) the hold covers: the attempt goes upstream with ``max_tokens`` at most
        this. None: any length (the answer costs nothing, or nothing is held)."""
        ...

    async def settle(self, cost: float) -> None: ...

    async def release(self) -> None: ...


class Meter(Protocol):
    async def reserve(self, deployment: Deployment, prompt_tokens: int, output_tokens: int | None,
                      choices: int = 1) -> Hold:
        """Hold the worst-case cost of one attempt (``choices`` answers of ``output_tokens``, or of a default
        length when None; a shorter answer when only that fits), or raise (a budget is exhausted, the model
        has no price)."""
        ...


class Account(Protocol):
    def charged(self, record: UsageRecord, hold: Hold | None, nested: bool) -> None:
        """``record`` was accounted under the usage record this account is (an admission; ``nested``: in a child
        context, a step of a run): told before its hold is settled and before anything of its answer leaves,
        with no await (the usage journal writes it)."""
        ...


@dataclass
class CallContext:
    """``meter`` holds the cost of every upstream attempt on the budgets that apply (a run's own cap
    included); ``records`` receives every accounted answer, whichever model made the call; ``principal``
    is who asks and pays (an :class:`~thinktank.accounts.principal.Principal`)."""

    meter: Meter | None = None
    records: list[UsageRecord] = field(default_factory=list)
    principal: Any = None
    parent_run: str | None = None
    """The run this call is a step of (a nested ensemble or debate becomes its child)."""
    depth: int = 0
    """How many composite models this call is nested in."""
    run_id: str | None = None
    """Set by the first run started under this context: the run that answers the request."""
    cache_allowed: bool = False
    """The caller allows an earlier identical answer to be reused (``x-thinktank-cache: allow``)."""
    account: Account | None = None
    """The usage record that pays for everything under this context (its admission), told of each accounted call
    as it happens; child contexts share it."""
    background: set[asyncio.Task[None]] = field(default_factory=set)
    """Work that goes on spending under this context after its answer was sent (a run whose streaming
    client went away): whoever records the request waits for it first."""
    request_id: str | None = None
    """The id its admission records it under; with ``estimated_tokens`` (what the rate limits counted when it was
    admitted), what a worker taking the request's work over records it with."""
    estimated_tokens: int = 0
    handed_over: bool = False
    """The request's work went to a queue's worker, which records it (under the request's id): its admission here
    records nothing."""

    def child(self, run_id: str) -> CallContext:
        """The context of one step of run ``run_id``: same payer and meter, its own records."""
        return CallContext(meter=self.meter, principal=self.principal, parent_run=run_id, depth=self.depth + 1,
                           cache_allowed=self.cache_allowed, account=self.account)

    def cost(self) -> float:
        """What everything accounted under this context cost, in USD."""
        return sum(r.cost for r in self.records)
