"""What the Evaluations page shows of a run: its summary table and the matrix of items by candidates, shaped
from the run's record (``result`` as docs/evals.md describes it: ``{"summary": ..., "items": [...]}``).

Pure functions on plain data: the view reads the run, this module shapes it (tolerating a partial result while
the run goes on), the templates escape it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PREVIEW_CHARS",
    "Candidate",
    "Cell",
    "CheckCell",
    "Evaluation",
    "ItemRow",
    "Pair",
    "Verdict",
    "build_evaluation",
    "interval",
    "percent",
]

PREVIEW_CHARS = 140
"""How much of an answer (or question) a collapsed cell shows."""


def _num(value: object) -> float | None:
    """A finite number, or None (a missing value, a string, a bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: object) -> int:
    number = _num(value)
    return int(number) if number is not None else 0


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _pair(value: object) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        lo, hi = _num(value[0]), _num(value[1])
        if lo is not None and hi is not None:
            return (lo, hi)
    return None


def _dicts(value: object) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def percent(value: float | None, digits: int = 0) -> str:
    """``0.613`` -> ``61 %``; None -> ``—``."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value * 100:.{digits}f} %"


def interval(ci: tuple[float, float] | None, *, as_percent: bool = False, digits: int = 1) -> str:
    """A 95 % interval as ``[52 - 70 %]`` (rates) or ``[1000.1 - 1070.3]`` (ratings); empty when there is none."""
    if ci is None:
        return ""
    lo, hi = ci
    if as_percent:
        return f"[{lo * 100:.0f} – {hi * 100:.0f} %]"
    return f"[{lo:.{digits}f} – {hi:.{digits}f}]"


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """The start of ``text`` on one line, for a collapsed cell."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


@dataclass(frozen=True)
class Candidate:
    """One row of the summary table."""

    name: str
    answered: int
    failed: int
    pass_rate: float | None
    checks_passed: int
    checks_total: int
    checks_unknown: int
    latency_mean_ms: float | None
    latency_p95_ms: float | None
    cost_total_usd: float | None
    cost_per_answer_usd: float | None
    win_rate: float | None
    win_ci: tuple[float, float] | None
    rating: float | None
    rating_ci: tuple[float, float] | None
    rank: int | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Candidate:
        rank = _num(row.get("rank"))
        return cls(
            name=_str(row.get("candidate")), answered=_int(row.get("answered")), failed=_int(row.get("failed")),
            pass_rate=_num(row.get("pass_rate")), checks_passed=_int(row.get("checks_passed")),
            checks_total=_int(row.get("checks_total")), checks_unknown=_int(row.get("checks_unknown")),
            latency_mean_ms=_num(row.get("latency_mean_ms")), latency_p95_ms=_num(row.get("latency_p95_ms")),
            cost_total_usd=_num(row.get("cost_total_usd")), cost_per_answer_usd=_num(row.get("cost_per_answer_usd")),
            win_rate=_num(row.get("win_rate")), win_ci=_pair(row.get("win_ci")), rating=_num(row.get("rating")),
            rating_ci=_pair(row.get("rating_ci")), rank=int(rank) if rank is not None else None,
        )


@dataclass(frozen=True)
class Pair:
    """Two candidates head to head, over the items judged."""

    a: str
    b: str
    n: int
    wins: int
    losses: int
    ties: int
    win_rate: float | None
    ci: tuple[float, float] | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Pair:
        return cls(a=_str(row.get("a")), b=_str(row.get("b")), n=_int(row.get("n")), wins=_int(row.get("wins")),
                   losses=_int(row.get("losses")), ties=_int(row.get("ties")), win_rate=_num(row.get("win_rate")),
                   ci=_pair(row.get("ci")))


@dataclass(frozen=True)
class CheckCell:
    name: str
    type: str
    passed: bool | None
    score: float | None
    reason: str

    @property
    def state(self) -> str:
        return "pass" if self.passed is True else "fail" if self.passed is False else "unknown"

    @property
    def mark(self) -> str:
        return {"pass": "✓", "fail": "✗", "unknown": "?"}[self.state]

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> CheckCell:
        passed = row.get("passed")
        return cls(name=_str(row.get("name")) or _str(row.get("type")) or "check", type=_str(row.get("type")),
                   passed=passed if isinstance(passed, bool) else None, score=_num(row.get("score")),
                   reason=_str(row.get("reason")))


