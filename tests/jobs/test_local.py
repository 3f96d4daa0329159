"""The embedded queue: jobs as tasks of this process, with the same semantics as the PostgreSQL one (locks,
queueing locks, retries, delays, periodic jobs, status reads)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from thinktank.jobs import JobQueue, LocalQueue, RetryPolicy, UnknownJobError

from ..fakes.clock import FakeClock


class Probe:
    """A handler that records its payloads and how many of its runs overlap; it waits for ``gate`` if set."""

    def __init__(self, gate: asyncio.Event | None = None, fail: int = 0) -> None:
        self.gate = gate
        self.fail = fail
        self.seen: list[dict[str, Any]] = []
        self.running = 0
        self.most = 0

    async def __call__(self, payload: dict[str, Any]) -> None:
        self.seen.append(payload)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if self.fail:
                self.fail -= 1
                raise RuntimeError("boom")
        finally:
            self.running -= 1


async def _until(queue: JobQueue, job_id: str, status: str) -> None:
    for _ in range(1000):
        info = await queue.get(job_id)
        if info is not None and info.status == status:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} never became {status}: {await queue.get(job_id)}")


async def test_a_job_runs_with_its_payload_and_its_status_can_be_read() -> None:
    queue, probe = LocalQueue(), Probe()
    queue.register("t.echo", probe)
    job_id = await queue.defer("t.echo", {"kb_id": "kb_1", "n": 2})
    assert job_id is not None
    await queue.settle("t.echo")
    assert probe.seen == [{"kb_id": "kb_1", "n": 2}]
    info = await queue.get(job_id)
    assert info is not None and (info.name, info.status, info.attempts) == ("t.echo", "succeeded", 1)
    assert await queue.get("404") is None and await queue.active("t.echo") == 0


async def test_jobs_sharing_a_lock_run_one_at_a_time_others_run_together() -> None:
    gate = asyncio.Event()
    queue, locked, free = LocalQueue(concurrency=8), Probe(gate), Probe(gate)
    queue.register("t.locked", locked)
    queue.register("t.free", free)
    for i in range(4):
        await queue.defer("t.locked", {"i": i}, lock="kb_1")
        await queue.defer("t.free", {"i": i})
    await asyncio.sleep(0.05)
    assert (locked.running, free.running) == (1, 4)
    gate.set()
    await queue.settle("t.locked")
    await queue.settle("t.free")
    assert locked.most == 1 and [p["i"] for p in locked.seen] == [0, 1, 2, 3]  # in the order queued
    assert free.most == 4


async def test_a_queueing_lock_keeps_one_job_waiting_and_frees_once_it_starts() -> None:
    gate = asyncio.Event()
    queue, probe = LocalQueue(), Probe(gate)
    queue.register("t.build", probe)
    first = await queue.defer("t.build", {"n": 1}, lock="k", queueing_lock="k")
    await asyncio.sleep(0.01)  # it started: its queueing lock is free again
    second = await queue.defer("t.build", {"n": 2}, lock="k", queueing_lock="k")
    third = await queue.defer("t.build", {"n": 3}, lock="k", queueing_lock="k")  # the second is still waiting
    assert first is not None and second is not None and third is None
    gate.set()
    await queue.settle("t.build")
    assert [p["n"] for p in probe.seen] == [1, 2]


async def test_concurrency_is_bounded() -> None:
    gate = asyncio.Event()
    queue, probe = LocalQueue(concurrency=2), Probe(gate)
    queue.register("t.work", probe)
    ids = [await queue.defer("t.work", {"i": i}) for i in range(5)]
    await asyncio.sleep(0.05)
    assert probe.running == 2 and await queue.active("t.work") == 5
    states = [info.status for i in ids if i is not None and (info := await queue.get(i)) is not None]
    assert sorted(states) == ["doing", "doing", "queued", "queued", "queued"]
    gate.set()
    await queue.settle("t.work")
    assert probe.most == 2 and len(probe.seen) == 5


async def test_errors_are_retried_only_where_the_policy_says() -> None:
    clock = FakeClock()
    queue = LocalQueue(clock=clock)
    retried, once = Probe(fail=2), Probe(fail=1)
    queue.register("t.retried", retried, retry=RetryPolicy(attempts=3, wait=2.0))
    queue.register("t.once", once)
    a = await queue.defer("t.retried", {})
    b = await queue.defer("t.once", {})
    assert a is not None and b is not None
    await queue.settle("t.retried")
    await queue.settle("t.once")
    info_a, info_b = await queue.get(a), await queue.get(b)
    assert info_a is not None and (info_a.status, info_a.attempts) == ("succeeded", 3)
    assert info_b is not None and (info_b.status, info_b.attempts) == ("failed", 1)
    assert clock.sleeps == [2.0, 4.0]  # the wait doubles


async def test_a_delayed_job_waits_on_the_clock() -> None:
    clock = FakeClock()
    queue, probe = LocalQueue(clock=clock), Probe()
    queue.register("t.later", probe)
    await queue.defer("t.later", {}, delay=30.0)
    await queue.settle("t.later")
    assert clock.sleeps == [30.0] and len(probe.seen) == 1


async def test_periodic_jobs_and_clean_ups_run_once_started_and_stop_with_the_queue() -> None:
    clock = FakeClock()
    queue = LocalQueue(clock=clock, cleanup_every=7.0)
    ticks: list[float] = []
    cleaned: list[str] = []

    async def tick() -> None:
        ticks.append(clock.monotonic())

    async def broken() -> None:
        raise RuntimeError("a broken clean-up")

    async def cleanup() -> None:
        cleaned.append("x")

    queue.every("t.tick", 3.0, tick)
    queue.add_cleanup(broken)
    queue.add_cleanup(cleanup)
    await queue.start()
    for _ in range(200):
        if len(ticks) >= 3 and cleaned:
            break
        await asyncio.sleep(0)
    await queue.stop()
    assert len(ticks) >= 3 and cleaned  # one clean-up failing does not keep the next from running
    assert 3.0 in clock.sleeps and 7.0 in clock.sleeps
    count = len(ticks)
    await asyncio.sleep(0.01)
    assert len(ticks) == count  # stopped


async def test_stop_cancels_running_jobs_and_refuses_new_ones() -> None:
    queue, probe = LocalQueue(), Probe(asyncio.Event())
    queue.register("t.slow", probe)
    job_id = await queue.defer("t.slow", {})
    await asyncio.sleep(0.01)
    await queue.stop()
    assert job_id is not None
    info = await queue.get(job_id)
    assert info is not None and info.status == "failed"
    assert await queue.defer("t.slow", {}) is None


async def test_names_are_checked() -> None:
    queue = LocalQueue()
    queue.register("t.a", Probe())
    with pytest.raises(ValueError, match="registered already"):
        queue.register("t.a", Probe())
    with pytest.raises(ValueError, match="registered already"):
        queue.every("t.a", 1.0, _noop)
    with pytest.raises(UnknownJobError):
        await queue.defer("t.nope", {})
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


async def _noop() -> None:
    return None


def test_a_retry_policy_counts_runs_and_doubles_its_wait() -> None:
    policy = RetryPolicy(attempts=3, wait=1.5, after_errors=False)
    assert policy.again(1, crashed=True) and policy.again(2, crashed=True) and not policy.again(3, crashed=True)
    assert not policy.again(1, crashed=False)
    assert [policy.delay(n) for n in (1, 2, 3)] == [1.5, 3.0, 6.0]
    assert not RetryPolicy().again(1, crashed=True)  # the default runs a job once
