"""Fixed-window counters for the request and token limits of :mod:`.ratelimit`.

A window opens at its first hit and lasts its length; it never counts more than its limit. Every
implementation admits a request *all or nothing*: either every counter has room for its cost and
each is charged, or none is charged and the first counter without room is named. Three places
hold the counters:

* :class:`LocalWindows`: this process's memory, plain dictionary arithmetic (no await, no lock:
  nothing can run between the test and the charge);
* :class:`RedisWindows`: shared by every process through Redis; a process leases a share of a
  large limit at a time and admits from it in memory (see the class), small limits are charged in
  Redis on every request (a Lua script tests and charges every counter short of room atomically);
* :class:`LibraryWindows`: the ``limits`` library's fixed-window strategy, one call per counter
  (Redis Sentinel and Cluster, whose clients ``limits`` builds): tests first, then hits; two
  requests racing for the last slots can over-count (never over-admit), see :mod:`.ratelimit`.
"""

from __future__ import annotations

import asyncio
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


# KEYS: the counters this process needs more of. ARGV for counter i: ARGV[5i-4] its limit,
# ARGV[5i-3] what it must get (else nothing is taken anywhere), ARGV[5i-2] what it would like,
# ARGV[5i-1] its window (s), ARGV[5i] (ms): if its window ends sooner, only what it must get.
# Returns {i} for the first counter without room, else {0, grant, pttl, ...}.
_LEASE_LUA = """
local current = {}
for i = 1, #KEYS do
  local c = tonumber(redis.call('GET', KEYS[i]) or '0')
  if c + tonumber(ARGV[5 * i - 3]) > tonumber(ARGV[5 * i - 4]) then return {i} end
  current[i] = c
end
local out = {0}
for i = 1, #KEYS do
  local want = tonumber(ARGV[5 * i - 2])
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl >= 0 and ttl < tonumber(ARGV[5 * i]) then want = tonumber(ARGV[5 * i - 3]) end
  local grant = math.min(want, tonumber(ARGV[5 * i - 4]) - current[i])
  if redis.call('INCRBY', KEYS[i], grant) == grant then redis.call('EXPIRE', KEYS[i], ARGV[5 * i - 1]) end
  out[#out + 1] = grant
  out[#out + 1] = redis.call('PTTL', KEYS[i])
end
return out
"""

# KEYS: counters; ARGV for counter i: ARGV[3i-2] its limit, ARGV[3i-1] the cost, ARGV[3i] its window (s).
# Each counter gets its cost, or what is left below its limit.
_FILL_LUA = """
for i = 1, #KEYS do
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  local add = math.min(tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i - 2]) - current)
  if add > 0 and redis.call('INCRBY', KEYS[i], add) == add then redis.call('EXPIRE', KEYS[i], ARGV[3 * i]) end
end
return 0
"""

