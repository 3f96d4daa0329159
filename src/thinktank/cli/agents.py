"""``thinktank agent``: run an agent from the terminal, through the server, deciding its approvals there.

The run starts with ``POST /api/v1/agents`` and ``"stream": true``; each step is printed as it comes (the
model thinking, each tool call with its arguments and how it went) and the answer streams. When a call
waits for approval, the terminal asks (``y`` approve, ``n`` deny with a reason, ``e`` edit the arguments);
with ``--no-input`` it prints how to decide later and stops, leaving the run waiting.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

import typer

from .client import DEFAULT_URL, ApiError, Client, ConfigOpt, DemoOpt, KeyOpt, LocalOpt, Target, UrlOpt, connect
from .common import print_json

__all__ = ["agent_command"]


def _events(client: Client, path: str, body: dict[str, Any] | None, after: int = 0, *,
            answer: bool = True) -> tuple[str, int]:
    """Print a run's events as they come (a new run from ``body``, or ``path``'s events after ``after``);
    the run's id and the last event's number."""
    method, kwargs = ("POST", {"json": body}) if body is not None else ("GET", {"headers": {"Last-Event-ID": str(
        after)}})
    run_id, last = "", after
    with client.stream(method, path, **kwargs) as events:
        run_id = events.headers.get("x-thinktank-run-id", "") or run_id
        for message in events:
            data = json.loads(message.data) if message.data else {}
            last = int(data.get("seq") or last)
            if answer or message.event != "synthesis_token":
                _show(message.event, data)
    return run_id, last


def _show(event: str, data: dict[str, Any]) -> None:
    if event == "synthesis_token":
        typer.echo(str(data.get("text") or ""), nl=False)
    elif event == "step" and data.get("kind") == "model":
        typer.secho(f"\n· step {data.get('step')}: {data.get('model')} thinks", fg=typer.colors.BRIGHT_BLACK, err=True)
    elif event == "step" and data.get("kind") == "warning":
        typer.secho(f"\n! {data.get('message')}", fg=typer.colors.YELLOW, err=True)
    elif event == "tool_call":
        args = json.dumps(data.get("arguments"), ensure_ascii=False)
        typer.secho(f"· calls {data.get('tool')}({args[:300]})", fg=typer.colors.BRIGHT_BLACK, err=True)
    elif event == "tool_result":
        mark = "ok" if data.get("ok") else ("denied" if data.get("denied") else "error")
        preview = str(data.get("preview") or "").replace("\n", " ")[:120]
        typer.secho(f"  {mark}: {preview}", fg=typer.colors.BRIGHT_BLACK, err=True)
    elif event == "error":
        typer.secho(f"\nerror: {data.get('message')}", fg=typer.colors.RED, err=True)


def _decide(client: Client, run_id: str, interactive: bool) -> bool:
    """Ask about each call waiting in ``run_id``; False when nobody can answer here (the run stays waiting)."""
    events = client.call("GET", f"/api/v1/runs/{quote(run_id, safe='')}/events", params={"format": "json"})["data"]
    asked = next((e for e in reversed(events) if e["type"] == "approval_requested"), None)
    calls = [c for c in (asked or {}).get("data", {}).get("calls", []) if c.get("decision") is None]
    if not interactive:
        typer.secho(f"\nThe run waits for your approval of {', '.join(str(c['tool']) for c in calls)}. Decide with:\n"
                    f"  curl -X POST .../api/v1/runs/{run_id}/approve   (or /deny with {{\"reason\": ...}})",
                    fg=typer.colors.YELLOW, err=True)
        return False
    for call in calls:
        args = json.dumps(call.get("arguments"), ensure_ascii=False)
        choice = typer.prompt(f"\nApprove {call['tool']}({args})? [y]es / [n]o / [e]dit", default="n",
                              err=True).strip().lower()
        path = f"/api/v1/runs/{quote(run_id, safe='')}"
        if choice.startswith("e"):
            edited = typer.prompt("arguments (JSON)", default=args, err=True)
            try:
                arguments = json.loads(edited)
            except json.JSONDecodeError as exc:
                raise ApiError(f"The arguments are not JSON: {exc}") from None
            client.call("POST", f"{path}/approve", json={"call_id": call["id"], "arguments": arguments})
        elif choice.startswith("y"):
            client.call("POST", f"{path}/approve", json={"call_id": call["id"]})
        else:
            reason = typer.prompt("reason (the model reads it)", default="", err=True)
            client.call("POST", f"{path}/deny", json={"call_id": call["id"], "reason": reason or None})
        break  # one decision takes the run up again; it asks anew for what still waits
    return True


def agent_command(
    question: Annotated[str, typer.Argument(help="What to ask.")],
    agent: Annotated[str | None, typer.Option(
        "--agent", "-a", help="A configured agent (default: the only one).", show_default=False)] = None,
    no_input: Annotated[bool, typer.Option("--no-input", help="Never ask: leave approvals waiting.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's record as JSON at the end.")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Run an agent: it calls tools (your documents, pages, other models, MCP servers) until it answers."""
    interactive = not no_input
    with connect(Target(url, api_key, local, config, demo)) as client:
        listing = client.call("GET", "/api/v1/agents")["data"]
        names = [a["name"] for a in listing]
        if agent is None:
            if len(names) != 1:
                raise ApiError("Choose an agent with --agent: " + (", ".join(names) or "none is configured "
                                                                    "(add 'agents:' to the config, or try --demo)"))
            agent = names[0]
        run_id, last = _events(client, "/api/v1/agents", {"agent": agent, "question": question, "stream": True},
                               answer=not as_json)
        path = f"/api/v1/runs/{quote(run_id, safe='')}"
        record = client.call("GET", path)
        while record["status"] == "awaiting_approval" and _decide(client, run_id, interactive):
            _, last = _events(client, f"{path}/events", None, last, answer=not as_json)
            record = client.call("GET", path)
    if as_json:
        print_json(record)
    else:
        typer.echo("")
    status = record["status"]
    if status not in ("completed", "awaiting_approval"):
        typer.secho(f"the run ended {status}: {record.get('error') or ''}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
