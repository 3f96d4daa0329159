"""``thinktank ask|debate|leaderboard``: ensembles and debates from the terminal.

They run in this process, like ``thinktank chat``, with the same settings and config as ``serve``
(``--config``, ``--demo``) and the local database, as the admin. Each run is recorded like one made
through the API, so ``GET /api/v1/runs/{id}`` shows it afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ..errors import ThinktankError
from . import ConfigOpt, DemoOpt, _fail, _settings

if TYPE_CHECKING:
    from rich.console import Console, JustifyMethod

    from ..accounts.principal import Principal
    from ..api.state import AppState
    from ..config import DebateConfig, EnsembleConfig
    from ..deliberation.runs import Event, LiveRun
    from ..deliberation.service import Kind

__all__ = ["ask_command", "debate_command", "leaderboard_command"]

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the run record as JSON instead.")]
_EXCERPT = 200


def _with_state(config: Path | None, demo: bool, work: Callable[[AppState], Awaitable[T]], *,
                needs_models: bool = True) -> T:
    """Build the app's state, start it, run ``work``, stop it (whatever happens); errors exit 2."""
    import logging

    from ..api.app import _start, _stop, create_app

    settings = _settings(config, demo)

    def build() -> AppState:
        if needs_models:
            return create_app(settings).state
        # No advice on adding models to a command that calls none.
        logger = logging.getLogger("thinktank")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            return create_app(settings).state
        finally:
            logger.setLevel(level)

    async def run() -> T:
        state = build()
        try:
            await _start(state)
            return await work(state)
        finally:
            try:
                await _stop(state)
            finally:
                await state.http.close()

    try:
        return asyncio.run(run())
    except ThinktankError as exc:
        raise _fail(exc) from None


def _choose(kind: str, configured: Sequence[str], name: str | None, option: str) -> str:
    """The configured ensemble or debate to run: the one named, or the only one there is."""
    from ..errors import InvalidRequestError, ModelNotFoundError

    listing = ", ".join(configured)
    if name is not None:
        if name not in configured:
            known = f"configured: {listing}" if configured else f"no {kind}s are configured"
            raise ModelNotFoundError(f"There is no {kind} '{name}' ({known}).", param=kind)
        return name
    if len(configured) == 1:
        return configured[0]
    if not configured:
        raise InvalidRequestError(
            f"No {kind}s are configured: add '{kind}s:' to the config file, or try --demo.", param=kind)
    raise InvalidRequestError(f"Several {kind}s are configured; choose one with {option}: {listing}.", param=kind)


async def _start_run(state: AppState, kind: Kind, name: str, cfg: EnsembleConfig | DebateConfig, question: str,
                     principal: Principal) -> LiveRun:
    """Admit and start a run as the API does: access checked, rate limits and budgets applied."""
    from ..deliberation.service import RunOptions
    from ..gateway.tokens import estimate_text_tokens
    from ..types import Message

    service = state.deliberation
    model = f"{kind}/{name}"
    principal.check_model(model)
    service.check_access(principal, cfg)
    admission = await state.gate.admit(principal, None, model, estimate_text_tokens(question))
    # start() owns the admission: it records it when the run ends, or at once if the run cannot start.
    return await service.start(kind, cfg, principal=principal, admission=admission,
                               messages=[Message(role="user", content=question)], options=RunOptions())


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def _print_json(data: Any) -> None:
    import orjson

    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def _money(usd: float | None) -> str:
    return f"${usd or 0:.6f}"


def _ms(ms: float | None) -> str:
    return "" if ms is None else f"{ms:,.0f} ms"


