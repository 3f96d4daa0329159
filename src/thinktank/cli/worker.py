"""``thinktank worker``: a process that only runs queued jobs (index builds, ingestions, memory extraction...),
beside the servers that queue them, from the same settings, configuration and database. It needs the PostgreSQL
queue: with SQLite, jobs run inside ``thinktank serve`` (``THINKTANK_WORKER=false`` there leaves them to
workers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from .common import ConfigOpt, DemoOpt, fail, settings

if TYPE_CHECKING:
    from ..api.state import AppState

__all__ = ["run_worker", "worker_command"]

_NEEDS_POSTGRES = ("`thinktank worker` needs the PostgreSQL job queue: set THINKTANK_DATABASE_URL=postgresql://… "
                   "(and THINKTANK_QUEUE=auto or postgres); with SQLite, jobs run inside `thinktank serve`")


def worker_command(
    config: ConfigOpt = None,
    demo: DemoOpt = False,
    concurrency: Annotated[int | None, typer.Option(min=1, max=256, help="Jobs run at once (default: "
                                                    "$THINKTANK_WORKER_CONCURRENCY, else 8).", show_default=False)]
    = None,
    metrics_port: Annotated[int | None, typer.Option(min=1, max=65535, help="Serve Prometheus metrics on this port "
                                                     "(default: none).", show_default=False)] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error (default info).",
                                                  show_default=False)] = None,
) -> None:
    """Run queued jobs (and the periodic ones) without serving HTTP; stops on SIGTERM or Ctrl-C."""
    import asyncio
    import logging.config

    from sqlalchemy.engine import make_url

    from ..errors import ThinktankError
    from ..observability.logs import logging_config
    from ..store.db import default_database_url, normalize_url

    s = settings(config, demo, worker_concurrency=concurrency, log_level=log_level)
    s = s.model_copy(update={"worker": True, "metrics_port": metrics_port})  # the servers' metrics port is theirs
    logging.config.dictConfig(logging_config(s.log_level, s.log_format, content=s.log_content))
    url = normalize_url(s.database_url or default_database_url(s.data_dir))
    if s.queue == "local" or make_url(url).get_backend_name() != "postgresql":
        fail(_NEEDS_POSTGRES)
    from ..api.app import create_app

    try:
        application = create_app(s, quiet=True)
        asyncio.run(run_worker(application.state))
    except ThinktankError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def run_worker(state: AppState) -> None:
    """Start the app's services (its job worker among them), run until SIGTERM or SIGINT, then stop them."""
    import asyncio
    import signal

    from ..api.assembly import start, stop

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    state.started_at = state.clock.time()
    await start(state)
    state.ready = True
    typer.echo(f"thinktank worker: running jobs from the {state.queue.kind} queue, "
               f"{state.settings.worker_concurrency} at once", err=True)
    try:
        await stopping.wait()
    finally:
        await stop(state)