@dataclass(frozen=True)
class Cell:
    """What one candidate answered to one item (``pending``: nothing yet, the run goes on or stopped)."""

    candidate: str
    pending: bool = True
    text: str | None = None
    error: str | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    cached: bool = False
    checks: list[CheckCell] = field(default_factory=list)

    @property
    def preview(self) -> str:
        return preview(self.text or "")

    @property
    def long(self) -> bool:
        """Too long (or on several lines) to show whole in a collapsed cell."""
        text = self.text or ""
        return len(text) > PREVIEW_CHARS or "\n" in text.strip()

    @property
    def passed(self) -> int:
        return sum(1 for c in self.checks if c.passed is True)

    @property
    def state(self) -> str:
        """``pending``, ``failed`` (no answer), ``pass`` (every check passed), ``fail`` or ``answered`` (no checks)."""
        if self.pending:
            return "pending"
        if self.text is None:
            return "failed"
        if not self.checks:
            return "answered"
        return "pass" if self.passed == len(self.checks) else "fail"

    @classmethod
    def of(cls, candidate: str, row: Mapping[str, Any]) -> Cell:
        return cls(candidate=candidate, pending=False, text=_opt_str(row.get("text")), error=_opt_str(row.get("error")),
                   cost_usd=_num(row.get("cost_usd")), latency_ms=_num(row.get("latency_ms")),
                   cached=row.get("cached") is True, checks=[CheckCell.of(c) for c in _dicts(row.get("checks"))])


@dataclass(frozen=True)
class Verdict:
    a: str
    b: str
    judge: str
    outcome: float | None
    order_dependent: bool
    error: str | None

    @property
    def label(self) -> str:
        """What the judge decided, in words."""
        if self.outcome is None:
            return f"excluded: {self.error or 'no verdict'}"
        if self.order_dependent:
            return "tie (the two orders disagreed)"
        if self.outcome >= 0.75:
            return f"{self.a} better"
        if self.outcome <= 0.25:
            return f"{self.b} better"
        return "tie"

    @property
    def state(self) -> str:
        if self.outcome is None:
            return "excluded"
        if self.order_dependent or 0.25 < self.outcome < 0.75:
            return "tie"
        return "win"

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Verdict:
        return cls(a=_str(row.get("a")), b=_str(row.get("b")), judge=_str(row.get("judge")),
                   outcome=_num(row.get("outcome")), order_dependent=row.get("order_dependent") is True,
                   error=_opt_str(row.get("error")))


@dataclass(frozen=True)
class ItemRow:
    """One row of the matrix: the item and each candidate's cell, in the evaluation's candidate order."""

    id: str
    question: str
    reference: str | None
    tags: list[str]
    cells: list[Cell]
    verdicts: list[Verdict]
    disagreement: bool

    @property
    def question_preview(self) -> str:
        return preview(self.question)

    @property
    def question_long(self) -> bool:
        return len(self.question) > PREVIEW_CHARS or "\n" in self.question.strip()


@dataclass(frozen=True)
class Agreement:
    judges: list[str]
    pairwise: list[tuple[str, str, float | None]]
    fleiss_kappa: float | None


@dataclass(frozen=True)
class Excluded:
    item: str
    a: str
    b: str
    judge: str
    reason: str


@dataclass
class Evaluation:
    """The whole page: the run's facts, its summary (None before anything is summarised) and its matrix."""

    id: str
    status: str
    name: str
    created_at: float | None
    finished_at: float | None
    cost_usd: float | None
    error: str | None
    candidates: list[str]
    judges: list[str]
    items_total: int
    candidates_summary: list[Candidate]
    pairs: list[Pair]
    agreement: Agreement | None
    excluded: list[Excluded]
    order_dependent: int
    rows: list[ItemRow]
    tags: list[str]

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def judged(self) -> bool:
        return any(c.win_rate is not None or c.rating is not None for c in self.candidates_summary)

    @property
    def done_items(self) -> int:
        """Items every candidate has answered (or failed on)."""
        return sum(1 for r in self.rows if r.cells and not any(c.pending for c in r.cells))

    @property
    def disagreements(self) -> int:
        return sum(1 for r in self.rows if r.disagreement)


def _agreement(value: object) -> Agreement | None:
    if not isinstance(value, Mapping):
        return None
    pairwise = [(_str(p.get("a")), _str(p.get("b")), _num(p.get("agreement"))) for p in _dicts(value.get("pairwise"))]
    return Agreement(judges=_strings(value.get("judges")), pairwise=pairwise,
                     fleiss_kappa=_num(value.get("fleiss_kappa")))


