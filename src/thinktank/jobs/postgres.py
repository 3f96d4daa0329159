"""The PostgreSQL queue, on procrastinate: jobs are rows (``procrastinate_jobs``, made by migration 0011), any
process on the database may defer them and every worker takes them, woken by LISTEN/NOTIFY.

Locks and queueing locks are procrastinate's own. Periodic jobs are procrastinate's periodic tasks (one job per
tick across the cluster), on a queue of their own whose finished rows the clean-up drops. Workers beat every
``heartbeat`` seconds; a periodic check (every second, never two at once) takes every job left ``doing`` by a
worker silent for ``stall_after`` seconds (killed, host lost) and runs it again if its policy allows, or marks it
failed: so the work of a ``kill -9``'d worker goes on elsewhere within seconds.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
from typing import Any

from procrastinate import App, PsycopgConnector
from procrastinate import exceptions as pe
from procrastinate.jobs import Job, Status
from procrastinate.manager import JobManager
from procrastinate.retry import BaseRetryStrategy, RetryDecision

from ..errors import ConfigError
from .base import NO_RETRY, JobInfo, JobQueue, JobState, RetryPolicy, UnknownJobError
from .conninfo import libpq_conninfo

__all__ = ["JOB_QUEUE", "PERIODIC_QUEUE", "STALLED_JOB", "PgQueue", "cron_every"]

log = logging.getLogger("thinktank.jobs")

JOB_QUEUE = "thinktank"
PERIODIC_QUEUE = "thinktank.periodic"
"""Periodic ticks: their finished rows are dropped at each clean-up (a tick a second adds up)."""
STALLED_JOB = "thinktank.jobs.stalled"
CLEANUP_JOB = "thinktank.jobs.cleanup"

_STATES: dict[str, JobState] = {"todo": "queued", "doing": "doing", "succeeded": "succeeded"}
_GET = "SELECT task_name, status, attempts FROM procrastinate_jobs WHERE id = %(id)s"
_ACTIVE = "SELECT count(*) AS n FROM procrastinate_jobs WHERE task_name = %(name)s AND status IN ('todo', 'doing')"


def cron_every(seconds: float) -> str:
    """A cron line (seconds in a sixth field) that fires every ``seconds``: a whole number that divides a
    minute, a whole number of minutes that divides an hour, of hours that divides a day, or a day."""
    s = int(seconds)
    if s == seconds and s >= 1:
        if s < 60 and 60 % s == 0:
            return f"* * * * * */{s}"
        m, h = s // 60, s // 3600
        if s % 60 == 0 and m < 60 and 60 % m == 0:
            return f"*/{m} * * * *"
        if s % 3600 == 0 and h < 24 and 24 % h == 0:
            return f"0 */{h} * * *"
        if s == 86400:
            return "0 0 * * *"
    raise ValueError(f"a periodic job runs every N seconds where N divides a minute, an hour or a day (got {seconds})")


class _Policy(BaseRetryStrategy):
    """A :class:`RetryPolicy` as procrastinate asks for it: after an error, or after a stop that cut a run short."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        crashed = isinstance(exception, (asyncio.CancelledError, pe.JobAborted))
        runs = job.attempts + 1
        if not self.policy.again(runs, crashed=crashed):
            return None
        wait = 0.0 if crashed else self.policy.delay(runs)
        return RetryDecision(retry_at=datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=wait))


class _Jobs(JobManager):
    """A job run again while another with its queueing lock already waits would break that lock (and stay
    ``doing``, its lock held, for ever): the waiting one does the work, and this one ends as aborted."""

    async def retry_job_by_id_async(
        self, job_id: int, retry_at: datetime.datetime, priority: int | None = None, queue: str | None = None,
        lock: str | None = None,
    ) -> None:
        try:
            await super().retry_job_by_id_async(job_id, retry_at, priority, queue, lock)
        except pe.UniqueViolation:
            log.info("job %s is not run again: another job with its queueing lock is waiting already", job_id)
            await self.finish_job_by_id_async(job_id=job_id, status=Status.ABORTED, delete_job=False)


