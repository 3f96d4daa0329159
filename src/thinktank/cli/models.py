"""``thinktank models`` and ``thinktank chat``: what the server serves (``GET /v1/models``), and one
question answered as it streams (``POST /v1/chat/completions``)."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .client import DEFAULT_URL, ApiError, ConfigOpt, DemoOpt, KeyOpt, LocalOpt, Target, UrlOpt, connect
from .common import fail, print_json, print_table

if TYPE_CHECKING:
    from ..gateway.router import Router
    from .client import EventStream

__all__ = ["chat_command", "models_command"]


async def _probe_all(router: Router, seconds: float) -> dict[str, str]:
    """Whether each deployment's upstream answers, by public name (several deployments of a name: each)."""
    import asyncio

    from ..errors import ThinktankError
    from ..providers.base import Probe

    async def probe(model: Any) -> str:
        if not isinstance(model, Probe):
            return "? (no check for this provider)"
        try:
            async with asyncio.timeout(seconds):
                return await model.check()
        except TimeoutError:
            return f"no answer within {seconds:g} s"
        except ThinktankError as exc:
            return f"error: {exc.message}"

    statuses = await asyncio.gather(*(probe(d.model) for d in router.deployments))
    by_name: dict[str, list[str]] = {}
    for deployment, status in zip(router.deployments, statuses, strict=True):
        by_name.setdefault(deployment.name, []).append(status)
    return {name: "; ".join(dict.fromkeys(found)) for name, found in by_name.items()}


def models_command(
    check: Annotated[bool, typer.Option(
        "--check", help="Also ask each upstream whether it answers (with --local: the upstreams of this "
                        "machine's config).")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each upstream (with --check).")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON (GET /v1/models).")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Every model the server serves you: deployments, groups, aliases, ensembles, debates and knowledge bases."""
    target = Target(url, api_key, local, config, demo)
    if check and not target.in_process:
        fail("--check asks the upstreams from this process: add --local (with --config or --demo as needed); "
             f"the server at {url} is not asked to probe its own")
    with connect(target) as client:
        listing: list[dict[str, Any]] = client.call("GET", "/v1/models")["data"]
        statuses: dict[str, str] | None = None
        if check:
            assert client.local is not None
            statuses = client.local.run(_probe_all(client.local.app.state.router, timeout))
    if as_json:
        if statuses is not None:
            listing = [{**m, "status": statuses[m["id"]]} if m["id"] in statuses else m for m in listing]
        print_json({"object": "list", "data": listing})
        return
    if not listing:
        if target.in_process:
            from ..discovery import NO_MODELS_HELP

            typer.echo(NO_MODELS_HELP)
        else:
            typer.echo(f"No models at {url} for this key (the server's log says how to add some).")
        return
    if statuses is not None:
        print_table(["model", "kind", "owned by", "status"],
                    [[m["id"], m.get("thinktank_kind", ""), m.get("owned_by", ""), statuses.get(m["id"], "")]
                     for m in listing])
    else:
        print_table(["model", "kind", "owned by", "description"],
                    [[m["id"], m.get("thinktank_kind", ""), m.get("owned_by", ""), m.get("description", "")]
                     for m in listing])


def chat_command(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name (see `thinktank models`).")],
    system: Annotated[str | None, typer.Option("--system", "-s", help="A system prompt.", show_default=False)] = None,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Wait for the whole answer.")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Ask a model and stream its answer to the terminal (tokens and cost on stderr)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    body: dict[str, Any] = {"model": model, "messages": messages}
    with connect(Target(url, api_key, local, config, demo)) as client:
        if no_stream:
            answer = client.call("POST", "/v1/chat/completions", json=body)
            typer.echo(answer["choices"][0]["message"].get("content") or "")
            usage = answer.get("usage")
        else:
            usage = _stream(client.stream("POST", "/v1/chat/completions", json={
                **body, "stream": True, "stream_options": {"include_usage": True}}))
    if usage:
        typer.secho(f"[{usage.get('prompt_tokens', 0)} in, {usage.get('completion_tokens', 0)} out, "
                    f"${usage.get('cost') or 0:.6f}]", fg=typer.colors.BRIGHT_BLACK, err=True)


def _stream(opened: AbstractContextManager[EventStream]) -> dict[str, Any] | None:
    """Print the answer's text as it comes; its usage (the last chunk's). An error sent midway is raised."""
    import orjson

    usage: dict[str, Any] | None = None
    written = False
    try:
        with opened as events:
            for message in events:
                if message.data == "[DONE]":
                    break
                chunk = orjson.loads(message.data)
                if isinstance(chunk.get("error"), dict):
                    raise ApiError(str(chunk["error"].get("message") or "the answer broke off"))
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        sys.stdout.write(text)
                        sys.stdout.flush()
                        written = True
                usage = chunk.get("usage") or usage
    finally:
        if written:
            sys.stdout.write("\n")
            sys.stdout.flush()
    return usage
