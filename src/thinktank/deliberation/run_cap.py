"""A run's own ``max_cost_usd``: a meter checked before each of its calls, like a budget, in front of the caller's
(see :meth:`~.service.Deliberation.cap`)."""

from __future__ import annotations

from collections.abc import Sequence

from ..accounts.budget_backends import BudgetSpec
from ..accounts.budgets import BudgetExceededError
from ..accounts.journal import budget_keys
from ..gateway.context import Hold, Meter
from ..gateway.holds import UnpricedModelError, longest_fitting, worst_case
from ..gateway.strategies import Deployment
from ..metrics.sink import MetricsSink
from .runs import LiveRun

__all__ = ["RunCap"]


class _CapHold:
    """A call's hold on the run's cap (and on the caller's budgets within it)."""

    def __init__(self, cap: RunCap, amount: float, inner: Hold | None, output_tokens: int | None) -> None:
        self._cap, self._amount, self._inner = cap, amount, inner
        self.output_tokens = output_tokens

    @property
    def budget_keys(self) -> Sequence[Sequence[str]]:
        """The caller's budgets it is settled on (the run's own cap is not stored)."""
        return budget_keys(self._inner)

    async def settle(self, cost: float) -> None:
        self._cap.held -= self._amount
        self._cap.spent += cost  # at once: a sibling call reserving now must see it
        if self._inner is not None:
            await self._inner.settle(cost)

    async def release(self) -> None:
        self._cap.held -= self._amount
        if self._inner is not None:
            await self._inner.release()


class RunCap:
    """The run's own ``max_cost_usd``, checked before every call like any budget, then the caller's: the
    answer held is the one asked for, or the longest that fits (at least ``min_output`` tokens)."""

    def __init__(self, inner: Meter | None, limit: float, run: LiveRun, default_output: int,
                 metrics: MetricsSink | None = None, min_output: int = 64) -> None:
        self._inner, self._limit, self._run, self._default_output = inner, limit, run, default_output
        self._min_output = min_output
        self._metrics = metrics or MetricsSink()
        self.held = 0.0
        self.spent = 0.0

    async def reserve(self, deployment: Deployment, prompt_tokens: int, output_tokens: int | None,
                      choices: int = 1) -> Hold:
        price = deployment.price
        if not price.known:  # the cap could not be kept
            self._metrics.refused("unpriced_model", "model")
            raise UnpricedModelError(deployment)
        out = self._default_output if output_tokens is None else output_tokens
        worst = worst_case(price, prompt_tokens, out, choices)
        remaining = self._limit - self.spent - self.held
        if worst > remaining:
            shorter = longest_fitting(price, prompt_tokens, choices, remaining, out, self._min_output)
            if shorter is None:
                spec = BudgetSpec("run", self._run.id, self._limit, "total", f"run {self._run.id} (max_cost_usd)")
                self._metrics.refused("budget", "run")
                raise BudgetExceededError(spec, amount=worst, remaining=remaining, retry_after=0)
            out, worst = shorter, worst_case(price, prompt_tokens, shorter, choices)
        self.held += worst
        try:
            inner = await self._inner.reserve(deployment, prompt_tokens, out, choices) if self._inner else None
        except BaseException:
            self.held -= worst
            raise
        if inner is not None and inner.output_tokens is not None and inner.output_tokens < out:
            out = inner.output_tokens  # the caller's budget holds a shorter answer: so does the run
            smaller = worst_case(price, prompt_tokens, out, choices)
            self.held -= worst - smaller
            worst = smaller
        return _CapHold(self, worst, inner, out if price.output > 0 else None)
