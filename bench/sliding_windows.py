#!/usr/bin/env python3
"""What a rate-limit check costs with fixed and with sliding windows (``rate_limits: {window: ...}``), in
memory and in Redis, interleaved (fixed, sliding, sliding, fixed, ...).

    python bench/sliding_windows.py                       # memory and Redis, a key with rpm and tpm
    python bench/sliding_windows.py --redis redis://127.0.0.1:6379/0 --rounds 6

A key with a request and a token limit per minute (large: nothing is refused); ``hit_request`` with an
estimate of 20 tokens, timed in CPU microseconds per request (memory) and wall microseconds per request
(Redis: a round trip; the fixed windows lease large limits and go to Redis once per lease, the sliding ones
go once per request).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid

from thinktank.accounts.ratelimit import RateLimiter, Subject


async def measure(uri: str | None, window: str, n: int) -> float:
    prefix = f"tt-bench-{uuid.uuid4().hex}"
    limiter = RateLimiter(uri, key_prefix=prefix, window=window)  # type: ignore[arg-type]
    subject = Subject(key_id="k1", key_rpm=100_000_000, key_tpm=1_000_000_000)
    try:
        for _ in range(1000):
            await limiter.hit_request(subject, 20)
        clock = time.process_time if uri is None else time.perf_counter
        started = clock()
        for _ in range(n):
            await limiter.hit_request(subject, 20)
        return (clock() - started) / n * 1e6
    finally:
        await limiter.close()
        if uri is not None:
            import redis.asyncio as aioredis

            client = aioredis.from_url(uri)
            keys = [k async for k in client.scan_iter(match=f"*{prefix}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--n", type=int, default=100_000)
    a = ap.parse_args()
    for name, uri, n in (("memory", None, a.n), ("redis", a.redis, a.n // 20)):
        runs: dict[str, list[float]] = {"fixed": [], "sliding": []}
        for r in range(a.rounds):
            for window in ("fixed", "sliding") if r % 2 == 0 else ("sliding", "fixed"):
                runs[window].append(asyncio.run(measure(uri, window, n)))
        unit = "CPU" if uri is None else "wall"
        print(f"{name:<7} " + "  ".join(f"{w} {statistics.median(v):.2f} us ({unit}, runs "
                                         f"{[round(x, 2) for x in v]})" for w, v in runs.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
