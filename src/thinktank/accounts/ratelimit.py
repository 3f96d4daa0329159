"""Request and token rate limits, shared by every process through Redis (or in memory for one process).

* **request and token counts** (key/user/ip requests per minute, key/user tokens per minute, tier
  requests and tokens per minute/day) use *fixed windows* (:mod:`.windows`) by default: one counter per
  limit and window, cost-aware (a request adds its tokens), the cheapest check — it runs on every
  request. A window never admits more than its limit, though a burst can straddle two windows (up
  to twice the limit across a boundary). In memory a check is a few dictionary operations; with
  Redis, one script call per request tests and charges every counter (large limits are leased).
  ``rate_limits: {window: sliding}`` uses *sliding windows* instead (:mod:`.sliding`): never more
  than the limit within any span of one window's length, for 11 counters a limit; with Redis, one
  script call per request whatever the limit (memory or a single Redis server: not Sentinel or Cluster).
* **failed authentications** use the ``limits`` library's *moving window*: exact, one timestamp
  per failure (rare).

Admission is all or nothing: a request is charged to every applicable limit only if all have
room, atomically (in memory nothing runs in between; in Redis one Lua script does it), so no
limit ever admits more than it allows, whatever the number of processes, and a refused request
consumes nothing. (With Redis Sentinel or Cluster the counters go through ``limits`` one call at
a time: every limit is tested, then each is hit; two requests may both pass the tests, then one
takes the last slot of limit B after the other already hit limit A, and the loser keeps the slot
it took in A — over-counting, never over-admitting, and only at the edge of a limit.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio import strategies
from limits.aio.storage import Storage
from limits.errors import ConfigurationError
from limits.storage import storage_from_string

from ..config import TierConfig
from ..errors import ConfigError, RateLimitError
from .sliding import LocalSlidingWindows, RedisSlidingWindows
from .windows import LibraryWindows, Limit, LocalWindows, RatePlan, RedisWindows, Windows

__all__ = ["RateLimitRefusal", "RateLimiter", "RatePlan", "Subject", "TierConfig"]

log = logging.getLogger(__name__)

_REDIS_SCHEMES = frozenset({"redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster"})
#: Single-server schemes, and the scheme redis-py expects for each.
_BASIC_REDIS = {"redis": "redis", "rediss": "rediss", "redis+unix": "unix"}
#: Connections per process; when all are busy a call waits (up to _REDIS_POOL_WAIT s) instead of failing.
_REDIS_POOL_SIZE = 100
_REDIS_POOL_WAIT = 10.0


@dataclass(frozen=True)
class Subject:
    """Who is calling, and the per-key / per-user limits that apply (None: no such limit)."""

    key_id: str | None = None
    user_id: str | None = None
    ip: str | None = None
    key_rpm: int | None = None
    key_tpm: int | None = None
    user_rpm: int | None = None
    user_tpm: int | None = None
    tier: str | None = None


class RateLimitRefusal(RateLimitError):
    """429 from one of the request or token limits; ``scope`` says which kind (key, user, ip or tier: never an
    id), for the metrics."""

    def __init__(self, message: str, *, retry_after: float, code: str, limit: Limit) -> None:
        super().__init__(message, retry_after=retry_after, code=code)
        self.scope = limit.ids[0] if limit.ids else "other"


def _open_storage(uri: str | None) -> tuple[Storage, Any]:
    """None or ``memory://``: this process only; ``redis://…``: shared, through redis-py."""
    scheme, sep, rest = (uri or "memory://").partition("://")
    base = scheme.removeprefix("async+")
    if not sep:
        raise ConfigError("rate limit storage: expected a URI such as redis://host:6379 or memory://")
    options: dict[str, Any] = {"implementation": "redispy"} if base in _REDIS_SCHEMES else {}
    pool = None
    try:
        if base in _BASIC_REDIS:  # redis-py's default pool raises once it has 100 connections in use
            from redis.asyncio import BlockingConnectionPool  # only when Redis is used: it is slow to import

            pool = BlockingConnectionPool.from_url(
                f"{_BASIC_REDIS[base]}://{rest}", max_connections=_REDIS_POOL_SIZE, timeout=_REDIS_POOL_WAIT
            )
            options["connection_pool"] = pool
        storage = storage_from_string(f"async+{base}://{rest}", **options)
    except (ConfigurationError, ValueError) as exc:  # their messages may carry the URI, password included
        raise ConfigError(f"rate limit storage: unsupported or malformed URI (scheme {base!r})") from exc
    if not isinstance(storage, Storage):  # pragma: no cover - async+ always yields an async storage
        raise ConfigError(f"rate limit storage: {base!r} has no asynchronous implementation")
    return storage, pool


