"""``thinktank serve``: the OpenAI-compatible server (and the API, and the web pages)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import ConfigOpt, DemoOpt, fail, settings

__all__ = ["listen", "serve"]


def listen(host: str, port: int, option: str = "--port") -> socket.socket:
    """A socket bound to ``host:port`` (not yet listening), or a clear error and exit 2 when it cannot be
    (naming ``option``, where the port was chosen)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"http://[{host}]:{port}" if family == socket.AF_INET6 else f"http://{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            fail(f"cannot serve on {where}: the address is already in use (another `thinktank serve`, or another "
                 f"program, listens there): stop it or choose another {option}")
        fail(f"cannot serve on {where}: {exc.strerror or exc}")
    return sock


def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).", show_default=False)]
    = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).", show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 1).", show_default=False)] = None,
    demo: DemoOpt = False,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error (default info).",
                                                  show_default=False)] = None,
) -> None:
    """Run the OpenAI-compatible server."""
    import logging.config

    import uvicorn

    from ..api.app import create_app
    from ..errors import ThinktankError
    from ..observability.logs import logging_config

    s = settings(config, demo, host=host, port=port, workers=workers, log_level=log_level)
    # One format for thinktank's lines and uvicorn's, here and in every worker (uvicorn applies log_config there).
    log_config = logging_config(s.log_level, s.log_format, content=s.log_content)
    logging.config.dictConfig(log_config)
    # The port first: nothing is said (no admin key generated) for a start that cannot listen.
    sock = listen(s.host, s.port)
    if s.metrics and s.metrics_port is not None:  # opened by the app (each worker): fail here if it cannot be
        listen(s.metrics_host or s.host, s.metrics_port, "THINKTANK_METRICS_PORT").close()
    from ..metrics.multiproc import ENV, reset_directory, worker_directory

    if s.metrics and os.environ.get(ENV):
        # The operator's multiprocess directory: last run's counts out, before anything here writes there.
        reset_directory(Path(os.environ[ENV]))
    try:
        # Validate everything (and say which admin key is in force) before any worker starts.
        application = create_app(s)
    except ThinktankError as exc:
        sock.close()
        fail(exc.message)
    models = application.state.catalog.configured()
    names = " (" + ", ".join(models[:12]) + (", ..." if len(models) > 12 else "") + ")" if models else ""
    typer.echo(f"thinktank serving {len(models)} models{names} on http://{s.host}:{s.port}/v1", err=True)
    shown = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host  # noqa: S104 (naming it, not binding it)
    host = f"[{shown}]" if ":" in shown else shown
    typer.echo(f"open http://{host}:{s.port}/ in a browser", err=True)
    common: dict[str, Any] = {
        "log_level": s.log_level.lower(), "access_log": False, "server_header": False, "timeout_keep_alive": 30,
        "log_config": log_config,
    }
    if s.workers == 1:
        server = uvicorn.Server(uvicorn.Config(application, **common))
        server.run(sockets=[sock])
        if not server.started:
            raise typer.Exit(3)
        return
    sock.close()  # each worker binds it (it was free a moment ago)
    # Migrate once, here, before the workers start (each would otherwise race to do it).
    from ..store.db import default_database_url
    from ..store.migrate import upgrade

    upgrade(s.database_url or default_database_url(s.data_dir))
    # Each worker builds its own app from the same settings, passed through the environment.
    os.environ["THINKTANK_DATA_DIR"] = str(s.data_dir)
    os.environ["THINKTANK_HOST"] = s.host  # the metrics port binds it by default
    os.environ["THINKTANK_DEMO"] = "true" if s.demo else "false"
    if s.config is not None:
        os.environ["THINKTANK_CONFIG"] = str(s.config.resolve())
    # Metrics: the workers keep their counts in files in one directory (prometheus_client's multiprocess mode,
    # chosen when a process first imports it), made now, after this process built its own app in memory.
    with worker_directory(os.environ) if s.metrics else contextlib.nullcontext():
        uvicorn.run("thinktank.api.app:worker_app", factory=True, workers=s.workers, host=s.host, port=s.port,
                    **common)
