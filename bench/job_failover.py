"""How long the job of a worker killed with SIGKILL mid-job waits before another worker runs it.

thinktank's PostgreSQL queue (procrastinate: workers beat every second, a periodic check hands the jobs of a
worker silent for ``THINKTANK_JOB_STALL_AFTER`` seconds to the others) against arq on Redis, which takes such a
job up again only once its in-progress key has expired: the longest job timeout of the worker + 10 s.

Each run: worker A takes a job and hangs in it; worker B waits, idle; A is killed; the time from the kill to the
job's end on B is measured.

    python bench/job_failover.py procrastinate --runs 5                       # thinktank's venv, local PostgreSQL
    /tmp/arqvenv/bin/python bench/job_failover.py arq --runs 3 --job-timeout 30   # a venv with arq, local Redis
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

PG_ADMIN = os.environ.get("THINKTANK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("THINKTANK_TEST_REDIS", "redis://127.0.0.1:6379/0")


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    while True:
        if await check():
            return
        await asyncio.sleep(0.02)


# -- procrastinate (thinktank.jobs.postgres) ----------------------------------------------------------

async def pg_worker(url: str, hang: bool) -> None:
    from sqlalchemy import text

    from thinktank.jobs import RetryPolicy
    from thinktank.jobs.postgres import PgQueue
    from thinktank.store.db import Database

    db = Database(url)

    async def job(payload: dict[str, Any]) -> None:
        async with db.session() as s:
            await s.execute(text("INSERT INTO bench_runs VALUES (:k, :pid)"), {"k": payload["key"], "pid": os.getpid()})
        if hang:
            await asyncio.Event().wait()

    queue = PgQueue(url)  # the defaults a server runs with: heartbeat 1 s, stall after 5 s, checked every second
    queue.register("bench.job", job, retry=RetryPolicy(attempts=3))
    await queue.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def pg_runs(runs: int) -> list[float]:
    import asyncpg
    from sqlalchemy import text

    from thinktank.jobs import RetryPolicy
    from thinktank.jobs.postgres import PgQueue
    from thinktank.store.db import Database
    from thinktank.store.migrate import upgrade

    name = f"tt_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    async with db.session() as s:
        await s.execute(text("CREATE TABLE bench_runs (key text, pid integer)"))

    async def nothing(payload: dict[str, Any]) -> None:
        return None

    deferring = PgQueue(url)
    deferring.register("bench.job", nothing, retry=RetryPolicy(attempts=3))
    await deferring.start(worker=False)
    took: list[float] = []
    try:
        for run in range(runs):
            a = spawn("_pg", url, "hang")
            ready(a)
            job_id = await deferring.defer("bench.job", {"key": f"k{run}"})
            assert job_id is not None
            await until(partial(_pg_started, db, f"k{run}"))
            b = spawn("_pg", url, "finish")
            ready(b)
            a.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            a.wait()
            await until(partial(_succeeded, deferring, job_id))
            took.append(time.monotonic() - killed)
            b.terminate()
            b.wait()
            print(f"procrastinate run {run + 1}: {took[-1]:.2f} s", flush=True)
    finally:
        await deferring.stop()
        await db.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    return took


async def _succeeded(queue: Any, job_id: str) -> bool:
    info = await queue.get(job_id)
    return info is not None and bool(info.status == "succeeded")


async def _pg_started(db: Any, key: str) -> bool:
    from sqlalchemy import text

    async with db.engine.connect() as conn:
        return bool((await conn.execute(text("SELECT count(*) FROM bench_runs WHERE key = :k"), {"k": key})).scalar())


# -- arq ----------------------------------------------------------------------------------------------

async def arq_worker(queue_name: str, hang: bool, job_timeout: int) -> None:
    from arq.connections import RedisSettings  # type: ignore[import-not-found,unused-ignore]
    from arq.worker import Worker, func  # type: ignore[import-not-found,unused-ignore]

    async def job(ctx: dict[str, Any], key: str) -> str:
        await ctx["redis"].set(f"{queue_name}:started:{key}", os.getpid())
        if hang:
            await asyncio.Event().wait()
        return "done"

    worker = Worker(functions=[func(job, name="job")], redis_settings=RedisSettings.from_dsn(REDIS),
                    queue_name=queue_name, handle_signals=False, job_timeout=job_timeout, max_tries=3, poll_delay=0.1)
    print("ready", flush=True)
    await worker.async_run()


async def arq_runs(runs: int, job_timeout: int) -> list[float]:
    from arq import create_pool  # type: ignore[import-not-found,unused-ignore]
    from arq.connections import RedisSettings  # type: ignore[import-not-found,unused-ignore]

    pool = await create_pool(RedisSettings.from_dsn(REDIS))
    took: list[float] = []
    try:
        for run in range(runs):
            queue_name = f"bench-failover-{secrets.token_hex(4)}"
            a = spawn("_arq", queue_name, "hang", str(job_timeout))
            ready(a)
            job = await pool.enqueue_job("job", f"k{run}", _queue_name=queue_name)
            assert job is not None
            await until(partial(_arq_started, pool, f"{queue_name}:started:k{run}"))
            b = spawn("_arq", queue_name, "finish", str(job_timeout))
            ready(b)
            a.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            a.wait()
            assert await job.result(timeout=job_timeout + 120, poll_delay=0.05) == "done"
            took.append(time.monotonic() - killed)
            b.terminate()
            b.wait()
            print(f"arq (job timeout {job_timeout} s) run {run + 1}: {took[-1]:.2f} s", flush=True)
    finally:
        await pool.aclose()
    return took


async def _arq_started(pool: Any, key: str) -> bool:
    return bool(await pool.get(key))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_pg":
        asyncio.run(pg_worker(sys.argv[2], sys.argv[3] == "hang"))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_arq":
        asyncio.run(arq_worker(sys.argv[2], sys.argv[3] == "hang", int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("queue", choices=["procrastinate", "arq"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--job-timeout", type=int, default=300, help="arq's job_timeout (its default: 300 s)")
    args = parser.parse_args()
    took = asyncio.run(pg_runs(args.runs) if args.queue == "procrastinate" else arq_runs(args.runs, args.job_timeout))
    print(f"{args.queue}: kill -9 to done elsewhere, median {statistics.median(took):.2f} s, "
          f"min {min(took):.2f} s, max {max(took):.2f} s over {len(took)} runs")


if __name__ == "__main__":
    main()
