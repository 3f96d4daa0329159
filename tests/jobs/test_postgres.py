"""The PostgreSQL queue (procrastinate) on the real local PostgreSQL: several workers on one database, locks
that hold across them, periodic jobs run by one worker at a time, and the jobs of a worker killed with SIGKILL
run again on another one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from thinktank.config import Settings
from thinktank.errors import ConfigError
from thinktank.jobs import JobQueue, LocalQueue, RetryPolicy, build_queue
from thinktank.jobs.conninfo import libpq_conninfo
from thinktank.jobs.postgres import PgQueue, cron_every
from thinktank.store.db import Database

from .worker_proc import RUNS_TABLE, register, worker

ROOT = Path(__file__).resolve().parents[2]


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}")


async def status(queue: JobQueue, job_id: str) -> str | None:
    info = await queue.get(job_id)
    return info.status if info is not None else None


@pytest.fixture
async def queues(pg_url: str) -> AsyncIterator[list[PgQueue]]:
    """Queues made by the test (``worker(pg_url)``), stopped at its end."""
    made: list[PgQueue] = []
    yield made
    for q in made:
        await q.stop()


async def test_a_job_runs_once_its_status_and_retries_follow_its_policy(pg_url: str, queues: list[PgQueue]) -> None:
    queue = worker(pg_url)
    queues.append(queue)
    seen: list[dict[str, Any]] = []
    failures = {"t.flaky": 2, "t.once": 1}

    def job(name: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def run(payload: dict[str, Any]) -> None:
            seen.append(payload)
            if failures.get(name):
                failures[name] -= 1
                raise RuntimeError("boom")

        return run

    queue.register("t.echo", job("t.echo"))
    queue.register("t.flaky", job("t.flaky"), retry=RetryPolicy(attempts=3, wait=0.0))
    queue.register("t.once", job("t.once"))
    await queue.start()
    echo = await queue.defer("t.echo", {"kb_id": "kb_1", "nested": {"n": [1, 2]}})
    flaky = await queue.defer("t.flaky", {"n": 2})
    once = await queue.defer("t.once", {"n": 3})
    assert echo is not None and flaky is not None and once is not None
    for job_id, end in ((echo, "succeeded"), (flaky, "succeeded"), (once, "failed")):
        await eventually(partial(_is, queue, job_id, end), what=f"{job_id} {end}")
    assert {"kb_id": "kb_1", "nested": {"n": [1, 2]}} in seen
    info = await queue.get(flaky)
    assert info is not None and (info.name, info.attempts) == ("t.flaky", 3)
    info = await queue.get(once)
    assert info is not None and info.attempts == 1
    assert await queue.get("99999999") is None and await queue.get("not-a-number") is None
    assert await queue.active("t.echo") == 0


async def _is(queue: JobQueue, job_id: str, want: str) -> bool:
    return await status(queue, job_id) == want


async def test_a_lock_holds_across_two_workers_and_every_job_runs_once(pg_url: str, queues: list[PgQueue]) -> None:
    running = most = 0
    ran: list[int] = []

    async def locked(payload: dict[str, Any]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        ran.append(int(payload["i"]))
        running -= 1

    free: list[int] = []

    async def unlocked(payload: dict[str, Any]) -> None:
        free.append(int(payload["i"]))

    for _ in range(2):
        q = worker(pg_url, concurrency=4)
        q.register("t.locked", locked)
        q.register("t.free", unlocked)
        queues.append(q)
    await queues[0].start(worker=False)  # defers only, until both workers race
    for i in range(12):
        await queues[0].defer("t.locked", {"i": i}, lock="kb_1")
        await queues[0].defer("t.free", {"i": i})
    await queues[0].stop()
    queues.clear()
    racing = [worker(pg_url, concurrency=4) for _ in range(2)]
    for q in racing:
        q.register("t.locked", locked)
        q.register("t.free", unlocked)
        queues.append(q)
    await asyncio.gather(*(q.start() for q in racing))

    async def drained() -> bool:
        return not await racing[0].active("t.locked") and not await racing[0].active("t.free")

    await eventually(drained, what="every job ran")
    assert most == 1 and ran == list(range(12))  # one at a time, in the order queued
    assert sorted(free) == list(range(12))  # each once


async def test_a_queueing_lock_keeps_one_job_waiting(pg_url: str, queues: list[PgQueue]) -> None:
    queue = worker(pg_url)
    queues.append(queue)

    async def nothing(payload: dict[str, Any]) -> None:
        return None

    queue.register("t.build", nothing)
    await queue.start(worker=False)
    first = await queue.defer("t.build", {}, lock="kb", queueing_lock="kb")
    second = await queue.defer("t.build", {}, lock="kb", queueing_lock="kb")
    assert first is not None and second is None
    assert await queue.active("t.build") == 1


async def test_a_periodic_job_runs_on_one_worker_at_a_time(pg_url: str, queues: list[PgQueue]) -> None:
    running = most = 0
    by: list[int] = []

    def tick_of(n: int) -> Callable[[], Awaitable[None]]:
        async def tick() -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            by.append(n)
            await asyncio.sleep(1.5)  # longer than the period: the next tick must wait, not overlap
            running -= 1

        return tick

    for n in range(2):
        q = worker(pg_url, concurrency=4)
        q.every("t.tick", 1.0, tick_of(n))
        queues.append(q)
    await asyncio.gather(*(q.start() for q in queues))

    async def ticked() -> bool:
        return len(by) >= 4

    await eventually(ticked, seconds=60, what="four ticks")
    assert most == 1


async def test_the_jobs_of_a_killed_worker_run_again_elsewhere_unless_their_policy_forbids(
    pg_url: str, queues: list[PgQueue],
) -> None:
    db = Database(pg_url)
    try:
        async with db.session() as s:
            await s.execute(text(RUNS_TABLE))
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
        proc = subprocess.Popen([sys.executable, "-m", "tests.jobs.worker_proc", pg_url], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            deferring = worker(pg_url)
            register(deferring, db, hang=False)
            queues.append(deferring)
            await deferring.start(worker=False)
            resumable = await deferring.defer("t.resumable", {"key": "r"})
            fragile = await deferring.defer("t.fragile", {"key": "f"})
            assert resumable is not None and fragile is not None

            async def both_started() -> bool:
                return len(await _runs(db)) == 2

            await eventually(both_started, what="the worker process started both jobs")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        survivor = worker(pg_url)
        register(survivor, db, hang=False)
        queues.append(survivor)
        await survivor.start()
        await eventually(lambda: _is(survivor, resumable, "succeeded"), what="the resumable job succeeded")
        await eventually(lambda: _is(survivor, fragile, "failed"), what="the fragile job failed")
        runs = await _runs(db)
        assert sorted((key, phase, pid == proc.pid) for key, pid, phase in runs) == [
            ("f", "started", True), ("r", "finished", False), ("r", "started", False), ("r", "started", True)]
        info = await survivor.get(resumable)
        assert info is not None and info.attempts == 2
    finally:
        await db.close()


async def _runs(db: Database) -> list[tuple[str, int, str]]:
    async with db.engine.connect() as conn:
        return [(k, p, ph) for k, p, ph in (await conn.execute(text("SELECT key, pid, phase FROM job_runs"))).all()]


async def test_a_stopping_worker_hands_its_running_jobs_to_another(pg_url: str, queues: list[PgQueue]) -> None:
    started = asyncio.Event()
    runs: list[str] = []

    def handler(name: str, hang: bool) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def run(payload: dict[str, Any]) -> None:
            runs.append(name)
            if hang:
                started.set()
                await asyncio.Event().wait()

        return run

    first = worker(pg_url, grace=0.2)
    first.register("t.long", handler("first", hang=True), retry=RetryPolicy(attempts=2))
    queues.append(first)
    await first.start()
    job_id = await first.defer("t.long", {})
    assert job_id is not None
    await asyncio.wait_for(started.wait(), 30)
    second = worker(pg_url)
    second.register("t.long", handler("second", hang=False), retry=RetryPolicy(attempts=2))
    queues.append(second)
    await second.start()
    await first.stop()  # its run is cut short after the grace: the job goes back to the queue
    await eventually(lambda: _is(second, job_id, "succeeded"), what="the job succeeded on the second worker")
    assert runs == ["first", "second"]


async def test_a_database_without_the_queue_tables_is_a_clear_error(queues: list[PgQueue]) -> None:
    from ..fakes.databases import drop_pg, make_empty_pg

    name, url = await make_empty_pg()
    try:
        queue = worker(url)
        with pytest.raises(ConfigError, match="thinktank db upgrade"):
            await queue.start()
    finally:
        await drop_pg(name)


def test_the_queue_is_chosen_from_the_settings_and_the_database(tmp_path: Path) -> None:
    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    pg = "postgresql+asyncpg://u:p@127.0.0.1:5432/db"
    assert isinstance(build_queue(Settings(data_dir=tmp_path), sqlite), LocalQueue)
    assert isinstance(build_queue(Settings(data_dir=tmp_path), pg), PgQueue)
    assert isinstance(build_queue(Settings(data_dir=tmp_path, queue="local"), pg), LocalQueue)
    with pytest.raises(ConfigError, match="PostgreSQL"):
        build_queue(Settings(data_dir=tmp_path, queue="postgres"), sqlite)


def test_periods_become_cron_lines() -> None:
    assert [cron_every(s) for s in (1, 2, 30, 60, 300, 3600, 7200, 86400)] == [
        "* * * * * */1", "* * * * * */2", "* * * * * */30", "*/1 * * * *", "*/5 * * * *", "0 */1 * * *",
        "0 */2 * * *", "0 0 * * *"]
    for bad in (0, 0.5, 7, 90, 7 * 3600, 2 * 86400):
        with pytest.raises(ValueError, match="divides"):
            cron_every(bad)


def test_database_urls_become_libpq_connection_strings() -> None:
    assert libpq_conninfo("postgresql+asyncpg://bob:s%40cret@db.example:5433/tt?ssl=require&command_timeout=5") \
        == "postgresql://bob:s%40cret@db.example:5433/tt?sslmode=require"
    assert libpq_conninfo("postgresql:///tt?host=/var/run/postgresql") == "postgresql:///tt?host=%2Fvar%2Frun%2Fpostgresql"
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        libpq_conninfo("sqlite:///x.db")


async def test_a_worker_whose_connections_are_cut_comes_back(pg_url: str, queues: list[PgQueue]) -> None:
    ran: list[int] = []

    async def job(payload: dict[str, Any]) -> None:
        ran.append(int(payload["n"]))

    queue = worker(pg_url)
    queue.register("t.job", job)
    queues.append(queue)
    await queue.start()
    first = await queue.defer("t.job", {"n": 1})
    assert first is not None
    await eventually(lambda: _is(queue, first, "succeeded"), what="the first job")
    db = Database(pg_url)
    try:
        async with db.engine.connect() as conn:  # every other connection to the database is cut (a restart, a proxy)
            cut = (await conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                           "WHERE datname = current_database() AND pid <> pg_backend_pid()"))).scalar()
    finally:
        await db.close()
    assert cut
    second: str | None = None

    async def deferred() -> bool:
        nonlocal second
        try:
            second = second or await queue.defer("t.job", {"n": 2})
        except Exception:  # the pool notices its dead connections as it hands them out
            return False
        return second is not None

    await eventually(deferred, what="a job deferred again")
    assert second is not None
    await eventually(lambda: _is(queue, second, "succeeded"), what="the job after the cut")
    assert ran == [1, 2]
