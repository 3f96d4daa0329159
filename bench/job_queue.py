"""What a job costs. The embedded queue against the bare ``asyncio`` task it replaced (defer and run N no-op
jobs, interleaved A B A B), and the PostgreSQL queue's defer time and its time from defer to the handler's start
(one worker, woken by LISTEN/NOTIFY; a job deferred while the worker is between two looks for jobs can wait
for its next look, ``poll``: 1 s).

    python bench/job_queue.py --jobs 20000 --rounds 5         # the local PostgreSQL for the second part
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from typing import Any

PG_ADMIN = os.environ.get("THINKTANK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


async def bare_tasks(n: int) -> float:
    done = 0

    async def job(payload: dict[str, Any]) -> None:
        nonlocal done
        done += 1

    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    for i in range(n):
        task = asyncio.get_running_loop().create_task(job({"i": i}))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    assert done == n
    return (time.perf_counter() - start) / n * 1e6


async def local_queue(n: int) -> float:
    from thinktank.jobs import LocalQueue

    done = 0

    async def job(payload: dict[str, Any]) -> None:
        nonlocal done
        done += 1

    queue = LocalQueue()
    queue.register("bench.noop", job)
    start = time.perf_counter()
    for i in range(n):
        await queue.defer("bench.noop", {"i": i})
    await queue.settle("bench.noop")
    assert done == n
    return (time.perf_counter() - start) / n * 1e6


async def postgres(n: int) -> tuple[list[float], list[float]]:
    import asyncpg

    from thinktank.jobs.postgres import PgQueue
    from thinktank.store.migrate import upgrade

    name = f"tt_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    await asyncio.to_thread(upgrade, url)
    started: dict[int, float] = {}
    woke = asyncio.Event()

    async def job(payload: dict[str, Any]) -> None:
        started[int(payload["i"])] = time.perf_counter()
        woke.set()

    queue = PgQueue(url)
    queue.register("bench.noop", job)
    await queue.start()
    defers: list[float] = []
    waits: list[float] = []
    try:
        for i in range(n):  # one at a time: the latency, not the throughput
            t0 = time.perf_counter()
            await queue.defer("bench.noop", {"i": i})
            t1 = time.perf_counter()
            defers.append((t1 - t0) * 1e3)
            await woke.wait()
            woke.clear()
            waits.append((started[i] - t1) * 1e3)
            await asyncio.sleep(0.01)  # the next job comes a moment later, as requests do
    finally:
        await queue.stop()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    return defers, waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pg-jobs", type=int, default=200)
    args = parser.parse_args()
    bare: list[float] = []
    local: list[float] = []
    for _ in range(args.rounds):  # interleaved
        bare.append(asyncio.run(bare_tasks(args.jobs)))
        local.append(asyncio.run(local_queue(args.jobs)))
    print(f"asyncio task: median {statistics.median(bare):.1f} µs a job ({', '.join(f'{x:.1f}' for x in bare)})")
    print(f"LocalQueue:   median {statistics.median(local):.1f} µs a job ({', '.join(f'{x:.1f}' for x in local)})")
    defers, waits = asyncio.run(postgres(args.pg_jobs))
    q = statistics.quantiles
    print(f"PgQueue defer: median {statistics.median(defers):.2f} ms, p95 {q(defers, n=20)[-1]:.2f} ms; "
          f"defer to start: median {statistics.median(waits):.2f} ms, p95 {q(waits, n=20)[-1]:.2f} ms "
          f"({len(waits)} jobs)")


if __name__ == "__main__":
    main()
