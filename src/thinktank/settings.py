"""Process settings, from ``THINKTANK_*`` environment variables: where thinktank runs and what it connects to
(the YAML file, ``config.py``, says which models it serves)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "default_data_dir"]


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "thinktank"


class Settings(BaseSettings):
    """Process settings, from ``THINKTANK_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="THINKTANK_", extra="ignore")

    config: Path | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    admin_key: SecretStr | None = None
    admin_email: str | None = None
    admin_password: SecretStr | None = None
    database_url: str | None = None
    """Default: a SQLite file in the data directory. PostgreSQL: postgresql://user@host/db."""
    redis_url: str | None = None
    """Shared rate-limit (and budget) counters for several workers or hosts."""
    event_bus: Literal["auto", "local", "postgres", "redis"] = "auto"
    """How run and thread-turn events reach clients of other processes: ``redis`` (pub/sub), ``postgres``
    (LISTEN/NOTIFY), ``local`` (none: they poll the database). ``auto``: Redis if set, else PostgreSQL if it is
    the database, else local."""
    auth_cache_ttl: float = Field(default=5.0, ge=0)
    """Seconds a resolved key or session is trusted before it is looked up again."""
    global_daily_budget_usd: float | None = Field(default=None, ge=0)
    budget_lease_ttl: float = Field(default=10.0, ge=0.5, le=3600)
    """Seconds a process's budget leases outlive its last renewal (it renews every fifth of that): the leases
    of a process that died are back in their budgets within 1.5 times this."""
    journal: bool = True
    """Write every charge and usage row to a journal in the data directory before the answer leaves (a copy into
    a mapped file each), so that a process killed with SIGKILL loses none (``thinktank.accounts.journal``)."""
    demo: bool = False
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """The largest document upload (one request to ``/api/v1/knowledge-bases/{kb}/documents``)."""
    upstream_connections: int = Field(default=1000, ge=1)
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object a line (ts, level, logger, message, request_id and extra fields)."""
    log_content: bool = False
    """Log prompts and answers (at debug level). Off: no prompt or answer text is ever logged."""
    otel_endpoint: str | None = None
    """OTLP/HTTP collector (``http://collector:4318``; ``/v1/traces`` is added): setting it turns tracing on
    (the ``otel`` extra). The standard ``OTEL_EXPORTER_OTLP_*``, ``OTEL_TRACES_SAMPLER`` and
    ``OTEL_SERVICE_NAME`` variables apply."""
    otel_content: bool = False
    """Put prompt, answer, query and tool text on spans. Off: spans carry names, counts and timings only."""
    ready_timeout: float = Field(default=2.0, gt=0, le=60)
    """Seconds each ``/ready`` check (database, Redis, an upstream's TCP connect) may take."""
    ready_upstreams: Literal["any", "all", "none"] = "any"
    """When upstreams make ``/ready`` fail: ``any`` when none is reachable, ``all`` when one is not, ``none`` never."""
    run_stale_after: float = Field(default=5.0, gt=0, le=86_400)
    """Seconds without a save after which a running run (ensemble, debate, agent) counts as interrupted and is
    taken up by another process (or this one, restarted). Runs are saved every 0.5 s (the first time by 2 s).
    Thread turns likewise, after this long without a heartbeat (every second)."""
    queue: Literal["auto", "local", "postgres"] = "auto"
    """The job queue for long work (``thinktank.jobs``): ``local`` runs jobs as tasks of the process that queued them;
    ``postgres`` keeps them in the database, for every worker to take (a killed one's jobs go on elsewhere);
    ``auto``: ``postgres`` when the database is PostgreSQL."""
    worker: bool = True
    """This server also runs queued jobs (``thinktank worker`` runs only them)."""
    run_placement: Literal["auto", "queue", "local"] = "auto"
    """Where a new ensemble or debate executes: ``queue``, as a job of the PostgreSQL queue, by any worker (the
    process that took the request follows it); ``local``, in the process that took the request; ``auto``: ``queue``
    in a server that runs no jobs (``THINKTANK_WORKER=false``), else ``local``. Interrupted runs are taken up by
    the queue's workers in every case."""
    worker_concurrency: int = Field(default=8, ge=1, le=256)
    """Jobs a worker runs at once."""
    job_stall_after: float = Field(default=5.0, ge=2.0, le=3600)
    """Seconds without a heartbeat (sent every second) after which a worker counts as dead and its jobs run
    elsewhere (PostgreSQL queue)."""
    metrics: bool = True
    """Prometheus metrics at ``GET /metrics`` (see ``thinktank.metrics``); recording them costs a few µs a request."""
    metrics_token: SecretStr | None = None
    """A bearer token that alone opens ``/metrics`` (for Prometheus). Without one (and without a metrics port),
    ``/metrics`` on the main port asks for admin credentials."""
    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        """``THINKTANK_METRICS_TOKEN=`` (left empty, as deploy/env.example has it) sets no token: an empty one would
        be a token nobody can send, and ``/metrics`` would refuse everyone."""
        return None if isinstance(value, str) and not value.strip() else value

    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Serve the metrics on this port instead of the main one (open there unless a token is set)."""
    metrics_host: str | None = None
    """The address the metrics port binds (default: ``host``)."""