def _row(item: Mapping[str, Any], candidates: Sequence[str]) -> ItemRow:
    answers = item.get("answers")
    answers = answers if isinstance(answers, Mapping) else {}
    cells = [Cell.of(c, answers[c]) if isinstance(answers.get(c), Mapping) else Cell(candidate=c)
             for c in candidates]
    return ItemRow(id=_str(item.get("id")), question=_str(item.get("question")),
                   reference=_opt_str(item.get("reference")), tags=_strings(item.get("tags")), cells=cells,
                   verdicts=[Verdict.of(v) for v in _dicts(item.get("verdicts"))],
                   disagreement=item.get("disagreement") is True)


def _question(messages: object) -> str:
    """The text of the last user message of an item's ``messages`` (a string, or text parts)."""
    for message in reversed(_dicts(messages)):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return "\n".join(_str(part.get("text")) for part in _dicts(content) if part.get("type") == "text")
    return ""


def _waiting(item: Mapping[str, Any], candidates: Sequence[str]) -> ItemRow:
    """An item of the evaluation not finished (yet): its cells pending."""
    return ItemRow(id=_str(item.get("id")), question=_str(item.get("question")) or _question(item.get("messages")),
                   reference=_opt_str(item.get("reference")), tags=_strings(item.get("tags")),
                   cells=[Cell(candidate=c) for c in candidates], verdicts=[], disagreement=False)


def _rows(finished: Sequence[Mapping[str, Any]], planned: Sequence[Mapping[str, Any]],
          candidates: Sequence[str]) -> list[ItemRow]:
    """Every item in the dataset's order: finished ones from the result, the others waiting."""
    done: dict[str, ItemRow | None] = {r.id: r for r in (_row(i, candidates) for i in finished)}
    rows = [done.pop(_str(i.get("id")), None) or _waiting(i, candidates) for i in planned]
    return rows + [r for r in done.values() if r is not None]


def _candidates(record: Mapping[str, Any], summary: Mapping[str, Any], items: Iterable[Mapping[str, Any]]) -> list[str]:
    """The candidates in the evaluation's order: the summary's, else the request's, else as the answers name them."""
    names = _strings(summary.get("candidates"))
    if names:
        return names
    for where in ("config", "request"):  # an evaluation's plan (its config), or what was asked for
        asked = record.get(where)
        if isinstance(asked, Mapping) and _strings(asked.get("candidates")):
            return _strings(asked.get("candidates"))
    seen: dict[str, None] = {}
    for item in items:
        answers = item.get("answers")
        if isinstance(answers, Mapping):
            seen.update((str(k), None) for k in answers)
    return list(seen)


def build_evaluation(record: Mapping[str, Any]) -> Evaluation:
    """The page's view of a run record (``GET /api/v1/eval/runs/{id}``), finished or not."""
    result = record.get("result")
    result = result if isinstance(result, Mapping) else {}
    summary = result.get("summary")
    summary = summary if isinstance(summary, Mapping) else {}
    items = _dicts(result.get("items"))
    candidates = _candidates(record, summary, items)
    request = record.get("request")
    request = request if isinstance(request, Mapping) else {}
    config = record.get("config")
    config = config if isinstance(config, Mapping) else {}
    judges = _strings(summary.get("judges")) or _strings(config.get("judges")) or _strings(request.get("judges"))
    rows = _rows(items, _dicts(request.get("items")), candidates)
    total = _int(result.get("total_items")) or _int(config.get("items")) or _int(summary.get("items")) or len(rows)
    tags = sorted({t for r in rows for t in r.tags}, key=str.casefold)
    excluded = [Excluded(item=_str(x.get("item")), a=_str(x.get("a")), b=_str(x.get("b")), judge=_str(x.get("judge")),
                         reason=_str(x.get("reason"))) for x in _dicts(summary.get("excluded"))]
    per_candidate = [Candidate.of(c) for c in _dicts(summary.get("per_candidate"))]
    per_candidate.sort(key=lambda c: (c.rank is None, c.rank or 0))
    return Evaluation(
        id=_str(record.get("id")), status=_str(record.get("status")) or "unknown", name=_str(record.get("name")),
        created_at=_num(record.get("created_at")), finished_at=_num(record.get("finished_at")),
        cost_usd=_num(record.get("cost_usd")), error=_opt_str(record.get("error")), candidates=candidates,
        judges=judges, items_total=total, candidates_summary=per_candidate,
        pairs=[Pair.of(p) for p in _dicts(summary.get("pairs"))], agreement=_agreement(summary.get("judge_agreement")),
        excluded=excluded, order_dependent=_int(summary.get("order_dependent")), rows=rows, tags=tags,
    )
