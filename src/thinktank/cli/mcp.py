"""``thinktank mcp``: thinktank as an MCP server on stdin and stdout, for desktop assistants (Claude Desktop and
the like), acting as the user of one API key. It runs the app in this process, from the same settings,
configuration and data directory as ``thinktank serve`` (the server's ``/mcp`` answers the same over HTTP)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import ConfigOpt, DemoOpt, fail, settings

__all__ = ["mcp_command"]

_NO_KEY = ("no API key: set THINKTANK_API_KEY (the admin key, a key from `thinktank keys create`, or one a user made "
           "for themselves) or pass --api-key; the MCP tools act as that key's user")


def mcp_command(
    config: ConfigOpt = None,
    demo: DemoOpt = False,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", "--key", envvar="THINKTANK_API_KEY", show_envvar=True, show_default=False,
        help="The key whose user the tools act as.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error (default: $THINKTANK_LOG_LEVEL, "
                                                       "else warning); logs go to stderr.", show_default=False)] = None,
) -> None:
    """Serve thinktank over MCP on stdin/stdout for desktop assistants, acting as the key's user."""
    import asyncio
    import logging
    import sys

    from ..errors import ThinktankError

    if not api_key or not api_key.strip():
        fail(_NO_KEY)
    s = settings(config, demo)
    level = (log_level or (s.log_level if "log_level" in s.model_fields_set else "warning")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        fail(f"unknown log level {level.lower()!r}: debug, info, warning or error")
    logging.basicConfig(stream=sys.stderr, level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..api.app import create_app

    try:
        application = create_app(s, quiet=True)
    except ThinktankError as exc:
        fail(exc.message)
    from ..mcp.stdio import serve_stdio

    try:
        asyncio.run(serve_stdio(application, api_key.strip()))
    except ThinktankError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
