"""Sliding-window rate limits (``rate_limits: {window: sliding}``), in memory and in the real local Redis, on an
injected clock: nothing sleeps. The property checked everywhere: within any span of one window's length, never
more than the limit was admitted."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import uuid4

import pytest

from thinktank.accounts.ratelimit import RateLimiter, Subject
from thinktank.accounts.sliding import SLICES
from thinktank.config import parse_config
from thinktank.errors import ConfigError, RateLimitError

from ..fakes.clock import FakeClock

MINUTE = 60.0
MakeLimiter = Callable[..., RateLimiter]


@pytest.fixture(params=["memory", "redis"])
def uri(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "memory" else str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def make(uri: str | None, clock: FakeClock) -> AsyncIterator[MakeLimiter]:
    """``make(window="sliding", **limiter_kwargs)``: limiters on ``clock``, in memory or in Redis (keys of their own,
    deleted afterwards)."""
    made: list[tuple[RateLimiter, str]] = []

    def factory(**kwargs: Any) -> RateLimiter:
        prefix = f"tt-test-{uuid4().hex}"
        limiter = RateLimiter(uri, key_prefix=prefix, now=clock.time, **{"window": "sliding", **kwargs})
        made.append((limiter, prefix))
        return limiter

    yield factory
    for limiter, prefix in made:
        await limiter.close()
        if uri is not None:
            import redis.asyncio as aioredis

            client = aioredis.from_url(uri)
            keys = [k async for k in client.scan_iter(match=f"*{prefix}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()


def start_of_minute(clock: FakeClock) -> float:
    """Move ``clock`` to the next whole minute (where fixed windows of a minute are aligned in Redis)."""
    t = clock.time()
    clock.advance((MINUTE - t % MINUTE) % MINUTE or MINUTE)
    return clock.time()


async def admitted(limiter: RateLimiter, subject: Subject, n: int, tokens: int = 0) -> int:
    """Of ``n`` requests now, how many were let in."""
    refusals: list[RateLimitError] = []
    for _ in range(n):
        try:
            await limiter.hit_request(subject, tokens)
        except RateLimitError as exc:
            refusals.append(exc)
    assert all(e.status == 429 and e.retry_after >= 1 for e in refusals)
    return n - len(refusals)


async def test_a_burst_at_the_window_boundary_is_refused(make: MakeLimiter, clock: FakeClock, uri: str | None) -> None:
    subject = Subject(key_id="k1", key_rpm=10)
    sliding = make()
    # Fixed windows for comparison, in memory (Redis times their windows out on its own clock, not this one).
    fixed = make(window="fixed") if uri is None else None
    start_of_minute(clock)
    assert await admitted(sliding, subject, 1) == 1
    if fixed is not None:
        assert await admitted(fixed, subject, 1) == 1  # opens the window (at its first hit)
    clock.advance(59.0)  # the last second of the window: a burst
    assert await admitted(sliding, subject, 12) == 9
    if fixed is not None:
        assert await admitted(fixed, subject, 12) == 9
    clock.advance(1.5)  # the next window has begun: a second burst right away
    assert await admitted(sliding, subject, 12) == 0  # the last minute holds 10 already
    if fixed is not None:
        assert await admitted(fixed, subject, 12) == 10  # 19 within 1.5 s: the fixed window's double burst
    clock.advance(MINUTE - 1.5 + MINUTE / SLICES)  # the burst has left the span (and its slice too)
    assert await admitted(sliding, subject, 12) == 10


async def test_a_request_counts_for_a_window_and_at_most_a_tenth_more(make: MakeLimiter, clock: FakeClock) -> None:
    subject = Subject(key_id="k1", key_rpm=5)
    limiter = make()
    t0 = start_of_minute(clock) + 2.0  # a third of the way into a slice of 6 s
    clock.advance(2.0)
    assert await admitted(limiter, subject, 6) == 5
    clock.advance(MINUTE - 0.5)  # half a second short of a window since the burst: still all counted
    assert await admitted(limiter, subject, 1) == 0
    refusal = await _refusal(limiter, subject)
    assert 1 <= refusal.retry_after <= MINUTE / SLICES + 1  # when the burst's slice leaves the span
    clock.advance(t0 + MINUTE * (1 + 1 / SLICES) - clock.time())  # 1.1 windows on: certainly gone
    assert await admitted(limiter, subject, 6) == 5


async def _refusal(limiter: RateLimiter, subject: Subject) -> RateLimitError:
    with pytest.raises(RateLimitError) as info:
        await limiter.hit_request(subject, 0)
    return info.value


async def test_no_span_of_a_window_ever_holds_more_than_the_limit(make: MakeLimiter, clock: FakeClock) -> None:
    """Requests at random times over several windows, random token counts: after each one admitted, every span
    of one window's length ending then holds at most the limit (requests and tokens)."""
    rng = random.Random(17)
    subject = Subject(key_id="k1", key_rpm=20, key_tpm=500)
    limiter = make()
    log: list[tuple[float, int]] = []  # (time, tokens) of the admitted requests
    for _ in range(600):
        clock.advance(rng.expovariate(1 / 0.6))  # ~100 a minute: five times the limit
        tokens = rng.randint(1, 60)
        try:
            await limiter.hit_request(subject, tokens)
        except RateLimitError:
            continue
        now = clock.time()
        log.append((now, tokens))
        span = [tok for t, tok in log if t > now - MINUTE]
        assert len(span) <= 20 and sum(span) <= 500
    assert len(log) > 60  # it admitted plenty (the limit, not a refusal of everything)


