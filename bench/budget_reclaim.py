#!/usr/bin/env python3
"""How long the budget lease of a process killed with SIGKILL stays out of its budget, with the real renewal
and reclaim loops (:mod:`thinktank.accounts.budget_leases`).

    python bench/budget_reclaim.py                              # SQLite, PostgreSQL and Redis, 3 runs each
    python bench/budget_reclaim.py --stores redis --ttl 10 --runs 5

This process runs a started ledger (a live member of the fleet: it reclaims every ttl/2 s); a child process
starts a ledger of its own (renewing every ttl/5 s), leases half of a $1 budget and is killed with SIGKILL at
a random moment of both cycles; the budget is read every 50 ms until the lease is back. The bound is 1.5 x
ttl after the dead process's last renewal: between 0.8 and 1.5 x ttl after the kill.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

HOLDER = """
import asyncio, sys
sys.path.insert(0, {bench!r})
from budget_reclaim import hold_and_wait
asyncio.run(hold_and_wait({kind!r}, {url!r}, {prefix!r}, {ttl!r}))
"""


async def open_store(kind: str, url: str, prefix: str) -> tuple[Any, Any]:
    from thinktank.accounts.budgets import RedisBudgetStore, SqlBudgetStore
    from thinktank.clock import SystemClock

    if kind == "redis":
        import redis.asyncio as aioredis

        client = aioredis.from_url(url)
        return RedisBudgetStore(client, SystemClock(), prefix=prefix), client.aclose
    from thinktank.store.db import Database

    db = Database(url)
    return SqlBudgetStore(db, SystemClock()), db.close


async def hold_and_wait(kind: str, url: str, prefix: str, ttl: float) -> None:
    """The child: lease half of the budget, say so, and live (renewing) until killed."""
    from thinktank.accounts.budgets import BudgetLedger, BudgetSpec
    from thinktank.clock import SystemClock

    store, _close = await open_store(kind, url, prefix)
    ledger = BudgetLedger(store, SystemClock(), lease_fraction=0.5, lease_ttl=ttl)
    ledger.start()
    await ledger.reserve([BudgetSpec("key", "bench", 1.0, "total", "bench")], 0.1)
    print("ready", flush=True)
    await asyncio.sleep(3600)


async def fresh(kind: str) -> str:
    from thinktank.store.migrate import upgrade_async

    if kind == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(prefix='tt-reclaim-')}/b.db"
    elif kind == "postgres":
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN)
        await conn.execute('DROP DATABASE IF EXISTS "tt_bench_reclaim" WITH (FORCE)')
        await conn.execute('CREATE DATABASE "tt_bench_reclaim"')
        await conn.close()
        url = PG_ADMIN.rsplit("/", 1)[0] + "/tt_bench_reclaim"
    else:
        return REDIS
    await upgrade_async(url)
    return url


async def one(kind: str, ttl: float, rng: random.Random) -> float:
    """Seconds from the SIGKILL until the dead process's lease is back in the budget."""
    from thinktank.accounts.budgets import BudgetLedger, BudgetSpec
    from thinktank.clock import SystemClock

    url = await fresh(kind)
    prefix = f"tt:bench:{uuid.uuid4().hex}"
    store, close = await open_store(kind, url, prefix)
    spec = BudgetSpec("key", "bench", 1.0, "total", "bench")
    ledger = BudgetLedger(store, SystemClock(), lease_ttl=ttl)
    ledger.start()  # a live process of the fleet: reclaims every ttl/2 s
    code = HOLDER.format(bench=BENCH_DIR, kind=kind, url=url, prefix=prefix, ttl=ttl)
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert (await child.stdout.readline()).strip() == b"ready"
        await asyncio.sleep(rng.uniform(0, ttl / 2))  # anywhere in the renewal and the reclaim cycles
        child.send_signal(signal.SIGKILL)
        await child.wait()
        killed = time.monotonic()
        polls = 0
        while (await store.read(spec, "total"))[2] > 1e-9:
            polls += 1
            await asyncio.sleep(0.05)
        return time.monotonic() - killed
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await ledger.close()
        await close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", default="sqlite,postgres,redis")
    ap.add_argument("--ttl", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    rng = random.Random(1)
    for kind in a.stores.split(","):
        took = [asyncio.run(one(kind, a.ttl, rng)) for _ in range(a.runs)]
        print(f"{kind:<9} ttl {a.ttl:g} s (bound {a.ttl * 1.5:g} s after the last renewal): lease back "
              f"{min(took):.1f}-{max(took):.1f} s after SIGKILL (median {statistics.median(took):.1f} s), "
              f"runs {[round(t, 1) for t in took]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
