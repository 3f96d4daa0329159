"""The live view of a run in the terminal: its events as they come, from the server's SSE stream.

One view per kind of run (ensemble, debate); both print the models' answers, costs and failures, and
the synthesis token by token. The events are those of ``POST /api/v1/ensembles`` or ``/debates`` with
``"stream": true`` (``id: <seq>``, ``event: <type>``, ``data: {"seq", "ts", "type", ...the event's data}``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, JustifyMethod

__all__ = ["DebateView", "EnsembleView", "RunEvent", "RunView", "money"]

_EXCERPT = 200


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One event of a run, as the server sent it."""

    seq: int
    type: str
    data: dict[str, Any]

    @classmethod
    def parse(cls, event: str, payload: str) -> RunEvent:
        import orjson

        data = orjson.loads(payload)
        seq = data.pop("seq", 0)
        data.pop("ts", None)
        return cls(int(seq), str(data.pop("type", event)), data)


def money(usd: float | None) -> str:
    return f"${usd or 0:.6f}"


def _ms(ms: float | None) -> str:
    return "" if ms is None else f"{ms:,.0f} ms"


def _excerpt(text: str | None, limit: int = _EXCERPT) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _score(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else ""


class RunView:
    """Prints a run's events as they happen (common to ensembles and debates)."""

    def __init__(self, console: Console, run_id: str) -> None:
        self.console = console
        self.run_id = run_id
        self.streaming = False
        self.synthesised = False
        """Whether the synthesis was shown token by token (else the answer is printed at the end)."""
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
        cost = money(data.get("cost_usd"))
        self.line(("  ✓ ", "green"), (f"{who:<12} ", "bold"), f"{model:<20} ",
                  f"{_ms(data.get('latency_ms')):>9}  {data.get('tokens', 0):>6} tokens  {cost}")

    def failed_line(self, data: dict[str, Any]) -> None:
        who = str(data.get("role", ""))
        model = str(data.get("model", data.get("label", "")))
        self.line(("  ✗ ", "red"), (f"{who:<12} ", "bold"), f"{model:<20} ", (str(data.get("error", "")), "red"))

    def show(self, event: RunEvent) -> None:
        data = event.data
        if event.type == "synthesis_token":
            self.synthesised = True
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

    def other(self, event: RunEvent) -> None:
        """Events of one kind of run."""

    def footer(self, record: dict[str, Any]) -> None:
        self.end_stream()
        self.console.print()
        self.line(("cost ", "dim"), money(record.get("cost_usd")), ("  ·  run ", "dim"), str(record["id"]),
                  ("  ·  ", "dim"), (str(record["status"]), "green" if record["status"] == "completed" else "red"))


class EnsembleView(RunView):
    def __init__(self, console: Console, run_id: str, so_far: Callable[[], dict[str, Any]]) -> None:
        """``so_far()``: what the run has produced so far (its record's ``result`` while it runs)."""
        super().__init__(console, run_id)
        self.so_far = so_far
        self.table_shown = False

    def other(self, event: RunEvent) -> None:
        data = event.data
        if event.type == "run_started":
            self.line(("ensemble ", "dim"), (str(data.get("name")), "bold"), ("  ·  run ", "dim"), self.run_id)
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
        source = result if result is not None else self.so_far()
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


class DebateView(RunView):
    def other(self, event: RunEvent) -> None:
        data = event.data
        if event.type == "run_started":
            self.line(("debate ", "dim"), (str(data.get("name")), "bold"), ("  ·  run ", "dim"), self.run_id)
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