def _retry_after(reset_time: float) -> float:
    return max(1.0, reset_time - time.time())


class RateLimiter:
    """Per-key, per-user, per-address and per-tier limits, plus failed-authentication throttling.

    ``auth_max_failures`` failures per ``auth_window_seconds`` are allowed for one address (or one
    address and account); once that many are recorded, further attempts are refused until the
    oldest failure leaves the window.
    """

    def __init__(
        self,
        storage_uri: str | None = None,
        tiers: Mapping[str, TierConfig] | None = None,
        *,
        ip_rpm: int | None = None,
        key_prefix: str = "tt",
        auth_max_failures: int = 10,
        auth_window_seconds: int = 300,
        window: Literal["fixed", "sliding"] = "fixed",
        now: Callable[[], float] = time.time,
    ) -> None:
        """``window``: how request and token limits count (see the module); ``now``: their clock."""
        if auth_max_failures < 1 or auth_window_seconds < 1:
            raise ConfigError("rate limits: auth_max_failures and auth_window_seconds must be at least 1")
        self._storage, self._pool = _open_storage(storage_uri)
        self._moving = strategies.MovingWindowRateLimiter(self._storage)
        self._local: LocalWindows | LocalSlidingWindows | None = None
        self._shared: RedisWindows | None = None
        self._windows: Windows
        sliding = window == "sliding"
        self.window = window
        self._now = now
        if self._pool is not None:
            from redis.asyncio import Redis

            self._redis: Redis | None = Redis(connection_pool=self._pool)
            if sliding:
                self._windows = RedisSlidingWindows(self._redis, now)
            else:
                self._windows = self._shared = RedisWindows(self._redis, now)
        else:
            self._redis = None
            if (storage_uri or "memory://").startswith(("memory://", "async+memory://")):
                self._windows = self._local = LocalSlidingWindows(now) if sliding else LocalWindows(now)
            elif sliding:
                raise ConfigError("rate_limits: window: sliding needs memory:// or a single Redis server "
                                  "(redis://, rediss://, redis+unix://); use window: fixed with Sentinel or Cluster")
            else:
                self._windows = LibraryWindows(strategies.FixedWindowRateLimiter(self._storage))
        self._items: dict[tuple[type[RateLimitItem], int], RateLimitItem] = {}
        self._plans: dict[Subject, RatePlan] = {}
        self._tiers = dict(tiers or {})
        self._ip_rpm = ip_rpm
        self._prefix = key_prefix
        self._auth_item = RateLimitItemPerSecond(auth_max_failures, auth_window_seconds, namespace=key_prefix)

    # -- requests and tokens -------------------------------------------------------------------

    #: Subjects whose limits are remembered (a few per key, user or address); past it, all are forgotten.
    PLAN_CACHE = 4096

    def plan(self, s: Subject) -> RatePlan:
        """Every limit that applies to ``s`` (remembered: the same caller asks again and again)."""
        plan = self._plans.get(s)
        if plan is None:
            plan = RatePlan.of(self._plan(s))
            if len(self._plans) >= self.PLAN_CACHE:
                self._plans.clear()
            self._plans[s] = plan
        return plan

    def _plan(self, s: Subject) -> tuple[Limit, ...]:
        out: list[Limit] = []

        def add(amount: int | None, per: type[RateLimitItem], who: str, ids: tuple[str, ...], *, tok: bool) -> None:
            if amount is None:
                return
            item = self._items.get((per, amount))
            if item is None:
                item = self._items[(per, amount)] = per(amount, namespace=self._prefix)
            out.append(Limit.of(item, (*ids, "tokens" if tok else "requests"), tokens=tok, who=who))

        minute, day = RateLimitItemPerMinute, RateLimitItemPerDay
        if s.key_id is not None:
            add(s.key_rpm, minute, f"key {s.key_id}", ("key", s.key_id), tok=False)
            add(s.key_tpm, minute, f"key {s.key_id}", ("key", s.key_id), tok=True)
        if s.user_id is not None:
            add(s.user_rpm, minute, f"user {s.user_id}", ("user", s.user_id), tok=False)
            add(s.user_tpm, minute, f"user {s.user_id}", ("user", s.user_id), tok=True)
        if s.ip is not None:
            add(self._ip_rpm, minute, f"address {s.ip}", ("ip", s.ip), tok=False)
        if s.tier is not None:
            tier = self._tiers.get(s.tier)
            if tier is None:
                known = ", ".join(sorted(self._tiers)) or "none"
                raise ConfigError(f"rate limits: tier {s.tier!r} is not configured (configured: {known})")
            scope = next(((k, v) for k, v in (("user", s.user_id), ("key", s.key_id), ("ip", s.ip)) if v), None)
            if scope is not None:
                who, ids = f"tier {s.tier!r} ({scope[0]} {scope[1]})", ("tier", s.tier, *scope)
                add(tier.requests_per_minute, minute, who, ids, tok=False)
                add(tier.requests_per_day, day, who, ids, tok=False)
                add(tier.tokens_per_minute, minute, who, ids, tok=True)
                add(tier.tokens_per_day, day, who, ids, tok=True)
        return tuple(out)

    async def _refusal(self, limit: Limit) -> RateLimitRefusal:
        _, reset = await self._windows.stats(limit)
        retry = max(1.0, reset - self._now())
        message = f"Rate limit: {limit.describe()}; try again in {math.ceil(retry)}s"
        return RateLimitRefusal(message, retry_after=retry, code="rate_limit_exceeded", limit=limit)

    async def hit_request(self, subject: Subject, estimated_tokens: int) -> None:
        """Admit one request costing ``estimated_tokens``, or raise :class:`RateLimitError` (429)."""
        await self.admit(self.plan(subject), estimated_tokens)

    async def admit(self, plan: RatePlan, estimated_tokens: int) -> None:
        """``hit_request`` for a caller whose plan is at hand.

        A refused request consumes none of the limits (with Redis Sentinel or Cluster, up to the
        race described in the module doc). Token limits apply only if ``estimated_tokens`` > 0.
        """
        if estimated_tokens > 0:
            limits = plan.limits
            largest = plan.largest
            if largest is not None and estimated_tokens > largest.amount:
                # It could never pass: say so instead of a misleading Retry-After.
                raise RateLimitRefusal(
                    f"Rate limit: this request needs about {estimated_tokens} tokens but {largest.describe()}",
                    retry_after=largest.window, code="request_too_large", limit=largest,
                )
        else:
            limits = plan.requests
        if not limits:
            return
        local = self._local
        refused = (local.admit_now(limits, estimated_tokens) if local is not None
                   else await self._windows.admit(limits, estimated_tokens))
        if refused is not None:
            raise await self._refusal(refused)

    async def add_tokens(self, subject: Subject, tokens: int) -> None:
        """Charge ``tokens`` more (actual minus estimated) to the token limits; no-op if not positive.

        The tokens were spent already, so this never refuses; a window that cannot hold them all is
        filled to its limit (the excess is not carried into the next window).
        """
        if tokens > 0:
            limits = self.plan(subject).tokens
            if limits:
                await self._windows.fill(limits, tokens)

    # -- failed authentication -----------------------------------------------------------------

    @staticmethod
    def _auth_ids(ip: str, account: str | None) -> tuple[str, ...]:
        return ("auth", ip) if account is None else ("auth", ip, account)

    async def check_auth_allowed(self, ip: str, account: str | None = None) -> None:
        """Raise :class:`RateLimitError` (``too_many_failed_attempts``) if too many failures were recorded."""
        ids = self._auth_ids(ip, account)
        if await self._moving.test(self._auth_item, *ids):
            return
        stats = await self._moving.get_window_stats(self._auth_item, *ids)
        raise RateLimitError(
            "Too many failed authentication attempts; try again later",
            retry_after=_retry_after(stats.reset_time),
            code="too_many_failed_attempts",
        )

    async def record_auth_failure(self, ip: str, account: str | None = None) -> None:
        await self._moving.hit(self._auth_item, *self._auth_ids(ip, account))

    async def close(self) -> None:
        """Close the Redis connections (or stop the in-memory expiry task)."""
        if self._shared is not None:
            try:
                await self._shared.close()  # hand back unused leases
            except Exception:  # pragma: no cover - Redis gone at shutdown: the windows run out anyway
                log.warning("handing back rate-limit leases failed", exc_info=True)
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()
        if self._redis is not None:
            await self._redis.aclose()
        if self._pool is not None:
            await self._pool.aclose()
        timer = getattr(self._storage, "timer", None)
        if isinstance(timer, asyncio.Task) and not timer.done():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
