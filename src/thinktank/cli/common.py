"""What the command modules share: the settings from options, errors, tables and JSON on the terminal."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from ..config import Settings

__all__ = ["ConfigOpt", "DemoOpt", "JsonOpt", "console", "fail", "print_json", "print_table", "settings", "when"]

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="The YAML config (default: $THINKTANK_CONFIG).", show_default=False)]
DemoOpt = Annotated[bool, typer.Option("--demo", help="Add the clearly labelled offline mock models.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the server's JSON instead.")]


def settings(config: Path | None = None, demo: bool = False, **overrides: Any) -> Settings:
    """The settings from the environment, with what the command line gave."""
    from ..config import Settings

    update: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if config is not None:
        update["config"] = config
    if demo:
        update["demo"] = True
    return Settings().model_copy(update=update)


def fail(message: str, code: int = 2) -> NoReturn:
    """``error: <message>`` on stderr, and exit (2: the command could not do its work)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def print_json(data: Any) -> None:
    import orjson

    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain table: upper-case headers, columns two spaces apart (easy to read and to ``grep``)."""
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    typer.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))
