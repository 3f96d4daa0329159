"""The embedded queue (SQLite, one machine): jobs are asyncio tasks of the process that deferred them, at most
``concurrency`` running at once; periodic jobs are loops. Nothing is written anywhere: a job dies with its process
(work that must survive a crash keeps its own record and is taken up again at the next start)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ..clock import Clock, SystemClock
from .base import JobInfo, JobQueue, JobState, Periodic, UnknownJobError

__all__ = ["CLEANUP_JOB", "LocalQueue"]

log = logging.getLogger("thinktank.jobs")

CLEANUP_JOB = "thinktank.jobs.cleanup"


@dataclass
class _Job:
    id: str
    name: str
    payload: dict[str, Any]
    lock: str | None
    queueing_lock: str | None
    status: JobState = "queued"
    runs: int = 0

    def info(self) -> JobInfo:
        return JobInfo(self.id, self.name, self.status, self.runs)


class LocalQueue(JobQueue):
    kind = "local"
    shared = False

    def __init__(self, *, concurrency: int = 8, clock: Clock | None = None, keep_finished: int = 10_000,
                 cleanup_every: float = 3600.0) -> None:
        super().__init__()
        if concurrency < 1:
            raise ValueError("concurrency is at least 1")
        self.concurrency = concurrency
        self.clock: Clock = clock or SystemClock()
        self.keep_finished = keep_finished
        self._slots: asyncio.Semaphore | None = None
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        """Each lock in use, with the number of jobs holding or waiting for it."""
        self._waiting: dict[str, str] = {}
        """Queueing locks of jobs not started yet, to the job's id."""
        self._jobs: dict[str, _Job] = {}
        self._finished: OrderedDict[str, JobInfo] = OrderedDict()
        self._tasks: dict[asyncio.Task[None], _Job] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._ids = itertools.count(1)
        self._stopped = False
        self.every(CLEANUP_JOB, cleanup_every, self.run_cleanups)

    # -- deferring -------------------------------------------------------------------------------

    async def defer(
        self, name: str, payload: dict[str, Any], *, lock: str | None = None, queueing_lock: str | None = None,
        delay: float = 0.0,
    ) -> str | None:
        if name not in self.handlers:
            raise UnknownJobError(f"no job handler is registered under {name!r}")
        if self._stopped:
            log.warning("job %s not queued: the queue is stopping", name)
            return None
        if queueing_lock is not None and queueing_lock in self._waiting:
            return None
        job = _Job(str(next(self._ids)), name, payload, lock, queueing_lock)
        self._jobs[job.id] = job
        if queueing_lock is not None:
            self._waiting[queueing_lock] = job.id
        task = asyncio.get_running_loop().create_task(self._run(job, delay), name=f"job {name}[{job.id}]")
        self._tasks[task] = job
        task.add_done_callback(self._forget)
        return job.id

    async def get(self, job_id: str) -> JobInfo | None:
        job = self._jobs.get(job_id)
        return job.info() if job is not None else self._finished.get(job_id)

    async def active(self, name: str) -> int:
        return sum(1 for job in self._jobs.values() if job.name == name)

    async def settle(self, name: str, *, poll: float = 0.05) -> None:
        while running := [task for task, job in self._tasks.items() if job.name == name]:
            await asyncio.gather(*running, return_exceptions=True)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    # -- running ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def _held(self, key: str | None) -> AsyncIterator[None]:
        """The lock ``key`` (jobs with one key run one at a time, first come first served)."""
        if key is None:
            yield
            return
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def _started(self, job: _Job) -> None:
        if job.queueing_lock is not None and self._waiting.get(job.queueing_lock) == job.id:
            del self._waiting[job.queueing_lock]

    async def _run(self, job: _Job, delay: float) -> None:
        handler, policy = self.handlers[job.name]
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        slots = self._slots
        try:
            if delay > 0:
                await self.clock.sleep(delay)
            async with self._held(job.lock):
                self._started(job)
                while True:
                    async with slots:
                        job.status, job.runs = "doing", job.runs + 1
                        try:
                            await handler(job.payload)
                        except asyncio.CancelledError:
                            raise
                        except Exception:
                            log.exception("job %s[%s] failed (run %d)", job.name, job.id, job.runs)
                            retry = policy.again(job.runs, crashed=False)
                        else:
                            job.status = "succeeded"
                            return
                    if not retry:
                        job.status = "failed"
                        return
                    job.status = "queued"
                    await self.clock.sleep(policy.delay(job.runs))
        except asyncio.CancelledError:
            job.status = "failed"
            raise
        finally:
            self._started(job)
            self._jobs.pop(job.id, None)
            self._finished[job.id] = job.info()
            while len(self._finished) > self.keep_finished:
                self._finished.popitem(last=False)

    async def _loop(self, name: str, seconds: float, tick: Periodic) -> None:
        while True:
            await self.clock.sleep(seconds)
            try:
                await tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic job %s failed", name)

    # -- the worker ------------------------------------------------------------------------------

    async def start(self, *, worker: bool = True) -> None:
        """Jobs deferred here always run here (nothing else can see them); ``worker`` only says whether this
        process also runs the periodic jobs, which it does whatever it is told, being the only one."""
        if not worker:
            log.info("THINKTANK_WORKER=false has no effect with the local job queue: jobs run in this process")
        self._stopped = False
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._loop(name, seconds, tick), name=f"periodic {name}")
                       for name, (seconds, tick) in self.periodic.items()]

    async def stop(self) -> None:
        """Jobs still running are cancelled (as a process that stops ends its tasks)."""
        self._stopped = True
        tasks = [*self._loops, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops = []
