"""``thinktank ask|debate|leaderboard``: ensembles and debates from the terminal, through the server.

A run starts with ``POST /api/v1/ensembles`` or ``/api/v1/debates`` and ``"stream": true``; its events
are shown as they come, then ``GET /api/v1/runs/{id}`` gives the record (the ranking table, the cost,
the documents a debate wrote). The run is the server's like any other: ``GET /api/v1/runs/{id}``
shows it afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from .client import (
    DEFAULT_URL,
    ApiError,
    Client,
    ConfigOpt,
    DemoOpt,
    KeyOpt,
    LocalOpt,
    Target,
    UrlOpt,
    connect,
)
from .common import console, print_json

if TYPE_CHECKING:
    from rich.console import JustifyMethod

    from .run_views import RunView

__all__ = ["ask_command", "debate_command", "leaderboard_command"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the run's record as JSON instead.")]


def _choose(client: Client, kind: str, name: str | None, option: str) -> str:
    """The ensemble or debate to run: the one named, or the only one the server lists (``GET /v1/models``)."""
    listing = client.call("GET", "/v1/models")["data"]
    configured = [str(m["id"]).split("/", 1)[1] for m in listing if m.get("thinktank_kind") == kind]
    if name is not None:
        if name not in configured:
            known = f"configured: {', '.join(configured)}" if configured else f"no {kind}s are configured"
            raise ApiError(f"There is no {kind} '{name}' ({known}).")
        return name
    if len(configured) == 1:
        return configured[0]
    if not configured:
        where = "" if client.local is not None else f" at {client.url}"
        raise ApiError(f"No {kind}s are configured{where}: add '{kind}s:' to the config file, or try --demo.")
    raise ApiError(f"Several {kind}s are configured; choose one with {option}: {', '.join(configured)}.")


def _so_far(client: Client, run_id: str) -> dict[str, Any]:
    """What a run has produced so far: its record's ``result`` while it runs."""
    return dict(client.call("GET", f"/api/v1/runs/{quote(run_id, safe='')}").get("result") or {})


def _run(client: Client, kind: str, body: dict[str, Any],
         make_view: Callable[[str], RunView] | None) -> tuple[dict[str, Any], RunView | None]:
    """Start the run and show its events as they come in the view made for its id (none with ``--json``);
    the run's record once it ends."""
    from .run_views import RunEvent

    view: RunView | None = None
    with client.stream("POST", f"/api/v1/{kind}s", json={**body, "stream": True}) as events:
        run_id = events.headers.get("x-thinktank-run-id", "")
        view = make_view(run_id) if make_view is not None else None
        for message in events:
            if view is not None:
                view.show(RunEvent.parse(message.event, message.data))
    return client.call("GET", f"/api/v1/runs/{quote(run_id, safe='')}"), view


def _report_failure(record: dict[str, Any], view: RunView | None) -> int:
    if record["status"] == "completed":
        return 0
    message = (view.error if view is not None else None) or record.get("error") or record["status"]
    typer.secho(f"error: the run ended {record['status']}: {message}", fg=typer.colors.RED, err=True)
    return 1


