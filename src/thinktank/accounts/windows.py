"""Fixed-window counters for the request and token limits of :mod:`.ratelimit`.

A window opens at its first hit and lasts its length; it never counts more than its limit. Every
implementation admits a request *all or nothing*: either every counter has room for its cost and
each is charged, or none is charged and the first counter without room is named. Three places
hold the counters:

* :class:`LocalWindows`: this process's memory, plain dictionary arithmetic (no await, no lock:
  nothing can run between the test and the charge);
* :class:`RedisWindows`: one Redis round trip per admission (a Lua script tests and charges every
  counter atomically), shared by every process;
* :class:`LibraryWindows`: the ``limits`` library's fixed-window strategy, one call per counter
  (Redis Sentinel and Cluster, whose clients ``limits`` builds): tests first, then hits; two
  requests racing for the last slots can over-count (never over-admit), see :mod:`.ratelimit`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from limits import RateLimitItem
from limits.aio import strategies

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["LibraryWindows", "Limit", "LocalWindows", "RatePlan", "RedisWindows", "Windows"]


@dataclass(frozen=True, slots=True)
class Limit:
    """One counter: ``amount`` units per ``window`` seconds."""

    key: str
    """The counter's name in the store (unique per subject, limit and window)."""
    item: RateLimitItem
    ids: tuple[str, ...]
    tokens: bool
    """A token limit (charged the request's tokens) rather than a request count (charged 1)."""
    who: str
    amount: int
    window: int

    @classmethod
    def of(cls, item: RateLimitItem, ids: tuple[str, ...], *, tokens: bool, who: str) -> Limit:
        return cls(item.key_for(*ids), item, ids, tokens, who, item.amount, item.get_expiry())

    def describe(self) -> str:
        unit = "tokens" if self.tokens else "requests"
        return f"{self.who} allows {self.item.amount} {unit} per {self.item.GRANULARITY.name}"


@dataclass(frozen=True, slots=True)
class RatePlan:
    """The limits of one caller, worked out once (see ``RateLimiter.plan``)."""

    limits: tuple[Limit, ...]
    requests: tuple[Limit, ...]
    """The request counts alone: what a request without a token estimate is charged to."""
    tokens: tuple[Limit, ...]
    """The token limits alone."""
    largest: Limit | None
    """The token limit with the smallest amount: the largest request anything could admit."""

    @classmethod
    def of(cls, limits: Sequence[Limit]) -> RatePlan:
        tokens = tuple(lim for lim in limits if lim.tokens)
        return cls(tuple(limits), tuple(lim for lim in limits if not lim.tokens), tokens,
                   min(tokens, key=lambda lim: lim.amount) if tokens else None)


class Windows(Protocol):
    """A request costs 1 in a request count and ``tokens`` in a token limit."""

    async def admit(self, limits: Sequence[Limit], tokens: int) -> Limit | None:
        """Charge every limit its cost if all have room and return None; else charge none and
        return the first limit without room."""
        ...

    async def fill(self, limits: Sequence[Limit], tokens: int) -> None:
        """Charge each limit ``tokens``, or what is left of its window if that is less."""
        ...

    async def stats(self, limit: Limit) -> tuple[int, float]:
        """(what is left of the current window, when it ends as a wall-clock time)."""
        ...


class LocalWindows:
    """Counters in this process. ``admit`` and ``fill`` never suspend: they are atomic on the event loop."""

    #: Ended windows are forgotten at most this often (seconds), in one sweep.
    SWEEP_EVERY = 60.0

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._counts: dict[str, list[float]] = {}  # key -> [count, end of window]
        self._sweep_at = 0.0

    def _sweep(self, now: float) -> None:
        self._sweep_at = now + self.SWEEP_EVERY
        for key in [k for k, (_, end) in self._counts.items() if end <= now]:
            del self._counts[key]

    def admit_now(self, limits: Sequence[Limit], tokens: int) -> Limit | None:
        now = self._now()
        if now >= self._sweep_at:
            self._sweep(now)
        counts = self._counts
        for limit in limits:
            entry = counts.get(limit.key)
            if entry is not None and entry[1] > now and entry[0] + (tokens if limit.tokens else 1) > limit.amount:
                return limit
        for limit in limits:
            entry = counts.get(limit.key)
            if entry is None or entry[1] <= now:
                counts[limit.key] = [tokens if limit.tokens else 1, now + limit.window]
            else:
                entry[0] += tokens if limit.tokens else 1
        return None

    def fill_now(self, limits: Sequence[Limit], tokens: int) -> None:
        now = self._now()
        for limit in limits:
            entry = self._counts.get(limit.key)
            if entry is None or entry[1] <= now:
                self._counts[limit.key] = [min(tokens, limit.amount), now + limit.window]
            else:
                entry[0] = max(entry[0], min(entry[0] + tokens, limit.amount))

    async def admit(self, limits: Sequence[Limit], tokens: int) -> Limit | None:
        return self.admit_now(limits, tokens)

    async def fill(self, limits: Sequence[Limit], tokens: int) -> None:
        self.fill_now(limits, tokens)

    async def stats(self, limit: Limit) -> tuple[int, float]:
        now = self._now()
        entry = self._counts.get(limit.key)
        if entry is None or entry[1] <= now:
            return limit.amount, now + limit.window
        return max(limit.amount - int(entry[0]), 0), entry[1]


