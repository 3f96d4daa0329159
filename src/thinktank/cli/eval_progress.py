"""The live progress of an evaluation on stderr, from its events (``eval_started``, ``eval_answer``,
``eval_checked``, ``eval_judged``, ``eval_progress``): items done out of the total, the cost so far, and per
candidate the answers, failures and items whose checks all passed.

On a terminal it is a rich ``Live`` view redrawn in place; elsewhere (a pipe, a CI log) a plain line is printed
as items finish (every item up to 10, then about every 10 %).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

    from .run_views import RunEvent

__all__ = ["EvalProgress"]


@dataclass
class _Tally:
    answered: int = 0
    failed: int = 0
    cached: int = 0
    passed: int = 0
    checked: int = 0


class EvalProgress:
    """``with EvalProgress(console, run_id) as view: view.show(event)`` for each event of the run."""

    def __init__(self, console: Console, run_id: str, enabled: bool = True) -> None:
        self.console = console
        self.run_id = run_id
        self.enabled = enabled
        self.live_view = enabled and console.is_terminal
        self.items = 0
        self.done = 0
        self.cost = 0.0
        self.judged = 0
        self.candidates: list[str] = []
        self.judges: list[str] = []
        self.tally: dict[str, _Tally] = {}
        self.error: str | None = None
        self._live: Live | None = None
        self._printed = -1

    def __enter__(self) -> EvalProgress:
        if self.live_view:
            from rich.live import Live

            self._live = Live(self.render(), console=self.console, refresh_per_second=8, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(kind, exc, tb)
            self._live = None

    def _of(self, candidate: Any) -> _Tally:
        name = str(candidate)
        if name not in self.tally:
            self.tally[name] = _Tally()
            if name not in self.candidates:
                self.candidates.append(name)
        return self.tally[name]

    def show(self, event: RunEvent) -> None:
        data = event.data
        if event.type == "eval_started":
            self.items = int(data.get("items") or 0)
            self.candidates = [str(c) for c in data.get("candidates") or []]
            self.judges = [str(j) for j in data.get("judges") or []]
            for c in self.candidates:
                self._of(c)
            if self.enabled and not self.live_view:
                judged = f" · judged by {', '.join(self.judges)}" if self.judges else ""
                self.console.print(f"evaluating {self.items} items × {len(self.candidates)} candidates "
                                   f"({', '.join(self.candidates)}){judged} · run {self.run_id}",
                                   highlight=False, markup=False)
        elif event.type == "eval_answer":
            tally = self._of(data.get("candidate"))
            if data.get("ok", True):
                tally.answered += 1
            else:
                tally.failed += 1
            tally.cached += 1 if data.get("cached") else 0
            self.cost += float(data.get("cost_usd") or 0.0)
        elif event.type == "eval_checked":
            tally = self._of(data.get("candidate"))
            tally.checked += 1
            passed, total = data.get("passed"), data.get("total")
            # ``passed``: how many of the item's checks passed (or whether they all did).
            if passed is True or (isinstance(passed, int) and not isinstance(passed, bool)
                                  and isinstance(total, int) and passed == total):
                tally.passed += 1
        elif event.type == "eval_judged":
            self.judged += 1
        elif event.type == "eval_progress":
            self.done = int(data.get("done") or 0)
            self.items = int(data.get("total") or self.items)
            if isinstance(data.get("cost_usd"), int | float):
                self.cost = float(data["cost_usd"])
            self._line()
        elif event.type == "error":
            self.error = str(data.get("message", ""))
        if self._live is not None:
            self._live.update(self.render())

    def _line(self) -> None:
        """A plain progress line (not on a terminal) when enough items finished since the last one."""
        if not self.enabled or self.live_view:
            return
        step = 1 if self.items <= 10 else max(1, self.items // 10)
        if self.done != self.items and self.done - self._printed < step:
            return
        self._printed = self.done
        parts = [f"{c}: {t.answered} answered, {t.passed} passed" + (f", {t.failed} failed" if t.failed else "")
                 for c, t in self.tally.items()]
        self.console.print(f"[{self.done}/{self.items}] ${self.cost:.6f} · " + " · ".join(parts),
                           highlight=False, markup=False)

    def render(self) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        head = Text.assemble(("evaluation ", "dim"), (self.run_id, "bold"),
                             ("  ·  judged by ", "dim") if self.judges else "", ", ".join(self.judges))
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=max(self.items, 1), completed=self.done, width=40),
                    f"{self.done}/{self.items} items", Text(f"${self.cost:.6f}", style="dim"),
                    Text(f"{self.judged} verdicts" if self.judges else "", style="dim"))
        table = Table(box=None, padding=(0, 2), show_edge=False)
        for header in ("candidate", "answered", "failed", "passed"):
            table.add_column(header, justify="left" if header == "candidate" else "right")
        for name, t in self.tally.items():
            table.add_row(Text(name), str(t.answered), str(t.failed) if t.failed else "", str(t.passed))
        return Group(head, bar, table)
