"""What every job queue offers: named handlers with a retry policy, deferred jobs (with locks), periodic jobs,
a worker that can be started and stopped, and the status of a job.

A handler is ``async def handler(payload: dict) -> None``. The payload is JSON (ids, not objects: a job may run
in another process, after a restart). A handler that is retried must be idempotent: a retry after a crash
runs it again from the start, whatever the first run did.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "NO_RETRY", "Cleanup", "Handler", "JobInfo", "JobQueue", "JobState", "Periodic", "RetryPolicy", "UnknownJobError",
]

log = logging.getLogger("thinktank.jobs")

Handler = Callable[[dict[str, Any]], Awaitable[None]]
"""Runs one job from its payload."""
Periodic = Callable[[], Awaitable[None]]
"""Runs one tick of a periodic job."""
Cleanup = Callable[[], Awaitable[None]]
"""Deletes what a service no longer needs (old records); run by the queue's periodic clean-up."""

JobState = Literal["queued", "doing", "succeeded", "failed"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a job may run. The default runs it once: retry only handlers that are safe to run again."""

    attempts: int = 1
    """Runs at most, the first included (1: never again)."""
    wait: float = 1.0
    """Seconds before the run after an error, doubled at each further error."""
    after_errors: bool = True
    """A run that raised is run again (within ``attempts``)."""
    after_crashes: bool = True
    """A run whose worker died (killed, lost host) or was stopped before it ended is run again (within
    ``attempts``); only the PostgreSQL queue can notice a dead worker."""

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.wait < 0:
            raise ValueError("attempts is at least 1 and wait is not negative")

    def again(self, runs: int, *, crashed: bool) -> bool:
        """Whether a job that has run ``runs`` times (the last one failed, or ``crashed``) runs once more."""
        return runs < self.attempts and (self.after_crashes if crashed else self.after_errors)

    def delay(self, runs: int) -> float:
        """Seconds before the run that follows ``runs`` runs, the last of which raised."""
        return self.wait * 2.0 ** max(runs - 1, 0)


NO_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class JobInfo:
    id: str
    name: str
    status: JobState
    attempts: int
    """Runs started so far (the one under way included)."""


class UnknownJobError(LookupError):
    """A job name no handler was registered for."""


class JobQueue(ABC):
    """The registry of handlers, periodic jobs and clean-ups is shared; each kind of queue runs them its way.
    Register everything before ``start``."""

    kind: str = ""
    shared: bool = False
    """True when jobs are visible to, and run by, every process on the database (a crash is survived)."""

    def __init__(self) -> None:
        self.handlers: dict[str, tuple[Handler, RetryPolicy]] = {}
        self.periodic: dict[str, tuple[float, Periodic]] = {}
        self.cleanups: list[Cleanup] = []

    def register(self, name: str, handler: Handler, *, retry: RetryPolicy = NO_RETRY) -> None:
        """``handler`` runs the jobs deferred under ``name`` (e.g. ``queue.register("run.resume", resume)``)."""
        if name in self.handlers or name in self.periodic:
            raise ValueError(f"a job handler named {name!r} is registered already")
        self.handlers[name] = (handler, retry)

    def every(self, name: str, seconds: float, tick: Periodic) -> None:
        """Run ``tick`` every ``seconds``, by one worker at a time across every process that shares the queue."""
        if name in self.handlers or name in self.periodic:
            raise ValueError(f"a job handler named {name!r} is registered already")
        if seconds <= 0:
            raise ValueError("a periodic job runs every positive number of seconds")
        self.periodic[name] = (seconds, tick)

    def add_cleanup(self, cleanup: Cleanup) -> None:
        """``cleanup`` runs with the queue's periodic clean-up (about hourly): delete old records there."""
        self.cleanups.append(cleanup)

    def policy(self, name: str) -> RetryPolicy:
        found = self.handlers.get(name)
        if found is None:
            raise UnknownJobError(f"no job handler is registered under {name!r}")
        return found[1]

    async def run_cleanups(self) -> None:
        """Every registered clean-up, each on its own: one that fails is logged and the others still run."""
        for cleanup in self.cleanups:
            try:
                await cleanup()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("a periodic clean-up failed")

    @abstractmethod
    async def defer(
        self, name: str, payload: dict[str, Any], *, lock: str | None = None, queueing_lock: str | None = None,
        delay: float = 0.0,
    ) -> str | None:
        """Queue a job for the handler ``name``; its id. ``lock``: jobs with the same lock run one at a time,
        in the order they were queued. ``queueing_lock``: while a job with this queueing lock waits to start,
        another is not queued (None is returned). ``delay``: seconds before it may start."""

    @abstractmethod
    async def get(self, job_id: str) -> JobInfo | None:
        """A job's status; None if it is unknown (never queued here, or cleaned up since it finished)."""

    @abstractmethod
    async def active(self, name: str) -> int:
        """Jobs of handler ``name`` queued or running."""

    async def settle(self, name: str, *, poll: float = 0.05) -> None:
        """Wait until no job of handler ``name`` is queued or running (tests; drains)."""
        while True:
            if not await self.active(name):
                return
            await asyncio.sleep(poll)

    @abstractmethod
    async def start(self, *, worker: bool = True) -> None:
        """Open the queue; with ``worker``, run jobs (and periodic jobs) in this process too."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop running jobs (those under way get a short grace, then are cancelled) and close the queue."""
