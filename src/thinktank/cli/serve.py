"""``thinktank serve``: the OpenAI-compatible server (and the API, and the web pages)."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from .common import ConfigOpt, DemoOpt, fail, settings

__all__ = ["serve"]


def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    demo: DemoOpt = False,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Run the OpenAI-compatible server."""
    import logging

    import uvicorn

    from ..api.app import create_app
    from ..discovery import NO_MODELS_HELP
    from ..errors import ThinktankError

    s = settings(config, demo, host=host, port=port, workers=workers, log_level=log_level)
    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # Validate everything (and create the admin key) before any worker starts.
        application = create_app(s)
    except ThinktankError as exc:
        fail(exc.message)
    if not application.state.router.deployments:
        typer.secho(NO_MODELS_HELP, fg=typer.colors.YELLOW, err=True)
    names = ", ".join(m.id for m in application.state.router.models()[:12])
    typer.echo(f"thinktank serving {len(application.state.router.models())} models ({names}) "
               f"on http://{s.host}:{s.port}/v1", err=True)
    common: dict[str, Any] = {
        "host": s.host, "port": s.port, "log_level": s.log_level.lower(),
        "access_log": False, "server_header": False, "timeout_keep_alive": 30,
    }
    if s.workers == 1:
        uvicorn.run(application, **common)
        return
    # Migrate once, here, before the workers start (each would otherwise race to do it).
    from ..store.db import default_database_url
    from ..store.migrate import upgrade

    upgrade(s.database_url or default_database_url(s.data_dir))
    # Each worker builds its own app from the same settings, passed through the environment.
    os.environ["THINKTANK_DATA_DIR"] = str(s.data_dir)
    os.environ["THINKTANK_DEMO"] = "true" if s.demo else "false"
    if s.config is not None:
        os.environ["THINKTANK_CONFIG"] = str(s.config.resolve())
    uvicorn.run("thinktank.api.app:app_from_env", factory=True, workers=s.workers, **common)