# KEYS: the counters; ARGV: for counter i, ARGV[3i-2] its limit, ARGV[3i-1] the cost, ARGV[3i] its window (s).
_ADMIT_LUA = """
for i = 1, #KEYS do
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  if current + tonumber(ARGV[3 * i - 1]) > tonumber(ARGV[3 * i - 2]) then return i end
end
for i = 1, #KEYS do
  local cost = tonumber(ARGV[3 * i - 1])
  if redis.call('INCRBY', KEYS[i], cost) == cost then redis.call('EXPIRE', KEYS[i], ARGV[3 * i]) end
end
return 0
"""

# The same arguments: each counter gets its cost, or what is left below its limit.
_FILL_LUA = """
for i = 1, #KEYS do
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  local add = math.min(tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i - 2]) - current)
  if add > 0 and redis.call('INCRBY', KEYS[i], add) == add then redis.call('EXPIRE', KEYS[i], ARGV[3 * i]) end
end
return 0
"""


class RedisWindows:
    """Counters in Redis (one key each, expiring with its window), one script call per admission.

    The keys are the ones the ``limits`` library gives the same counters, with the same expiry
    rule, so processes of an earlier version (which counted through ``limits``) share the counts.
    """

    PREFIX = "LIMITS:"

    def __init__(self, client: Redis, now: Callable[[], float] = time.time) -> None:
        self._client = client
        self._now = now
        self._admit = client.register_script(_ADMIT_LUA)
        self._fill = client.register_script(_FILL_LUA)

    @staticmethod
    def _args(limits: Sequence[Limit], tokens: int) -> list[int]:
        args: list[int] = []
        for limit in limits:
            args += (limit.amount, tokens if limit.tokens else 1, limit.window)
        return args

    async def admit(self, limits: Sequence[Limit], tokens: int) -> Limit | None:
        keys = [self.PREFIX + lim.key for lim in limits]
        refused = int(await self._admit(keys=keys, args=self._args(limits, tokens)))
        return limits[refused - 1] if refused else None

    async def fill(self, limits: Sequence[Limit], tokens: int) -> None:
        if limits:
            await self._fill(keys=[self.PREFIX + lim.key for lim in limits], args=self._args(limits, tokens))

    async def stats(self, limit: Limit) -> tuple[int, float]:
        key = self.PREFIX + limit.key
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            count, ttl_ms = await pipe.execute()
        left = max(limit.amount - int(count or 0), 0)
        ttl = ttl_ms / 1000 if ttl_ms is not None and ttl_ms > 0 else float(limit.window)
        return left, self._now() + ttl


class LibraryWindows:
    """The ``limits`` library's fixed windows: one call per counter (test all, then hit all)."""

    def __init__(self, strategy: strategies.FixedWindowRateLimiter) -> None:
        self._strategy = strategy

    async def admit(self, limits: Sequence[Limit], tokens: int) -> Limit | None:
        s = self._strategy
        # A fixed window's hit adds before it compares, so a refused hit still counts: test first,
        # unless the one limit is a request count (a refused request then only fills a full window).
        if len(limits) > 1 or limits[0].tokens:
            for limit in limits:
                if not await s.test(limit.item, *limit.ids, cost=tokens if limit.tokens else 1):
                    return limit
        for limit in limits:
            if not await s.hit(limit.item, *limit.ids, cost=tokens if limit.tokens else 1):
                return limit
        return None

    async def fill(self, limits: Sequence[Limit], tokens: int) -> None:
        s = self._strategy
        for limit in limits:
            if await s.hit(limit.item, *limit.ids, cost=min(tokens, limit.amount)):
                continue
            remaining = (await s.get_window_stats(limit.item, *limit.ids)).remaining
            if remaining > 0:
                await s.hit(limit.item, *limit.ids, cost=remaining)

    async def stats(self, limit: Limit) -> tuple[int, float]:
        stats = await self._strategy.get_window_stats(limit.item, *limit.ids)
        return stats.remaining, stats.reset_time
