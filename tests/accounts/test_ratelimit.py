"""Rate limits against the real in-memory storage and the real local Redis.

Every limiter gets its own key prefix, so tests never see each other's counts; the Redis keys are
deleted afterwards. Windows are a minute or a day and nothing waits for one to pass: assertions are
written so that they hold even if a minute boundary falls inside a test.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import uuid4

import pytest
from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute

from thinktank.accounts.ratelimit import RateLimiter, Subject, TierConfig
from thinktank.accounts.windows import Limit, LocalWindows, RedisWindows
from thinktank.errors import ConfigError, RateLimitError

from ..fakes.clock import FakeClock

MakeLimiter = Callable[..., RateLimiter]


@pytest.fixture(params=["memory", "redis"])
def storage_uri(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


async def _delete_keys(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"*{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def make(storage_uri: str | None) -> AsyncIterator[MakeLimiter]:
    made: list[tuple[RateLimiter, str]] = []

    def factory(**kwargs: Any) -> RateLimiter:
        prefix = f"tt-test-{uuid4().hex}"
        limiter = RateLimiter(storage_uri, key_prefix=prefix, **kwargs)
        made.append((limiter, prefix))
        return limiter

    yield factory
    for limiter, prefix in made:
        await limiter.close()
        if storage_uri is not None:
            await _delete_keys(storage_uri, prefix)


async def _admit(limiter: RateLimiter, subject: Subject, n: int, tokens: int = 0) -> None:
    for _ in range(n):
        await limiter.hit_request(subject, tokens)


async def _refused(limiter: RateLimiter, subject: Subject, tokens: int = 0) -> RateLimitError:
    with pytest.raises(RateLimitError) as info:
        await limiter.hit_request(subject, tokens)
    exc = info.value
    assert exc.retry_after >= 1
    assert exc.status == 429
    assert int(exc.headers()["Retry-After"]) >= 1
    return exc


# -- requests per minute ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "subject", "named"),
    [
        ({}, Subject(key_id="k1", key_rpm=5), "key k1 allows 5 requests per minute"),
        ({}, Subject(user_id="u1", user_rpm=5), "user u1 allows 5 requests per minute"),
        ({"ip_rpm": 5}, Subject(ip="10.0.0.7"), "address 10.0.0.7 allows 5 requests per minute"),
    ],
    ids=["key", "user", "ip"],
)
async def test_rpm_is_exact(make: MakeLimiter, kwargs: dict[str, Any], subject: Subject, named: str) -> None:
    limiter = make(**kwargs)
    await _admit(limiter, subject, 5)
    exc = await _refused(limiter, subject)
    assert exc.code == "rate_limit_exceeded"
    assert exc.message.startswith(f"Rate limit: {named}")
    assert exc.retry_after <= 60
    await _refused(limiter, subject)  # still refused, and refusals do not pile up anywhere


async def test_limits_are_per_subject(make: MakeLimiter) -> None:
    limiter = make(ip_rpm=2)
    await _admit(limiter, Subject(key_id="a", key_rpm=1, ip="10.0.0.1"), 1)
    await _refused(limiter, Subject(key_id="a", key_rpm=1, ip="10.0.0.2"))
    await _admit(limiter, Subject(key_id="b", key_rpm=1, ip="10.0.0.1"), 1)  # ip 10.0.0.1 now at 2 of 2
    exc = await _refused(limiter, Subject(key_id="c", key_rpm=1, ip="10.0.0.1"))
    assert "address 10.0.0.1 allows 2 requests" in exc.message


async def test_no_limits_no_refusal(make: MakeLimiter) -> None:
    limiter = make()
    await _admit(limiter, Subject(key_id="k", user_id="u", ip="10.0.0.1"), 50, tokens=10_000)


# -- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "named"),
    [(Subject(key_id="k1", key_tpm=100), "key k1"), (Subject(user_id="u1", user_tpm=100), "user u1")],
    ids=["key", "user"],
)
async def test_tpm_counts_tokens(make: MakeLimiter, subject: Subject, named: str) -> None:
    limiter = make()
    await limiter.hit_request(subject, 60)
    exc = await _refused(limiter, subject, 60)
    assert exc.message.startswith(f"Rate limit: {named} allows 100 tokens per minute")
    await limiter.hit_request(subject, 40)
    await _refused(limiter, subject, 2)
    await limiter.hit_request(subject, 0)  # no tokens estimated: no token limit applies


async def test_request_larger_than_the_limit(make: MakeLimiter) -> None:
    limiter = make()
    with pytest.raises(RateLimitError) as info:
        await limiter.hit_request(Subject(key_id="k", key_tpm=100), 150)
    assert info.value.code == "request_too_large"
    assert "150 tokens" in info.value.message
    assert "key k allows 100 tokens per minute" in info.value.message


async def test_add_tokens_charges_the_difference(make: MakeLimiter) -> None:
    limiter = make()
    subject = Subject(key_id="k", key_tpm=100, key_rpm=10)
    await limiter.hit_request(subject, 10)
    await limiter.add_tokens(subject, 60)  # answered with 70 tokens: 60 more than estimated
    await limiter.add_tokens(subject, 0)
    await limiter.add_tokens(subject, -30)  # fewer than estimated: no refund, no error
    await _refused(limiter, subject, 40)
    await limiter.hit_request(subject, 30)


async def test_add_tokens_fills_the_window_and_never_raises(make: MakeLimiter) -> None:
    limiter = make()
    limiter = make(tiers={"t": TierConfig(tokens_per_day=1000)})
    subject = Subject(user_id="u", user_tpm=100, tier="t")
    await limiter.add_tokens(subject, 5000)  # more than either window holds
    exc = await _refused(limiter, subject, 2)
    assert "user u allows 100 tokens per minute" in exc.message
    await limiter.add_tokens(subject, 10)  # a full window: still no error
    other = Subject(user_id="u", tier="t")  # same user without the per-minute limit: the day is full too
    exc = await _refused(limiter, other, 2)
    assert "tier 't' (user u) allows 1000 tokens per day" in exc.message


# -- tiers -----------------------------------------------------------------------------------

TIERS = {
    "free": TierConfig(requests_per_day=10),
    "pro": TierConfig(requests_per_day=1000, requests_per_minute=3),
}


async def test_free_tier_eleventh_request_of_the_day_refused(make: MakeLimiter) -> None:
    limiter = make(tiers=TIERS)
    await _admit(limiter, Subject(user_id="u", key_id="k1", tier="free"), 6)
    await _admit(limiter, Subject(user_id="u", key_id="k2", tier="free"), 4)  # the tier counts per user
    exc = await _refused(limiter, Subject(user_id="u", key_id="k3", tier="free"))
    assert exc.message.startswith("Rate limit: tier 'free' (user u) allows 10 requests per day")
    await _admit(limiter, Subject(user_id="v", tier="free"), 10)


async def test_tier_without_user_counts_per_key(make: MakeLimiter) -> None:
    limiter = make(tiers=TIERS)
    await _admit(limiter, Subject(key_id="k1", tier="pro"), 3)
    exc = await _refused(limiter, Subject(key_id="k1", tier="pro"))
    assert "tier 'pro' (key k1) allows 3 requests per minute" in exc.message
    await _admit(limiter, Subject(key_id="k2", tier="pro"), 3)


async def test_unknown_tier_is_a_config_error(make: MakeLimiter) -> None:
    limiter = make(tiers=TIERS)
    with pytest.raises(ConfigError, match="'gold'"):
        await limiter.hit_request(Subject(user_id="u", tier="gold"), 0)


def test_tier_config_validation() -> None:
    with pytest.raises(ValueError, match="extra"):
        TierConfig.model_validate({"requests_per_hour": 5})
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        TierConfig(requests_per_day=0)


# -- a refusal consumes nothing --------------------------------------------------------------


async def test_refused_request_consumes_no_other_limit(make: MakeLimiter) -> None:
    limiter = make(tiers={"free": TierConfig(requests_per_day=3)})
    # u1 may make 2 requests a minute; key k allows 3; u1's third request is refused by the user limit.
    await _admit(limiter, Subject(key_id="k", key_rpm=3, user_id="u1", user_rpm=2), 2)
    for _ in range(3):
        exc = await _refused(limiter, Subject(key_id="k", key_rpm=3, user_id="u1", user_rpm=2))
        assert "user u1" in exc.message
    # Had those refusals consumed key k, u2 would be refused at once.
    await _admit(limiter, Subject(key_id="k", key_rpm=3, user_id="u2", user_rpm=10), 1)
    exc = await _refused(limiter, Subject(key_id="k", key_rpm=3, user_id="u2", user_rpm=10))
    assert "key k allows 3 requests" in exc.message

    # Tokens: requests refused by the request limit do not consume the key's tokens, nor the tier's day.
    await limiter.hit_request(Subject(key_id="t", key_tpm=100, user_id="u3", user_rpm=1, tier="free"), 50)
    for _ in range(2):
        await _refused(limiter, Subject(key_id="t", key_tpm=100, user_id="u3", user_rpm=1, tier="free"), 50)
    await limiter.hit_request(Subject(key_id="t", key_tpm=100, user_id="u4", user_rpm=1), 50)
    await _admit(limiter, Subject(user_id="u3", tier="free"), 2)  # 1 + 2 of the day's 3


# -- admission is all or nothing, even under concurrency -----------------------------------------


async def test_concurrent_requests_refused_by_one_limit_consume_no_other(make: MakeLimiter) -> None:
    limiter = make()
    tight = Subject(key_id="k", key_rpm=100, user_id="u", user_rpm=10)
    results = await asyncio.gather(*(limiter.hit_request(tight, 0) for _ in range(60)), return_exceptions=True)
    assert sum(r is None for r in results) == 10
    assert all(r is None or isinstance(r, RateLimitError) for r in results)
    # The 50 refusals took nothing from the key: 90 of its 100 requests are left, exactly.
    other = Subject(key_id="k", key_rpm=100, user_id="v", user_rpm=1000)
    results = await asyncio.gather(*(limiter.hit_request(other, 0) for _ in range(120)), return_exceptions=True)
    assert sum(r is None for r in results) == 90


async def test_tokens_concurrently_never_exceed_the_window(make: MakeLimiter) -> None:
    limiter = make()
    subject = Subject(key_id="k", key_tpm=1000, user_id="u", user_tpm=700)
    results = await asyncio.gather(*(limiter.hit_request(subject, 30) for _ in range(50)), return_exceptions=True)
    assert sum(r is None for r in results) == 23  # 23 * 30 = 690 <= 700 < 720
    exc = await _refused(limiter, Subject(key_id="k", key_tpm=1000), 311)  # the key holds 690, not more
    assert "key k allows 1000 tokens" in exc.message
    await limiter.hit_request(Subject(key_id="k", key_tpm=1000), 310)


# -- the in-memory windows themselves ---------------------------------------------------------


def _limit(amount: int, per: type[RateLimitItem], *ids: str, tokens: bool = False) -> Limit:
    return Limit.of(per(amount, namespace="t"), ids, tokens=tokens, who="x")


async def test_local_windows_open_at_the_first_hit_and_end_with_their_length(clock: FakeClock) -> None:
    windows = LocalWindows(clock.time)
    rpm, tpd = _limit(2, RateLimitItemPerMinute, "a"), _limit(100, RateLimitItemPerDay, "a", tokens=True)
    assert windows.admit_now([rpm, tpd], 60) is None
    clock.advance(30)
    assert windows.admit_now([rpm, tpd], 50) is tpd  # the day's tokens: refused, nothing charged
    assert windows.admit_now([rpm, tpd], 40) is None
    assert windows.admit_now([rpm], 0) is rpm
    assert await windows.stats(rpm) == (0, clock.time() + 30)
    clock.advance(30)  # the minute that began with the first hit is over; the day is not
    assert windows.admit_now([rpm, tpd], 1) is tpd
    assert windows.admit_now([rpm], 0) is None
    assert await windows.stats(rpm) == (1, clock.time() + 60)
    windows.fill_now([tpd], 500)  # filled to its limit, never past it
    assert await windows.stats(tpd) == (0, clock.time() - 60 + 86400)
    clock.advance(86400)
    assert windows.admit_now([tpd], 100) is None


async def test_local_windows_forget_ended_windows(clock: FakeClock) -> None:
    windows = LocalWindows(clock.time)
    for i in range(100):
        assert windows.admit_now([_limit(1, RateLimitItemPerMinute, f"ip{i}")], 0) is None
    assert len(windows._counts) == 100
    clock.advance(LocalWindows.SWEEP_EVERY + 1)
    assert windows.admit_now([_limit(1, RateLimitItemPerMinute, "new")], 0) is None
    assert list(windows._counts) == [_limit(1, RateLimitItemPerMinute, "new").key]


# -- failed authentication -------------------------------------------------------------------


async def test_auth_failure_throttling(make: MakeLimiter) -> None:
    limiter = make(auth_max_failures=3, auth_window_seconds=300)
    for _ in range(3):
        await limiter.check_auth_allowed("10.0.0.1")
        await limiter.record_auth_failure("10.0.0.1")
    with pytest.raises(RateLimitError) as info:
        await limiter.check_auth_allowed("10.0.0.1")
    assert info.value.code == "too_many_failed_attempts"
    assert 1 <= info.value.retry_after <= 300
    await limiter.record_auth_failure("10.0.0.1")  # recording more while blocked is harmless
    await limiter.check_auth_allowed("10.0.0.2")
    await limiter.check_auth_allowed("10.0.0.1", "alice")  # ip+account is its own count

    for _ in range(3):
        await limiter.record_auth_failure("10.0.0.3", "alice")
    with pytest.raises(RateLimitError):
        await limiter.check_auth_allowed("10.0.0.3", "alice")
    await limiter.check_auth_allowed("10.0.0.3", "bob")
    await limiter.check_auth_allowed("10.0.0.3")


async def test_default_auth_limit_is_ten(make: MakeLimiter) -> None:
    limiter = make()
    for _ in range(10):
        await limiter.check_auth_allowed("10.9.9.9")
        await limiter.record_auth_failure("10.9.9.9")
    with pytest.raises(RateLimitError):
        await limiter.check_auth_allowed("10.9.9.9")


# -- storage URIs ----------------------------------------------------------------------------


async def test_storage_uris() -> None:
    limiter = RateLimiter("memory://")
    await limiter.hit_request(Subject(key_id="k", key_rpm=1), 0)
    await limiter.close()
    with pytest.raises(ConfigError, match=r"scheme 'nosuch'") as info:
        RateLimiter("nosuch://user:secret@host")
    assert "secret" not in info.value.message
    with pytest.raises(ConfigError):
        RateLimiter("127.0.0.1:6379")


# -- two processes, one Redis ----------------------------------------------------------------

_WORKER = r"""
import asyncio, json, os, sys

