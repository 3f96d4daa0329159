#!/usr/bin/env python3
"""The budget hold's hot path in-process: what one request's hold costs (``BudgetMeter.reserve``, then
``settle``), served from the process's lease, on a started ledger over SQLite (or Redis), in two checkouts,
interleaved (A B A B ...) so that drift of a shared machine hits both alike.

    python bench/budget_hot_path.py --base /tmp/tt-base/src            # this checkout against another one
    python bench/budget_hot_path.py --base /tmp/tt-base/src --redis redis://127.0.0.1:6379/0

``--base`` is the ``src`` directory of the other checkout (e.g. ``git archive <commit> src | tar -x -C
/tmp/tt-base``). Each run is a fresh interpreter timing ``--n`` holds after a warm-up; the median of each
side's runs and the median of the per-round ratios are printed. ``--one`` (internal) runs one measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


async def measure(n: int, redis_url: str | None) -> float:
    """Microseconds of CPU per hold (reserve + settle) of a priced request, the budget's lease covering it."""
    from thinktank.accounts.budgets import BudgetLedger, BudgetSpec, RedisBudgetStore, SqlBudgetStore
    from thinktank.accounts.governance import BudgetMeter
    from thinktank.clock import SystemClock
    from thinktank.config import DeploymentConfig
    from thinktank.gateway.pricing import price_for
    from thinktank.store.db import Database
    from thinktank.store.migrate import upgrade_async

    clock = SystemClock()
    closing: list[Any] = []
    store: Any
    if redis_url:
        import redis.asyncio as aioredis

        client = aioredis.from_url(redis_url)
        closing.append(client.aclose)
        store = RedisBudgetStore(client, clock, prefix=f"tt:bench:{uuid.uuid4().hex}")
    else:
        url = f"sqlite:///{tempfile.mkdtemp(prefix='tt-hot-')}/b.db"
        await upgrade_async(url)
        db = Database(url)
        closing.append(db.close)
        store = SqlBudgetStore(db, clock)
    ledger = BudgetLedger(store, clock)
    ledger.start()
    config = DeploymentConfig(name="m", provider="openai", input_price=2.5, output_price=10.0)

    class Dep:  # what the meter reads of a deployment
        name = id = "m"
        price = price_for(config)

    specs = [BudgetSpec("key", "k1", 1_000_000.0, "day", "key k1"), BudgetSpec("user", "u1", 1_000_000.0, "month",
                                                                                "user u1")]
    meter = BudgetMeter(ledger, specs, 4096)
    dep: Any = Dep()
    cost = dep.price.cost(20, 8)
    for _ in range(2000):  # warm-up: the lease is taken here
        hold = await meter.reserve(dep, 20, 16)
        await hold.settle(cost)
    started = time.process_time()  # CPU time: what other tenants of a shared machine disturb least
    for _ in range(n):
        hold = await meter.reserve(dep, 20, 16)
        await hold.settle(cost)
    took = time.process_time() - started
    await ledger.close()
    for close in closing:
        await close()
    return took / n * 1e6


def run_one(src: Path, n: int, redis_url: str | None) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, __file__, "--one", "--n", str(n)] + (["--redis", redis_url] if redis_url else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["us"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, help="src directory of the checkout to compare with")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--redis", default=None)
    ap.add_argument("--one", action="store_true")
    a = ap.parse_args()
    if a.one:
        print(json.dumps({"us": asyncio.run(measure(a.n, a.redis))}))
        return 0
    here = ROOT / "src"
    sides = {"this": here, **({"base": a.base} if a.base else {})}
    results: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(a.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))  # A B, B A, ...
        for side in order:
            results[side].append(run_one(sides[side], a.n, a.redis))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} us" for k, v in results.items()), flush=True)
    for side, values in results.items():
        print(f"{side}: median {statistics.median(values):.2f} us, min {min(values):.2f} us of CPU per hold "
              f"(reserve + settle), runs {[round(v, 2) for v in values]}")
    if "base" in results:
        ratio = statistics.median(t / b for t, b in zip(results["this"], results["base"], strict=True))
        print(f"this / base: median of per-round ratios {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
