"""How a group chooses among its deployments."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import DeploymentConfig, Strategy
from ..providers.base import DeploymentModel
from .pricing import Price

__all__ = ["Deployment", "DeploymentStats", "pick"]

_EWMA_ALPHA = 0.3
_DEFAULT_OUTPUT = 256


@dataclass
class DeploymentStats:
    in_flight: int = 0
    latency: float | None = None
    """Moving average of seconds per successful call."""

    def observe(self, seconds: float) -> None:
        if self.latency is None:
            self.latency = seconds
        else:
            self.latency += _EWMA_ALPHA * (seconds - self.latency)


@dataclass
class Deployment:
    id: str
    config: DeploymentConfig
    model: DeploymentModel
    price: Price
    timeout: float
    stats: DeploymentStats = field(default_factory=DeploymentStats)

    @property
    def name(self) -> str:
        return self.config.name

    def fits(self, needed_tokens: int) -> bool:
        window = self.config.context_window
        return window is None or needed_tokens <= window


def _weighted(cands: Sequence[Deployment], rng: random.Random) -> Deployment:
    if len(cands) == 1:
        return cands[0]
    return rng.choices(cands, weights=[d.config.weight for d in cands])[0]


def pick(
    strategy: Strategy,
    cands: Sequence[Deployment],
    rng: random.Random,
    prompt_tokens: int = 0,
    output_tokens: int | None = None,
) -> Deployment:
    if len(cands) == 1:
        return cands[0]
    if strategy == "least_busy":
        low = min(d.stats.in_flight for d in cands)
        return _weighted([d for d in cands if d.stats.in_flight == low], rng)
    if strategy == "lowest_latency":
        untried = [d for d in cands if d.stats.latency is None]
        if untried:
            return _weighted(untried, rng)
        return min(cands, key=lambda d: d.stats.latency or 0.0)
    if strategy == "cheapest":
        out = output_tokens or _DEFAULT_OUTPUT

        def expected(d: Deployment) -> tuple[bool, float]:
            return (not d.price.known, d.price.cost(prompt_tokens, out))

        best = min(expected(d) for d in cands)
        return _weighted([d for d in cands if expected(d) == best], rng)
    return _weighted(cands, rng)