from thinktank.accounts.ratelimit import RateLimiter, Subject
from thinktank.errors import RateLimitError


async def main(url: str, prefix: str, limit: int, attempts: int) -> None:
    limiter = RateLimiter(url, key_prefix=prefix)
    subject = Subject(key_id="shared", key_rpm=limit, key_tpm=100_000, user_id=f"u{os.getpid()}", user_rpm=10_000)
    await limiter.hit_request(Subject(key_id="warm-up"), 0)  # connect before the start signal
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    async def one() -> float | None:
        try:
            await limiter.hit_request(subject, 10)
        except RateLimitError as exc:
            return exc.retry_after
        return None

    results = await asyncio.gather(*(one() for _ in range(attempts)))
    await limiter.close()
    refusals = [r for r in results if r is not None]
    print(json.dumps({"admitted": len(results) - len(refusals), "refusals": refusals}), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"tt-test-{uuid4().hex}"
    yield prefix
    await _delete_keys(redis_url, prefix)


async def test_two_processes_share_one_redis_limit(redis_url: str, redis_prefix: str) -> None:
    prefix, limit, attempts = redis_prefix, 150, 300
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            redis_url,
            prefix,
            str(limit),
            str(attempts),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate(b"go\n") for p in procs)), 120)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert [p.returncode for p in procs] == [0, 0]
    reports = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]

    # How the admissions split between the processes depends on scheduling: not asserted.
    assert sum(r["admitted"] for r in reports) == limit
    refusals = [ra for r in reports for ra in r["refusals"]]
    assert len(refusals) == 2 * attempts - limit
    assert all(ra >= 1 for ra in refusals)

    # Only admitted requests were charged their tokens: 150 x 10 of the shared key's 100_000.
    check = RateLimiter(redis_url, key_prefix=prefix)
    try:
        tokens_only = Subject(key_id="shared", key_tpm=100_000)
        await check.hit_request(tokens_only, 100_000 - limit * 10)
        with pytest.raises(RateLimitError):
            await check.hit_request(tokens_only, 1)
    finally:
        await check.close()


