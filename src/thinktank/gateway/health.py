"""Per-deployment cooldown after repeated failures (never ejects every deployment of a group), and the last
failures of each deployment (scrubbed of secrets) for the admin's view of model health."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..clock import Clock

__all__ = ["Cooldowns", "Failure", "FailureLog", "scrub_message"]

T = TypeVar("T")


class Cooldowns:
    def __init__(self, clock: Clock, allowed_fails: int = 3, cooldown: float = 30.0) -> None:
        self._clock = clock
        self._allowed = allowed_fails
        self._cooldown = cooldown
        self._fails: dict[str, int] = {}
        self._until: dict[str, float] = {}
        self.listeners: list[Callable[[str, float], None]] = []
        """Told ``(deployment, seconds)`` each time a deployment starts a cooldown (metrics, alerts)."""

    def success(self, key: str) -> None:
        self._fails.pop(key, None)
        self._until.pop(key, None)

    def failure(self, key: str, retry_after: float | None = None) -> bool:
        """Count a failure; return True when the deployment starts a cooldown now."""
        fails = self._fails.get(key, 0) + 1
        self._fails[key] = fails
        # Once the count is reached, every further failure (one after a cooldown) cools it down again; the
        # count goes on, so it stays the number of failures in a row.
        if fails >= self._allowed:
            duration = max(self._cooldown, retry_after or 0.0)
            self._until[key] = self._clock.monotonic() + duration
            for listener in self.listeners:
                listener(key, duration)
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

    def failures(self, key: str) -> int:
        """Failures in a row (0 after a success)."""
        return self._fails.get(key, 0)

    def remaining(self, key: str) -> float:
        until = self._until.get(key)
        return 0.0 if until is None else max(0.0, until - self._clock.monotonic())

    def usable(self, items: Sequence[T], key: Callable[[T], str]) -> list[T]:
        """The items not cooling down; if all are, the one whose cooldown ends first."""
        ready = [i for i in items if not self.cooling(key(i))]
        if ready or not items:
            return ready
        return [min(items, key=lambda i: self._until.get(key(i), 0.0))]


# -- the last failures of each deployment, for the admin's health view ----------------------------------------

_SECRETS = (
    # URL credentials first (https://user:pass@host), then bearer tokens and key=value pairs, then anything
    # shaped like a provider key (sk-..., AIza...), then any long run of token characters.
    (re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s@]*@", re.IGNORECASE), r"\1***@"),
    (re.compile(r"\b(bearer|basic)\s+\S+", re.IGNORECASE), r"\1 ***"),
    (re.compile(r"\b((?:x-)?api[-_]?key|key|token|access_token|secret|password|signature|sig|authorization)"
                r"(\s*[=:]\s*|\s+)[\"']?[^\s\"'&,;]+", re.IGNORECASE), r"\1\2***"),
    (re.compile(r"\b(?:sk|pk|rk|tt|xai|gsk|hf)[-_][A-Za-z0-9_\-*]{3,}"), "***"),
    (re.compile(r"\bAIza[A-Za-z0-9_\-]{6,}"), "***"),
    (re.compile(r"[A-Za-z0-9_\-+/=]{24,}"), "***"),
)

MESSAGE_CHARS = 120
"""The most characters of an upstream's error message kept: enough to tell a cause, too few to hold much."""


def scrub_message(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` without anything shaped like a secret (keys, bearer tokens, credentials in URLs, long tokens),
    on one line and at most ``limit`` characters."""
    text = " ".join(text.split())
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Failure:
    ts: float
    """Wall-clock seconds (the injected clock)."""
    status: int
    kind: str
    """The error's class (``UpstreamServerError``)."""
    message: str
    """Scrubbed and short (:func:`scrub_message`)."""


class FailureLog:
    """The last ``keep`` failures of each deployment. Written only when a call fails: nothing on success."""

    def __init__(self, clock: Clock, keep: int = 5) -> None:
        self._clock = clock
        self._keep = keep
        self._recent: dict[str, deque[Failure]] = {}

    def record(self, key: str, status: int, kind: str, message: str) -> None:
        ring = self._recent.get(key)
        if ring is None:
            ring = self._recent[key] = deque(maxlen=self._keep)
        ring.append(Failure(self._clock.time(), status, kind, scrub_message(message)))

    def recent(self, key: str) -> list[Failure]:
        """Newest first."""
        return list(reversed(self._recent.get(key, ())))
