"""Per-deployment cooldown after repeated failures; never ejects every deployment of a group."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from ..clock import Clock

__all__ = ["Cooldowns"]

T = TypeVar("T")


class Cooldowns:
    def __init__(self, clock: Clock, allowed_fails: int = 3, cooldown: float = 30.0) -> None:
        self._clock = clock
        self._allowed = allowed_fails
        self._cooldown = cooldown
        self._fails: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def success(self, key: str) -> None:
        self._fails.pop(key, None)
        self._until.pop(key, None)

    def failure(self, key: str, retry_after: float | None = None) -> bool:
        """Count a failure; return True when the deployment starts a cooldown now."""
        fails = self._fails.get(key, 0) + 1
        self._fails[key] = fails
        if fails >= self._allowed:
            duration = max(self._cooldown, retry_after or 0.0)
            self._until[key] = self._clock.monotonic() + duration
            # After the cooldown one more failure is enough to cool it down again.
            self._fails[key] = self._allowed - 1
            return True
        return False

    def cooling(self, key: str) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if self._clock.monotonic() >= until:
            del self._until[key]
            return False
        return True

    def remaining(self, key: str) -> float:
        until = self._until.get(key)
        return 0.0 if until is None else max(0.0, until - self._clock.monotonic())

    def usable(self, items: Sequence[T], key: Callable[[T], str]) -> list[T]:
        """The items not cooling down; if all are, the one whose cooldown ends first."""
        ready = [i for i in items if not self.cooling(key(i))]
        if ready or not items:
            return ready
        return [min(items, key=lambda i: self._until.get(key(i), 0.0))]