# KEYS: counters; ARGV[i]: what this process hands back to counter i (only if it still exists).
_RETURN_LUA = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('DECRBY', KEYS[i], ARGV[i]) end
end
return 0
"""


class RedisWindows:
    """Counters in Redis (one key each, expiring with its window), shared by every process.

    A process takes a share of a large limit at a time (``lease_share`` of it, for limits of at
    least ``lease_from``) and admits requests from that lease in memory, so a busy key goes to
    Redis once per lease instead of once per request; smaller limits are charged in Redis on
    every request. What a process has leased counts as used in Redis, so no limit ever admits
    more than it allows; the price is that a lease not used up by the end of its window is
    counted all the same (at most ``lease_share`` of a limit per process and window), and
    :meth:`close` hands back what is left. A refused request takes nothing: every counter
    short of room is asked for in one Lua script, all or nothing. Windows are a minute or more.

    The keys are the ones the ``limits`` library gives the same counters, with the same expiry
    rule, so processes of an earlier version (which counted through ``limits``) share the counts.
    """

    PREFIX = "LIMITS:"
    #: Leases never outlive what Redis says is left of their window minus this (seconds).
    MARGIN = 0.5

    def __init__(self, client: Redis, now: Callable[[], float] = time.time, *, lease_share: float = 0.01,
                 lease_from: int = 1000) -> None:
        self._client = client
        self._now = now
        self._share = lease_share
        self._from = lease_from
        self._lease = client.register_script(_LEASE_LUA)
        self._fill = client.register_script(_FILL_LUA)
        self._return = client.register_script(_RETURN_LUA)
        self._leases: dict[str, list[float]] = {}  # key -> [units left, end of its window]
        self._asking: dict[str, asyncio.Future[None]] = {}  # key -> the lease request on its way

    def _block(self, limit: Limit) -> int:
        return int(limit.amount * self._share) if limit.amount >= self._from else 0

    def _take(self, limits: Sequence[Limit], tokens: int, now: float, fresh: frozenset[str] = frozenset()
              ) -> list[Limit]:
        """Charge the leases if every limit's has room (and return []); else the limits short of it.

        ``fresh``: keys whose lease was granted just now, usable even if their window is ending
        (the units were counted in that window when they were granted)."""
        leases = self._leases
        short = []
        for limit in limits:
            lease = leases.get(limit.key)
            if lease is None or (lease[1] <= now and limit.key not in fresh) or lease[0] < (
                    tokens if limit.tokens else 1):
                short.append(limit)
        if not short:
            for limit in limits:
                leases[limit.key][0] -= tokens if limit.tokens else 1
        return short

    async def admit(self, limits: Sequence[Limit], tokens: int) -> Limit | None:
        fresh: frozenset[str] = frozenset()
        while True:
            now = self._now()
            short = self._take(limits, tokens, now, fresh)
            if not short:
                return None
            # One lease request per counter at a time: the requests that find a counter short
            # while one is on its way wait for it (else each would lease a share of its own).
            waiting = next((self._asking[lim.key] for lim in short if lim.key in self._asking), None)
            if waiting is not None:
                await asyncio.shield(waiting)
                continue
            asked = asyncio.get_running_loop().create_future()
            for limit in short:
                self._asking[limit.key] = asked
            try:
                refused = await self._ask(short, tokens, now)
            finally:
                for limit in short:
                    del self._asking[limit.key]
                asked.set_result(None)
            if refused is not None:
                return refused
            fresh = frozenset(lim.key for lim in short)
            # Others may have used the leases meanwhile: take again (what was granted stays leased).

    async def _ask(self, short: Sequence[Limit], tokens: int, now: float) -> Limit | None:
        """Lease what ``short`` lacks from Redis, all or nothing; the first limit without room, if any."""
        args: list[int] = []
        for limit in short:
            lease = self._leases.get(limit.key)
            have = int(lease[0]) if lease is not None and lease[1] > now else 0
            need = (tokens if limit.tokens else 1) - have
            args += (limit.amount, need, need + self._block(limit), limit.window, int(self.MARGIN * 2000))
        result = await self._lease(keys=[self.PREFIX + lim.key for lim in short], args=args)
        if int(result[0]):
            return short[int(result[0]) - 1]
        for i, limit in enumerate(short):
            grant, ttl_ms = int(result[1 + 2 * i]), int(result[2 + 2 * i])
            end = now + (ttl_ms / 1000 if ttl_ms > 0 else limit.window) - self.MARGIN
            lease = self._leases.get(limit.key)
            if lease is not None and lease[1] > now and end <= lease[1] + 1.0:
                lease[0] += grant  # the same window (a new one would end a whole window later)
                lease[1] = min(lease[1], end)
            else:
                self._leases[limit.key] = [grant, end]
        return None

    async def fill(self, limits: Sequence[Limit], tokens: int) -> None:
        now = self._now()
        rest: list[Limit] = []
        args: list[int] = []
        for limit in limits:
            lease = self._leases.get(limit.key)
            taken = min(int(lease[0]), tokens) if lease is not None and lease[1] > now else 0
            if taken:
                lease[0] -= taken  # type: ignore[index]
            if tokens > taken:
                rest.append(limit)
                args += (limit.amount, tokens - taken, limit.window)
        if rest:
            await self._fill(keys=[self.PREFIX + lim.key for lim in rest], args=args)

    async def stats(self, limit: Limit) -> tuple[int, float]:
        key = self.PREFIX + limit.key
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            count, ttl_ms = await pipe.execute()
        left = max(limit.amount - int(count or 0), 0)
        ttl = ttl_ms / 1000 if ttl_ms is not None and ttl_ms > 0 else float(limit.window)
        return left, self._now() + ttl

    async def close(self) -> None:
        """Hand back what is left of the leases whose window is still on."""
        now = self._now()
        back = {key: int(left) for key, (left, end) in self._leases.items() if end > now and left >= 1}
        self._leases.clear()
        if back:
            await self._return(keys=[self.PREFIX + k for k in back], args=list(back.values()))


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