def _excerpt(text: str | None, limit: int = _EXCERPT) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _score(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else ""


class _Live:
    """Prints a run's events as they happen (common to ensembles and debates)."""

    def __init__(self, console: Console, run: LiveRun) -> None:
        self.console = console
        self.run = run
        self.streaming = False
        self.error: str | None = None

    def line(self, *parts: str | tuple[str, str]) -> None:
        from rich.text import Text

        self.end_stream()
        self.console.print(Text.assemble(*parts))

    def heading(self, title: str) -> None:
        from rich.rule import Rule

        self.end_stream()
        self.console.print(Rule(title, align="left", style="dim"))

    def end_stream(self) -> None:
        if self.streaming:
            self.console.out("")
            self.streaming = False

    def token(self, text: str) -> None:
        self.streaming = True
        self.console.out(text, end="", highlight=False)

    def model_line(self, data: dict[str, Any]) -> None:
        who = str(data.get("role", ""))
        model = str(data.get("model", data.get("label", "")))
        cost = _money(data.get("cost_usd"))
        self.line(("  ✓ ", "green"), (f"{who:<12} ", "bold"), f"{model:<20} ",
                  f"{_ms(data.get('latency_ms')):>9}  {data.get('tokens', 0):>6} tokens  {cost}")

    def failed_line(self, data: dict[str, Any]) -> None:
        who = str(data.get("role", ""))
        model = str(data.get("model", data.get("label", "")))
        self.line(("  ✗ ", "red"), (f"{who:<12} ", "bold"), f"{model:<20} ", (str(data.get("error", "")), "red"))

    def show(self, event: Event) -> None:
        data = event.data
        if event.type == "synthesis_token":
            self.token(str(data.get("text", "")))
        elif event.type == "model_answered":
            self.model_line(data)
        elif event.type == "model_failed":
            self.failed_line(data)
        elif event.type == "error":
            self.error = str(data.get("message", ""))
        elif event.type == "done":
            self.end_stream()
        else:
            self.other(event)

    def other(self, event: Event) -> None:
        """Events of one kind of run."""

    def footer(self, record: dict[str, Any]) -> None:
        self.end_stream()
        self.console.print()
        self.line(("cost ", "dim"), _money(record.get("cost_usd")), ("  ·  run ", "dim"), str(record["id"]),
                  ("  ·  ", "dim"), (str(record["status"]), "green" if record["status"] == "completed" else "red"))


class _EnsembleLive(_Live):
    def __init__(self, console: Console, run: LiveRun) -> None:
        super().__init__(console, run)
        self.table_shown = False

    def other(self, event: Event) -> None:
        data = event.data
        if event.type == "run_started":
            self.line(("ensemble ", "dim"), (str(data.get("name")), "bold"), ("  ·  run ", "dim"), self.run.id)
        elif event.type == "stage_started":
            stage = data.get("stage")
            if stage == "answer":
                self.heading(f"answers ({data.get('members')} members)")
            elif stage == "rank":
                self.heading(f"ranking ({data.get('strategy')})")
            elif stage == "synthesis":
                self.ranking_table()
                how = f"chairman {data.get('model')}" if data.get("method") == "chairman" else "the best answer"
                self.heading(f"answer ({how})")
        elif event.type == "review":
            self.review(data)
        elif event.type == "ranking":
            agreement = data.get("agreement")
            self.line(("  ranking: ", "dim"), " > ".join(map(str, data.get("order", []))),
                      f"  (agreement {agreement:.2f})" if isinstance(agreement, int | float) else "")

    def review(self, data: dict[str, Any]) -> None:
        who = f"reviewer {data['reviewer']}" if "reviewer" in data else str(data.get("judge", "judge"))
        if data.get("answer"):
            who += f" on {data['answer']}"
        if data.get("pair"):
            who += " on " + " vs ".join(map(str, data["pair"]))
        if data.get("excluded"):
            self.line(("  ✗ ", "yellow"), f"{who}: excluded ({data.get('reason')})")
        elif "ranking" in data:
            self.line(("  · ", "dim"), f"{who}: " + " > ".join(map(str, data["ranking"])))
        elif "total" in data:
            self.line(("  · ", "dim"), f"{who}: {data['total']}")
        elif "outcome" in data:
            self.line(("  · ", "dim"), f"{who}: {data['outcome']}")

    def ranking_table(self, result: dict[str, Any] | None = None) -> None:
        """The answers ranked best first (from what the run has so far, or its final result)."""
        from rich.table import Table

        if self.table_shown:
            return
        source = result if result is not None else self.run.partial
        answers: list[dict[str, Any]] = list(source.get("answers") or [])
        ranking: dict[str, Any] = source.get("ranking") or {}
        if not answers:
            return
        self.table_shown = True
        order = list(ranking.get("order") or [a["label"] for a in answers])
        by_label = {a["label"]: a for a in answers}
        scores: dict[str, Any] = ranking.get("scores") or {}
        table = Table(title=f"Ranking ({ranking.get('strategy', 'none')})", title_justify="left")
        columns: list[tuple[str, JustifyMethod]] = [
            ("rank", "right"), ("label", "center"), ("model", "left"), ("score", "right"), ("latency", "right")]
        for header, justify in columns:
            table.add_column(header, justify=justify)
        for i, label in enumerate(order, 1):
            a = by_label.get(label, {})
            table.add_row(str(i), str(label), str(a.get("model", "")), _score(scores.get(label)),
                          _ms(a.get("latency_ms")))
        self.end_stream()
        self.console.print(table)


class _DebateLive(_Live):
    def other(self, event: Event) -> None:
        data = event.data
        if event.type == "run_started":
            self.line(("debate ", "dim"), (str(data.get("name")), "bold"), ("  ·  run ", "dim"), self.run.id)
        elif event.type == "analysis":
            if data.get("error"):
                self.line(("  ✗ ", "yellow"), f"the analysis failed ({data['error']})")
            self.line(("  kind: ", "dim"), str(data.get("kind", "")), ("   domains: ", "dim"),
                      ", ".join(map(str, data.get("domains") or [])) or "-")
            if data.get("needs"):
                self.line(("  needs: ", "dim"), "; ".join(map(str, data["needs"])))
        elif event.type == "panel":
            self.panel(data)
        elif event.type == "stage_started" and data.get("stage") == "analysis":
            self.heading(f"analysis ({data.get('model')})")
        elif event.type == "stage_started" and data.get("stage") == "panel":
            self.heading(f"panel ({data.get('size')} experts, recruited from the {data.get('method')})")
        elif event.type == "stage_started" and str(data.get("stage", "")).startswith("round "):
            self.heading(str(data["stage"]))
        elif event.type == "stage_started" and data.get("stage") == "synthesis":
            self.heading(f"synthesis (moderator {data.get('model')})")
        elif event.type == "stage_started" and data.get("stage") == "planning":
            self.heading("planning")
        elif event.type == "round":
            for p in data.get("positions", []):
                stance = str(p.get("stance", ""))
                self.line(("  ", ""), (str(p.get("expert")), "bold"), (f" ({p.get('model')})", "dim"),
                          (f" [{stance}]", "cyan"), ": ", _excerpt(p.get("text")))
                if p.get("error"):
                    self.line(("    ✗ ", "red"), (str(p["error"]), "red"))
        elif event.type == "convergence":
            score, threshold = data.get("score"), data.get("threshold")
            if score is None:
                self.line(("  convergence: ", "dim"), (f"not scored ({data.get('error')})", "yellow"))
            else:
                met = isinstance(threshold, int | float) and score >= threshold
                self.line(("  convergence: ", "dim"), (f"{score:.2f}", "green" if met else ""),
                          f" (threshold {_score(threshold)[:4]}{', converged' if met else ''})")
        elif event.type == "follow_up":
            self.line(("  moderator asks: ", "dim"), str(data.get("question", "")))
        elif event.type == "document":
            self.line(("  document ", "dim"), str(data.get("name")), (f" ({data.get('chars')} chars)", "dim"))

    def model_line(self, data: dict[str, Any]) -> None:
        # Every expert's position is shown with the round; only the other calls get a line of their own.
        if not str(data.get("stage", "")).startswith("round ") or data.get("role") in ("judge", "moderator"):
            super().model_line(data)

    def panel(self, data: dict[str, Any]) -> None:
        from rich.table import Table

        self.end_stream()
        table = Table()
        for header in ("expert", "domain", "stance", "model"):
            table.add_column(header)
        for e in data.get("experts", []):
            stance = str(e.get("stance", ""))  # "pragmatic: prefers boring, proven designs..." -> "pragmatic"
            table.add_row(str(e.get("name")), str(e.get("domain")), stance.split(":", 1)[0][:40],
                          str(e.get("model")))
        self.console.print(table)
        if data.get("fallback_reason"):
            self.line(("  ", ""), (str(data["fallback_reason"]), "yellow"))


async def _follow(state: AppState, run: LiveRun, view: _Live | None) -> dict[str, Any]:
    """Show the run's events as they come (unless ``view`` is None); the saved record once it ends."""
    if view is not None:
        async for event in run.follow(0):
            view.show(event)
    await state.deliberation.wait(run)
    return await state.deliberation.get(run.id, state.auth.known_admin())


def _report_failure(record: dict[str, Any], view: _Live | None) -> int:
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
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Ask an ensemble: its members answer at once, the answers are ranked, the best or a synthesis comes back."""

    async def work(state: AppState) -> int:
        service = state.deliberation
        name = _choose("ensemble", list(service.ensembles), ensemble, "--ensemble")
        cfg = service.resolve("ensemble", name, {"strategy": strategy})
        run = await _start_run(state, "ensemble", name, cfg, question, state.auth.known_admin())
        if as_json:
            record = await _follow(state, run, None)
            _print_json(record)
            return _report_failure(record, None)
        view = _EnsembleLive(_console(), run)
        record = await _follow(state, run, view)
        result: dict[str, Any] = record.get("result") or {}
        view.ranking_table(result)  # when the run never reached its synthesis
        if not any(e.type == "synthesis_token" for e in run.events) and result.get("answer"):
            view.heading("answer")
            view.console.out(str(result["answer"]), highlight=False)
        view.footer(record)
        return _report_failure(record, view)

    code = _with_state(config, demo, work)
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
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Run a debate: a panel of experts argues over rounds until it converges; a moderator synthesises."""

    async def work(state: AppState) -> int:
        service = state.deliberation
        chosen = _choose("debate", list(service.debates), name, "--name")
        cfg = service.resolve("debate", chosen, {"experts": experts, "rounds": rounds, "plan": True if plan else None})
        run = await _start_run(state, "debate", chosen, cfg, question, state.auth.known_admin())
        view: _DebateLive | None = None if as_json else _DebateLive(_console(), run)
        record = await _follow(state, run, view)
        if as_json:
            _print_json(record)
        else:
            assert view is not None
            if not any(e.type == "synthesis_token" for e in run.events) and (record.get("result") or {}).get(
                    "answer"):
                view.heading("synthesis")
                view.console.out(str(record["result"]["answer"]), highlight=False)
            view.footer(record)
        documents: list[str] = list(record.get("documents") or [])
        if documents and (plan or out is not None):
            folder = out if out is not None else Path.cwd()
            folder.mkdir(parents=True, exist_ok=True)
            for doc in documents:
                content = await service.store.document(run.id, doc)
                if content is None:  # listed but not stored: say so rather than write nothing silently
                    typer.secho(f"error: the run's {doc} was not saved", fg=typer.colors.RED, err=True)
                    continue
                path = folder / Path(doc).name
                path.write_text(content if content.endswith("\n") else content + "\n", encoding="utf-8")
                typer.echo(f"wrote {path}", err=as_json)
        elif documents and not as_json:
            typer.echo(f"documents: {', '.join(documents)} (save them with --out DIR)")
        return _report_failure(record, view)

    code = _with_state(config, demo, work)
    if code:
        raise typer.Exit(code)


def leaderboard_command(
    tag: Annotated[str | None, typer.Option(help="Only votes on runs with this tag.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the board as JSON.")] = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Models ranked by a Bradley-Terry rating of users' votes, with 95 % bootstrap intervals."""

    async def work(state: AppState) -> list[dict[str, Any]]:
        return await state.deliberation.leaderboard(tag)

    board = _with_state(config, demo, work, needs_models=False)
    if as_json:
        _print_json({"tag": tag, "data": board})
        return
    if not board:
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
    for row in board:
        win = row.get("win_rate")
        table.add_row(str(row["rank"]), str(row["model"]), f"{row['rating']:.1f}",
                      f"{row['ci_low']:.1f} – {row['ci_high']:.1f}", str(row["games"]),
                      "" if win is None else f"{win:.0%}")
    _console().print(table)
