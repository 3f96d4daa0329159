"""The ``thinktank`` command."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ..config import Settings
from ..errors import ThinktankError

if TYPE_CHECKING:
    from ..gateway.router import Router

T = TypeVar("T")

__all__ = ["app", "main"]

app = typer.Typer(
    name="thinktank",
    help="Many LLM providers behind one OpenAI-compatible endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (default: $THINKTANK_CONFIG)", show_default=False)
]
DemoOpt = Annotated[bool, typer.Option("--demo", help="Add clearly labelled offline mock models.")]


def _settings(config: Path | None, demo: bool, **overrides: Any) -> Settings:
    settings = Settings()
    update: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if config is not None:
        update["config"] = config
    if demo:
        update["demo"] = True
    return settings.model_copy(update=update)


def _with_router(settings: Settings, work: Callable[[Router], Awaitable[T]]) -> T:
    """Build the router from the settings, run ``work`` with it, close the HTTP client; errors exit 2."""
    from ..api.app import build_config
    from ..gateway.router import Router
    from ..providers._http import HttpClient
    from ..providers.base import ProviderContext

    async def run() -> T:
        http = HttpClient()
        try:
            return await work(Router(build_config(settings, os.environ), ProviderContext(http)))
        finally:
            await http.close()

    try:
        return asyncio.run(run())
    except ThinktankError as exc:
        raise _fail(exc) from None


def _fail(exc: ThinktankError) -> typer.Exit:
    typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


@app.command()
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

    settings = _settings(config, demo, host=host, port=port, workers=workers, log_level=log_level)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # Validate everything (and create the admin key) before any worker starts.
        application = create_app(settings)
    except ThinktankError as exc:
        raise _fail(exc) from None
    if not application.state.router.deployments:
        typer.secho(NO_MODELS_HELP, fg=typer.colors.YELLOW, err=True)
    names = ", ".join(m.id for m in application.state.router.models()[:12])
    typer.echo(f"thinktank serving {len(application.state.router.models())} models ({names}) "
               f"on http://{settings.host}:{settings.port}/v1", err=True)
    common: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level.lower(),
        "access_log": False, "server_header": False, "timeout_keep_alive": 30,
    }
    if settings.workers == 1:
        uvicorn.run(application, **common)
        return
    # Migrate once, here, before the workers start (each would otherwise race to do it).
    from ..store.db import default_database_url
    from ..store.migrate import upgrade

    upgrade(settings.database_url or default_database_url(settings.data_dir))
    # Each worker builds its own app from the same settings, passed through the environment.
    os.environ["THINKTANK_DATA_DIR"] = str(settings.data_dir)
    os.environ["THINKTANK_DEMO"] = "true" if settings.demo else "false"
    if settings.config is not None:
        os.environ["THINKTANK_CONFIG"] = str(settings.config.resolve())
    uvicorn.run("thinktank.api.app:app_from_env", factory=True, workers=settings.workers, **common)


@app.command()
def models(config: ConfigOpt = None, demo: DemoOpt = False,
           timeout: Annotated[float, typer.Option(help="Seconds to wait for each upstream.")] = 5.0) -> None:
    """List the configured models and whether each upstream answers."""
    from ..providers.base import Probe

    async def probe(model: Any) -> str:
        if not isinstance(model, Probe):
            return "? (no check for this provider)"
        try:
            async with asyncio.timeout(timeout):
                return await model.check()
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except ThinktankError as exc:
            return f"error: {exc.message}"

    async def run(router: Router) -> list[tuple[str, str, str, str]]:
        statuses = await asyncio.gather(*(probe(d.model) for d in router.deployments))
        return [(d.name, d.config.provider, d.config.upstream_model, s)
                for d, s in zip(router.deployments, statuses, strict=True)]

    rows = _with_router(_settings(config, demo), run)
    if not rows:
        from ..discovery import NO_MODELS_HELP

        typer.echo(NO_MODELS_HELP)
        return
    table = [("MODEL", "PROVIDER", "UPSTREAM", "STATUS"), *rows]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        typer.echo("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name (see `thinktank models`).")],
    system: Annotated[str | None, typer.Option("--system", "-s", help="A system prompt.")] = None,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Wait for the whole answer.")] = False,
) -> None:
    """Ask a model and stream its answer to the terminal."""
    from ..types import ChatRequest, Message, Usage

    messages = ([Message(role="system", content=system)] if system else []) + [Message(role="user", content=prompt)]
    request = ChatRequest(model=model, messages=messages, stream=not no_stream)

    async def run(router: Router) -> Usage | None:
        if no_stream:
            resp = await router.complete(request)
            typer.echo(resp.choices[0].message.content or "")
            return resp.usage
        usage = None
        async for chunk in router.stream(request):
            for c in chunk.choices:
                if c.delta.content:
                    sys.stdout.write(c.delta.content)
                    sys.stdout.flush()
            usage = chunk.usage or usage
        sys.stdout.write("\n")
        return usage

    usage = _with_router(_settings(config, demo), run)
    if usage is not None:
        typer.secho(f"[{usage.prompt_tokens} in, {usage.completion_tokens} out, ${usage.cost or 0:.6f}]",
                    fg=typer.colors.BRIGHT_BLACK, err=True)


@app.command("mock-upstream")
def mock_upstream(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 18080,
    latency: Annotated[float, typer.Option(help="Seconds before each answer.")] = 0.0,
    stream_delay: Annotated[float, typer.Option(help="Seconds between streamed words.")] = 0.0,
) -> None:
    """Run a fake OpenAI-compatible upstream (for trying thinktank and for load tests)."""
    from ..mock_upstream import run

    typer.echo(f"mock upstream on http://{host}:{port}/v1 (model: any name)", err=True)
    run(host, port, latency, stream_delay)


def _register_admin_commands() -> None:
    from .accounts import db_app, keys_app, usage_command, users_app

    app.add_typer(db_app, name="db")
    app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="keys")
    app.command("usage")(usage_command)


def _register_deliberation_commands() -> None:
    from .runs import ask_command, debate_command, leaderboard_command

    app.command("ask")(ask_command)
    app.command("debate")(debate_command)
    app.command("leaderboard")(leaderboard_command)


def _register_knowledge_commands() -> None:
    from .eval import eval_app
    from .kb import kb_app

    app.add_typer(eval_app, name="eval")
    app.add_typer(kb_app, name="kb")


_register_admin_commands()
_register_deliberation_commands()
_register_knowledge_commands()


def main() -> None:
    app()
