"""Exponential backoff with full jitter, honouring an upstream's Retry-After (capped)."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.5
    cap: float = 8.0
    retry_after_max: float = 60.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (``attempt`` counts from 0).

        With a Retry-After, wait what the upstream asked (never more than ``retry_after_max``);
        otherwise a uniformly random wait in ``[0, min(cap, base * 2**attempt)]`` ("full jitter"),
        so that many clients that failed together do not retry together.
        """
        if retry_after is not None:
            return min(max(0.0, retry_after), self.retry_after_max)
        return rng.uniform(0.0, min(self.cap, self.base * (2**attempt)))