async def test_add_tokens_fills_to_the_limit_and_never_raises(make: MakeLimiter, clock: FakeClock) -> None:
    subject = Subject(key_id="k1", key_tpm=100)
    limiter = make()
    start_of_minute(clock)
    await limiter.hit_request(subject, 40)
    await limiter.add_tokens(subject, 500)  # the answer was longer than estimated: fills the window, no more
    with pytest.raises(RateLimitError):
        await limiter.hit_request(subject, 1)
    clock.advance(MINUTE * (1 + 1 / SLICES))
    await limiter.hit_request(subject, 100)


async def test_a_refused_request_consumes_no_other_limit(make: MakeLimiter, clock: FakeClock) -> None:
    subject = Subject(key_id="k1", key_rpm=100, user_id="u1", user_rpm=2)
    limiter = make()
    start_of_minute(clock)
    assert await admitted(limiter, subject, 5) == 2
    other_user = Subject(key_id="k1", key_rpm=100, user_id="u2", user_rpm=100)
    assert await admitted(limiter, other_user, 98) == 98  # the key's count got only the 2 admitted


async def test_two_processes_sharing_redis_never_admit_more_than_the_limit(redis_url: str, clock: FakeClock) -> None:
    prefix = f"tt-test-{uuid4().hex}"
    a = RateLimiter(redis_url, key_prefix=prefix, window="sliding", now=clock.time)
    b = RateLimiter(redis_url, key_prefix=prefix, window="sliding", now=clock.time)
    subject = Subject(key_id="k1", key_rpm=30)
    try:
        start_of_minute(clock)
        clock.advance(55.0)
        first = await asyncio.gather(*(admitted(x, subject, 1) for x in [a, b] * 20))
        clock.advance(10.0)  # across the minute: the sliding count still holds them
        second = await asyncio.gather(*(admitted(x, subject, 1) for x in [a, b] * 20))
        assert sum(first) == 30 and sum(second) == 0
    finally:
        import redis.asyncio as aioredis

        await a.close()
        await b.close()
        client = aioredis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=f"*{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def test_the_config_chooses_the_window() -> None:
    assert parse_config({}).rate_limits.window == "fixed"
    assert parse_config({"rate_limits": {"window": "sliding"}}).rate_limits.window == "sliding"
    with pytest.raises(ConfigError, match="rate_limits"):
        parse_config({"rate_limits": {"window": "rolling"}})


def test_sliding_windows_need_memory_or_a_single_redis() -> None:
    with pytest.raises(ConfigError, match="sliding"):
        RateLimiter("redis+sentinel://127.0.0.1:26379/mymaster", window="sliding")