class PgQueue(JobQueue):
    kind = "postgres"
    shared = True

    def __init__(
        self, database_url: str, *, concurrency: int = 8, stall_after: float = 5.0, heartbeat: float = 1.0,
        grace: float = 10.0, poll: float = 1.0, keep_hours: int = 24, cleanup_every: float = 3600.0,
        stall_check_every: float = 1.0, name: str | None = None,
    ) -> None:
        """``stall_after``: seconds without a heartbeat after which a worker's jobs are taken from it
        (``heartbeat`` must be well under it); ``grace``: seconds a stopping worker lets its jobs end before
        cancelling them (they then run again elsewhere if their policy allows); ``poll``: seconds between
        looks for due jobs besides the notifications (delayed jobs and retries are found so);
        ``keep_hours``: finished jobs are deleted after this long."""
        super().__init__()
        if concurrency < 1 or heartbeat <= 0 or stall_after < 2 * heartbeat:
            raise ValueError("concurrency is at least 1 and stall_after at least twice the heartbeat")
        self.conninfo = libpq_conninfo(database_url)
        self.concurrency = concurrency
        self.stall_after = stall_after
        self.heartbeat = heartbeat
        self.grace = grace
        self.poll = poll
        self.keep_hours = keep_hours
        self.worker_name = name or f"thinktank@{socket.gethostname()}:{os.getpid()}"
        self.app: App | None = None
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False
        self.every(STALLED_JOB, stall_check_every, self._retry_stalled)
        self.every(CLEANUP_JOB, cleanup_every, self._cleanup)

    # -- procrastinate ---------------------------------------------------------------------------

    def _build(self) -> App:
        connector = PsycopgConnector(conninfo=self.conninfo, min_size=1, max_size=2 + self.concurrency // 2,
                                     name="thinktank-jobs", timeout=5.0)
        app = App(connector=connector)
        app.job_manager = _Jobs(connector)
        for name, (handler, policy) in self.handlers.items():
            async def run(payload: dict[str, Any], _handler: Any = handler) -> None:
                await _handler(payload)

            app.task(name=name, queue=JOB_QUEUE, retry=_Policy(policy))(run)
        for name, (seconds, tick) in self.periodic.items():
            async def periodic(timestamp: int, _tick: Any = tick) -> None:
                await _tick()

            task = app.task(name=name, queue=PERIODIC_QUEUE)(periodic)
            # Never two of a tick at once: a lock; the stalled-job check has none, so that a check whose worker
            # died (its job left ``doing``, holding the lock) cannot stop every later check.
            app.periodic(cron=cron_every(seconds), periodic_id=name, queueing_lock=name,
                         lock=None if name == STALLED_JOB else name)(task)
        return app

    def _open(self) -> App:
        if self.app is None:
            raise RuntimeError("the job queue is not started")
        return self.app

    # -- deferring and reading -------------------------------------------------------------------

    async def defer(
        self, name: str, payload: dict[str, Any], *, lock: str | None = None, queueing_lock: str | None = None,
        delay: float = 0.0,
    ) -> str | None:
        if name not in self.handlers:
            raise UnknownJobError(f"no job handler is registered under {name!r}")
        deferrer = self._open().configure_task(
            name, allow_unknown=False, lock=lock, queueing_lock=queueing_lock, queue=JOB_QUEUE,
            schedule_in={"seconds": delay} if delay > 0 else None)
        try:
            job_id = await deferrer.defer_async(payload=payload)
        except pe.AlreadyEnqueued:
            return None
        return str(job_id)

    async def get(self, job_id: str) -> JobInfo | None:
        if not job_id.isdigit() or len(job_id) > 18:
            return None
        rows = await self._open().connector.execute_query_all_async(query=_GET, id=int(job_id))
        if not rows:
            return None
        row = rows[0]
        status = _STATES.get(str(row["status"]), "failed")
        return JobInfo(job_id, str(row["task_name"]), status, int(row["attempts"]) + (status == "doing"))

    async def active(self, name: str) -> int:
        rows = await self._open().connector.execute_query_all_async(query=_ACTIVE, name=name)
        return int(rows[0]["n"])

    # -- the periodic jobs of the queue itself ---------------------------------------------------

    async def _retry_stalled(self) -> None:
        jobs = self._open().job_manager
        for job in await jobs.get_stalled_jobs(seconds_since_heartbeat=self.stall_after):
            assert job.id is not None
            found = self.handlers.get(job.task_name)
            policy = found[1] if found is not None else NO_RETRY
            try:
                if policy.again(job.attempts + 1, crashed=True):
                    log.warning("job %s[%s] was left running by a worker that stopped answering: it runs again",
                                job.task_name, job.id)
                    await jobs.retry_job(job)
                else:
                    log.warning("job %s[%s] was left running by a worker that stopped answering: it failed",
                                job.task_name, job.id)
                    await jobs.finish_job_by_id_async(job_id=job.id, status=Status.FAILED, delete_job=False)
            except pe.ConnectorException as exc:  # it moved meanwhile (another check, its worker came back)
                log.info("stalled job %s was not moved: %s", job.id, exc)

    async def _cleanup(self) -> None:
        jobs = self._open().job_manager
        for hours, queue in ((self.keep_hours, None), (0, PERIODIC_QUEUE)):
            await jobs.delete_old_jobs(nb_hours=hours, queue=queue, include_failed=True, include_cancelled=True,
                                       include_aborted=True)
        await jobs.prune_stalled_workers(max(3600.0, 10 * self.stall_after))
        await self.run_cleanups()

    # -- the worker ------------------------------------------------------------------------------

    async def start(self, *, worker: bool = True) -> None:
        self._stopping = False
        app = self._build()
        await app.open_async()
        self.app = app
        try:
            present = await app.check_connection_async()
        except pe.ConnectorException as exc:
            await self.stop()
            raise ConfigError(f"the job queue cannot reach PostgreSQL ({exc.__cause__ or exc})") from None
        if not present:
            await self.stop()
            raise ConfigError("the job queue's tables are missing: run `thinktank db upgrade`")
        if worker:
            self._worker = asyncio.get_running_loop().create_task(self._supervise(), name="job-worker")

    async def _supervise(self) -> None:
        """Run the worker; if it stops before it is told to (the database went away), start it again."""
        app = self._open()
        while True:
            try:
                await app.run_worker_async(
                    concurrency=self.concurrency, name=self.worker_name, install_signal_handlers=False,
                    update_heartbeat_interval=self.heartbeat, stalled_worker_timeout=self.stall_after,
                    fetch_job_polling_interval=self.poll, shutdown_graceful_timeout=self.grace, listen_notify=True)
                if self._stopping:
                    return
                # It stops by itself when one of its side tasks fails (its LISTEN connection lost, say).
                log.warning("the job worker stopped; it starts again in a second")
                await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping:  # its shutdown failed (the database is gone): stopping it is all that was asked
                    log.warning("the job worker stopped uncleanly", exc_info=True)
                    return
                log.exception("the job worker stopped on an error; it starts again in a second")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """The worker lets its jobs end for ``grace`` seconds, then cancels them (to run again elsewhere, where
        their policy allows), then the connections close."""
        self._stopping = True
        if self._worker is not None:
            self._worker.cancel()
            # Bounded: with the database gone, the worker's last writes would wait for a connection for ever.
            done, _ = await asyncio.wait({self._worker}, timeout=self.grace + 5.0)
            if not done:
                log.warning("the job worker did not stop within %.0f s; leaving it", self.grace + 5.0)
            self._worker = None
        if self.app is not None:
            await self.app.close_async()
            self.app = None