def ask_command(
    question: Annotated[str, typer.Argument(help="What to ask.")],
    ensemble: Annotated[str | None, typer.Option(
        "--ensemble", "-e", help="A configured ensemble (default: the only one).", show_default=False)] = None,
    strategy: Annotated[str | None, typer.Option(
        help="Ranking: heuristic, peer_review, rubric or pairwise (default: the ensemble's).",
        show_default=False)] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Ask an ensemble: its members answer at once, the answers are ranked, the best or a synthesis comes back."""
    from .run_views import EnsembleView

    with connect(Target(url, api_key, local, config, demo)) as client:
        name = _choose(client, "ensemble", ensemble, "--ensemble")
        body: dict[str, Any] = {"ensemble": name, "question": question}
        if strategy is not None:
            body["strategy"] = strategy
        record, view = _run(client, "ensemble", body, None if as_json else (
            lambda run_id: EnsembleView(console(), run_id, lambda: _so_far(client, run_id))))
    if as_json:
        print_json(record)
    else:
        assert isinstance(view, EnsembleView)
        result: dict[str, Any] = record.get("result") or {}
        view.ranking_table(result)  # when the run never reached its synthesis
        if not view.synthesised and result.get("answer"):
            view.heading("answer")
            view.console.out(str(result["answer"]), highlight=False)
        view.footer(record)
    code = _report_failure(record, view)
    if code:
        raise typer.Exit(code)


def debate_command(
    question: Annotated[str, typer.Argument(help="What the panel should debate.")],
    name: Annotated[str | None, typer.Option(
        "--name", "-n", help="A configured debate (default: the only one).", show_default=False)] = None,
    experts: Annotated[int | None, typer.Option(help="Panel size (1-8).", show_default=False)] = None,
    rounds: Annotated[int | None, typer.Option(help="Most rounds (1-10).", show_default=False)] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Also write plan.md and tasks.md.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where to write plan.md and tasks.md (default: here; existing files are replaced).",
        show_default=False, file_okay=False)] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Run a debate: a panel of experts argues over rounds until it converges; a moderator synthesises."""
    from .run_views import DebateView

    with connect(Target(url, api_key, local, config, demo)) as client:
        chosen = _choose(client, "debate", name, "--name")
        body: dict[str, Any] = {"debate": chosen, "question": question}
        for key, value in (("experts", experts), ("rounds", rounds), ("plan", True if plan else None)):
            if value is not None:
                body[key] = value
        record, view = _run(client, "debate", body, None if as_json else (
            lambda run_id: DebateView(console(), run_id)))
        if as_json:
            print_json(record)
        else:
            assert view is not None
            answer = (record.get("result") or {}).get("answer")
            if not view.synthesised and answer:
                view.heading("synthesis")
                view.console.out(str(answer), highlight=False)
            view.footer(record)
        documents: list[str] = list(record.get("documents") or [])
        if documents and (plan or out is not None):
            _save_documents(client, str(record["id"]), documents, out if out is not None else Path.cwd(), as_json)
        elif documents and not as_json:
            typer.echo(f"documents: {', '.join(documents)} (save them with --out DIR)")
    code = _report_failure(record, view)
    if code:
        raise typer.Exit(code)


def _save_documents(client: Client, run_id: str, documents: list[str], folder: Path, quiet: bool) -> None:
    """``GET /api/v1/runs/{id}/documents/{name}`` of each, written to ``folder`` (replacing what is there)."""
    folder.mkdir(parents=True, exist_ok=True)
    for doc in documents:
        try:
            content = client.text(f"/api/v1/runs/{quote(run_id, safe='')}/documents/{quote(doc, safe='')}")
        except ApiError as exc:
            if exc.status != 404:
                raise
            # Listed but not stored: say so rather than write nothing silently.
            typer.secho(f"error: the run's {doc} was not saved", fg=typer.colors.RED, err=True)
            continue
        path = folder / Path(doc).name
        path.write_text(content if content.endswith("\n") else content + "\n", encoding="utf-8")
        typer.echo(f"wrote {path}", err=quiet)


def leaderboard_command(
    tag: Annotated[str | None, typer.Option(help="Only votes on runs with this tag.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the board as JSON.")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Models ranked by a Bradley-Terry rating of users' votes, with 95 % bootstrap intervals."""
    with connect(Target(url, api_key, local, config, demo)) as client:
        board = client.call("GET", "/api/v1/leaderboard", params={"tag": tag} if tag else None)
    if as_json:
        print_json({"tag": tag, "data": board["data"]})
        return
    if not board["data"]:
        which = f" for the tag '{tag}'" if tag else ""
        typer.echo(f"No votes yet{which}. Rate an ensemble run's answers to fill the board: "
                   'POST /api/v1/runs/{id}/feedback with {"answer": "A", "vote": "up"} '
                   '(or {"winner": "A"} for an arena run).')
        return
    from rich.table import Table

    table = Table(title="Leaderboard" + (f" ({tag})" if tag else ""), title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("rank", "right"), ("model", "left"), ("rating", "right"), ("95% CI", "right"), ("games", "right"),
        ("win rate", "right")]
    for header, justify in columns:
        table.add_column(header, justify=justify)
    for row in board["data"]:
        win = row.get("win_rate")
        table.add_row(str(row["rank"]), str(row["model"]), f"{row['rating']:.1f}",
                      f"{row['ci_low']:.1f} – {row['ci_high']:.1f}", str(row["games"]),
                      "" if win is None else f"{win:.0%}")
    console().print(table)
