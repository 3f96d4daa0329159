"""``thinktank mock-upstream``: a fake OpenAI-compatible upstream, to try thinktank and to load-test it."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["mock_upstream"]


def mock_upstream(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 18080,
    latency: Annotated[float, typer.Option(help="Seconds before each answer.")] = 0.0,
    stream_delay: Annotated[float, typer.Option(help="Seconds between streamed words.")] = 0.0,
) -> None:
    """Run a fake OpenAI-compatible upstream (for trying thinktank and for load tests)."""
    from ..mock_upstream import run

    typer.echo(f"mock upstream on http://{host}:{port}/v1 (model: any name)", err=True)
    run(host, port, latency, stream_delay)