# -- Redis: large limits are leased a share at a time ---------------------------------------------


def _redis_key(prefix: str, amount: int, *ids: str) -> str:
    return RedisWindows.PREFIX + Limit.of(RateLimitItemPerMinute(amount, namespace=prefix), ids, tokens=False,
                                          who="").key


async def _counter(url: str, key: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        return int(await client.get(key) or 0)
    finally:
        await client.aclose()


async def test_a_busy_key_takes_a_lease_and_hands_back_what_is_left(redis_url: str, redis_prefix: str) -> None:
    limiter = RateLimiter(redis_url, key_prefix=redis_prefix)
    subject = Subject(key_id="k", key_rpm=100_000)
    key = _redis_key(redis_prefix, 100_000, "key", "k", "requests")
    try:
        await _admit(limiter, subject, 500)
        assert await _counter(redis_url, key) == 1 + 1000  # one lease (1 %) served all 500
    finally:
        await limiter.close()
    assert await _counter(redis_url, key) == 500  # what was not used went back


async def test_leases_of_two_processes_never_admit_more_than_the_limit(redis_url: str, redis_prefix: str) -> None:
    a = RateLimiter(redis_url, key_prefix=redis_prefix)
    b = RateLimiter(redis_url, key_prefix=redis_prefix)
    subject = Subject(key_id="k", key_rpm=2000, user_id="u", user_rpm=100_000)
    try:
        results = await asyncio.gather(*((a if i % 2 else b).hit_request(subject, 0) for i in range(2600)),
                                       return_exceptions=True)
    finally:
        await a.close()
        await b.close()
    admitted = sum(r is None for r in results)
    assert all(r is None or isinstance(r, RateLimitError) for r in results)
    assert 2000 - 2 * 20 <= admitted <= 2000  # each may hold up to 1 % unused when the other is refused
    assert await _counter(redis_url, _redis_key(redis_prefix, 2000, "key", "k", "requests")) == admitted
    assert await _counter(redis_url, _redis_key(redis_prefix, 100_000, "user", "u", "requests")) == admitted


async def test_a_window_about_to_end_is_charged_per_request_not_leased(redis_url: str, redis_prefix: str,
                                                                      clock: FakeClock) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    windows = RedisWindows(client, clock.time)
    limit = Limit.of(RateLimitItemPerMinute(100_000, namespace=redis_prefix), ("key", "k", "requests"),
                     tokens=False, who="key k")
    key = RedisWindows.PREFIX + limit.key
    try:
        assert await windows.admit([limit], 0) is None  # leases 1 + 1 %
        assert int(await client.get(key) or 0) == 1001
        await client.pexpire(key, 300)  # the window ends in 0.3 s...
        clock.advance(60)  # ...and this process's lease has run out
        for _ in range(50):
            assert await windows.admit([limit], 0) is None
        assert int(await client.get(key) or 0) == 1001 + 50  # one unit per request, no lease that would go to waste
    finally:
        await client.aclose()
