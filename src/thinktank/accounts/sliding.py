"""Sliding-window counters for the request and token limits (``rate_limits: {window: sliding}``).

A limit of ``amount`` per ``W`` seconds never admits more than ``amount`` within *any* span of ``W`` seconds
(a fixed window admits up to twice that across a boundary). Exact in that sense, with bounded memory:

* the time line is cut in slices of ``W / SLICES`` seconds, aligned on the clock (slice ``b`` holds what was
  admitted in ``[b, b + 1) * W / SLICES``);
* a request in slice ``b`` is admitted only if slices ``b - SLICES .. b`` together with its cost stay within
  ``amount``; it is then counted in slice ``b``.

Why no span of ``W`` seconds ever holds more: take such a span and the last request admitted in it, at ``t``
in slice ``b``. Every other request of the span came at or after ``t - W``, so in slice ``b - SLICES`` or
later, and was admitted before; the check at ``t`` counted them all, plus ``t``'s own cost, within
``amount``. The price of exactness: a request counts for between ``W`` and ``W * (1 + 1 / SLICES)`` after it
(1.1 windows with 10 slices), so a caller that used all of its limit may wait up to ``W / 10`` longer than a
log of every request would make it. Memory: ``SLICES + 1`` counters a limit, whatever the traffic.

Two homes, like the fixed windows: :class:`LocalSlidingWindows` (this process's memory, no await) and
:class:`RedisSlidingWindows` (shared: one hash a limit, one Lua script a request tests and charges every
limit, all or nothing). The slice a request falls in is reckoned on the process's clock (injected; with Redis
the processes' clocks should agree to well within a slice: 6 s for a per-minute limit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .windows import Limit

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["SLICES", "LocalSlidingWindows", "RedisSlidingWindows"]

SLICES = 10
"""Slices a window is cut in: a request counts for 1 to 1 + 1/SLICES windows."""


def _slice(now: float, window: int) -> int:
    return int(now * SLICES // window)


def _slice_end(index: int, window: int) -> float:
    """When slice ``index`` stops counting (it leaves the last of the spans that include it)."""
    return (index + SLICES + 1) * window / SLICES


class _Slide:
    """One limit's slices in memory: a ring of ``SLICES + 1`` counts, the newest at ``last``."""

    __slots__ = ("counts", "last", "total", "window")

    def __init__(self, index: int, window: int) -> None:
        self.counts = [0.0] * (SLICES + 1)
        self.last = index
        self.total = 0.0
        self.window = window

    def at(self, index: int) -> None:
        """Move to slice ``index``: the slices that left the span are emptied (a clock gone back moves nothing)."""
        if index <= self.last:
            return
        if index - self.last > SLICES:
            self.counts = [0.0] * (SLICES + 1)
            self.total = 0.0
        else:
            counts = self.counts
            for i in range(self.last + 1, index + 1):
                self.total -= counts[i % (SLICES + 1)]
                counts[i % (SLICES + 1)] = 0.0
        self.last = index

    def add(self, cost: float) -> None:
        self.counts[self.last % (SLICES + 1)] += cost
        self.total += cost

    def oldest(self) -> int:
        """The oldest slice still holding something (``last`` if none)."""
        for i in range(self.last - SLICES, self.last + 1):
            if self.counts[i % (SLICES + 1)] > 0:
                return i
        return self.last


def _cost(limit: Limit, tokens: int) -> int:
    return tokens if limit.tokens else 1


