"""What travels with one request through the router: who pays, and what it cost.

The router calls ``meter.reserve`` before every upstream attempt and settles or releases the hold
after it, so budgets see the worst case before any money is spent, and a retry or a fallback
never pays twice. Every accounted answer is appended to ``records``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .router import UsageRecord
    from .strategies import Deployment

__all__ = ["CallContext", "Hold", "Meter"]


class Hold(Protocol):
    async def settle(self, cost: float) -> None: ...

    async def release(self) -> None: ...


class Meter(Protocol):
    async def reserve(self, deployment: Deployment, prompt_tokens: int, output_tokens: int | None) -> Hold:
        """Hold the worst-case cost of one attempt, or raise (e.g. a budget is exhausted)."""
        ...


@dataclass
class CallContext:
    meter: Meter | None = None
    records: list[UsageRecord] = field(default_factory=list)
    principal: Any = None
