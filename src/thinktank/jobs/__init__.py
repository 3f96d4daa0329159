"""A queue for long work that must outlive the request that asked for it (``JobQueue``): the embedded
``LocalQueue`` (asyncio tasks, SQLite deployments) or ``PgQueue`` (procrastinate on PostgreSQL: jobs survive
the process, a dead worker's jobs run elsewhere). ``build_queue`` picks one from the settings.

Services register their handlers when they are built (``queue.register("kb.index", handler, retry=...)``) and
defer jobs with JSON payloads of ids (``await queue.defer("kb.index", {"kb_id": ...})``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import NO_RETRY, Cleanup, Handler, JobInfo, JobQueue, JobState, Periodic, RetryPolicy, UnknownJobError
from .local import LocalQueue

if TYPE_CHECKING:
    from ..clock import Clock
    from ..settings import Settings

__all__ = [
    "NO_RETRY", "Cleanup", "Handler", "JobInfo", "JobQueue", "JobState", "LocalQueue", "Periodic", "RetryPolicy",
    "UnknownJobError", "build_queue",
]


def build_queue(settings: Settings, database_url: str, clock: Clock | None = None) -> JobQueue:
    """``THINKTANK_QUEUE``: ``postgres`` (refused on SQLite), ``local``, or ``auto`` (postgres on PostgreSQL).
    procrastinate is imported only for the PostgreSQL queue."""
    from sqlalchemy.engine import make_url

    from ..errors import ConfigError

    postgres = make_url(database_url).get_backend_name() == "postgresql"
    if settings.queue == "postgres" and not postgres:
        raise ConfigError("THINKTANK_QUEUE=postgres needs a PostgreSQL database: set THINKTANK_DATABASE_URL="
                          "postgresql://user@host/db (or THINKTANK_QUEUE=local)")
    if settings.queue == "local" or not postgres:
        return LocalQueue(concurrency=settings.worker_concurrency, clock=clock)
    from .postgres import PgQueue

    return PgQueue(database_url, concurrency=settings.worker_concurrency, stall_after=settings.job_stall_after,
                   heartbeat=min(1.0, settings.job_stall_after / 4))