class LocalSlidingWindows:
    """Sliding windows in this process's memory. ``admit`` and ``fill`` never suspend: atomic on the event loop."""

    #: Limits idle for a whole span are forgotten at most this often (seconds), in one sweep.
    SWEEP_EVERY = 60.0

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._slides: dict[str, _Slide] = {}
        self._sweep_at = 0.0

    def _sweep(self, now: float) -> None:
        self._sweep_at = now + self.SWEEP_EVERY
        for key in [k for k, s in self._slides.items() if _slice(now, s.window) - s.last > SLICES]:
            del self._slides[key]

    def _slide(self, limit: Limit, now: float) -> _Slide:
        index = _slice(now, limit.window)
        slide = self._slides.get(limit.key)
        if slide is None:
            slide = self._slides[limit.key] = _Slide(index, limit.window)
        elif index > slide.last:
            slide.at(index)
        return slide

    def admit_now(self, limits: Sequence[Limit], tokens: int) -> Limit | None:
        now = self._now()
        if now >= self._sweep_at:
            self._sweep(now)
        slides = []
        for limit in limits:
            slide = self._slide(limit, now)
            if slide.total + (tokens if limit.tokens else 1) > limit.amount:
                return limit
            slides.append(slide)
        for limit, slide in zip(limits, slides, strict=True):
            slide.add(tokens if limit.tokens else 1)
        return None

    def fill_now(self, limits: Sequence[Limit], tokens: int) -> None:
        now = self._now()
        for limit in limits:
            slide = self._slide(limit, now)
            room = limit.amount - slide.total
            if room > 0:
                slide.add(min(tokens, room))

    async def admit(self, limits: Sequence[Limit], tokens: int) -> Limit | None:
        return self.admit_now(limits, tokens)

    async def fill(self, limits: Sequence[Limit], tokens: int) -> None:
        self.fill_now(limits, tokens)

    async def stats(self, limit: Limit) -> tuple[int, float]:
        now = self._now()
        slide = self._slide(limit, now)
        if slide.total <= 0:
            return limit.amount, now + limit.window
        return max(limit.amount - int(slide.total), 0), _slice_end(slide.oldest(), limit.window)


# KEYS: one hash per limit (field: slice number, value: what it holds). ARGV for limit i: ARGV[4i-3] its
# amount, ARGV[4i-2] the cost, ARGV[4i-1] the current slice, ARGV[4i] the hash's expiry (ms). ARGV[#] (last):
# '1' to admit (all or nothing; returns i for the first limit without room, else 0), '0' to fill (each limit
# gets the cost, or what is left below its amount; returns 0).
_SLIDING_LUA = """
local n = tonumber(ARGV[#ARGV - 1])
local admit = ARGV[#ARGV] == '1'
local sums = {}
for i = 1, #KEYS do
  local now = tonumber(ARGV[4 * i - 1])
  local flat = redis.call('HGETALL', KEYS[i])
  local sum = 0
  for j = 1, #flat, 2 do
    if tonumber(flat[j]) < now - n then
      redis.call('HDEL', KEYS[i], flat[j])
    else
      sum = sum + tonumber(flat[j + 1])
    end
  end
  if admit and sum + tonumber(ARGV[4 * i - 2]) > tonumber(ARGV[4 * i - 3]) then return i end
  sums[i] = sum
end
for i = 1, #KEYS do
  local add = tonumber(ARGV[4 * i - 2])
  if not admit then add = math.min(add, tonumber(ARGV[4 * i - 3]) - sums[i]) end
  if add > 0 then
    redis.call('HINCRBY', KEYS[i], ARGV[4 * i - 1], add)
    redis.call('PEXPIRE', KEYS[i], ARGV[4 * i])
  end
end
return 0
"""


class RedisSlidingWindows:
    """Sliding windows in Redis, shared by every process: one hash per limit, one script call per request."""

    PREFIX = "LIMITS:sliding:"

    def __init__(self, client: Redis, now: Callable[[], float] = time.time) -> None:
        self._client = client
        self._now = now
        self._script = client.register_script(_SLIDING_LUA)

    async def _run(self, limits: Sequence[Limit], tokens: int, admit: bool) -> int:
        now = self._now()
        args: list[int | str] = []
        for limit in limits:
            # Kept while a slice of it may count, and a little longer.
            keep = math.ceil(limit.window * (SLICES + 1) / SLICES * 1000) + 1000
            args += (limit.amount, _cost(limit, tokens), _slice(now, limit.window), keep)
        args += (SLICES, "1" if admit else "0")
        return int(await self._script(keys=[self.PREFIX + lim.key for lim in limits], args=args))

    async def admit(self, limits: Sequence[Limit], tokens: int) -> Limit | None:
        refused = await self._run(limits, tokens, True)
        return limits[refused - 1] if refused else None

    async def fill(self, limits: Sequence[Limit], tokens: int) -> None:
        if tokens > 0:
            await self._run(limits, tokens, False)

    async def stats(self, limit: Limit) -> tuple[int, float]:
        now = self._now()
        current = _slice(now, limit.window)
        held = await self._client.hgetall(self.PREFIX + limit.key)
        slices = {int(k): int(v) for k, v in held.items() if int(k) >= current - SLICES and int(v) > 0}
        if not slices:
            return limit.amount, now + limit.window
        return max(limit.amount - sum(slices.values()), 0), _slice_end(min(slices), limit.window)
