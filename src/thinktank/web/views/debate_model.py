"""What the Debate page shows of a run: built from its stored result (a finished debate) or its events
(a running one, or one that stopped early), with each expert's change since the last round as a word diff.

Pure functions on plain data: the view reads the run, this module shapes it, the templates escape it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...deliberation.experts import Persona
from ...deliberation.runs import Event

__all__ = ["Card", "Debate", "Position", "Round", "build_debate", "from_events", "word_diff"]

MAX_DIFF_WORDS = 3000
"""Longer positions are not compared word by word (difflib is quadratic at worst): they are shown whole."""

STOP_REASONS = {
    "converged": "The panel converged: agreement reached the threshold.",
    "stable": "The positions stopped changing.",
    "max_rounds": "The debate reached its round limit.",
}

_WORDS = re.compile(r"\s+|[^\s]+")

Diff = list[tuple[str, str]]
"""(op, text) pieces: op is ``eq``, ``ins`` or ``del``."""


def word_diff(old: str, new: str) -> Diff | None:
    """``new`` against ``old`` word by word (whitespace kept), or None when either is too long to compare."""
    a, b = _WORDS.findall(old), _WORDS.findall(new)
    if len(a) > 2 * MAX_DIFF_WORDS or len(b) > 2 * MAX_DIFF_WORDS:
        return None
    out: Diff = []

    def add(op: str, words: Sequence[str]) -> None:
        text = "".join(words)
        if not text:
            return
        if out and out[-1][0] == op:
            out[-1] = (op, out[-1][1] + text)
        else:
            out.append((op, text))

    # Changes separated only by whitespace read as one change: the old words struck out, then the new ones.
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    changes: list[tuple[bool, int, int, int, int]] = []
    for k, (tag, i1, i2, j1, j2) in enumerate(ops):
        gap = tag == "equal" and 0 < k < len(ops) - 1 and all(w.isspace() for w in b[j1:j2])
        changed = tag != "equal" or gap
        if changes and changes[-1][0] and changed:
            changes[-1] = (True, changes[-1][1], i2, changes[-1][3], j2)
        else:
            changes.append((changed, i1, i2, j1, j2))
    for changed, i1, i2, j1, j2 in changes:
        if changed:
            add("del", a[i1:i2])
            add("ins", b[j1:j2])
        else:
            add("eq", b[j1:j2])
    return out


@dataclass
class Card:
    name: str
    domain: str
    stance: str
    model: str
    backstory: str | None = None


@dataclass
class Position:
    expert: str
    model: str
    stance: str
    text: str
    error: str | None = None
    diff: Diff | None = None
    """The change since the expert's previous position (rounds after the first)."""
    changed: bool = True


@dataclass
class Round:
    number: int
    positions: list[Position]
    agreement: float | None = None
    agreement_error: str | None = None
    follow_up: str | None = None
    """The moderator's question the experts answered in this round."""
    scored: bool = False


@dataclass
class Debate:
    id: str
    name: str
    status: str
    question: str
    created_at: float | None
    finished_at: float | None
    cost_usd: float
    error: str | None
    threshold: float
    analysis: dict[str, Any] | None = None
    panel: list[Card] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    stopped: str | None = None
    answer: str | None = None
    """The moderator's synthesis (Markdown), once written."""
    answer_live: str = ""
    """The synthesis as far as it has streamed (a running debate)."""
    stage: str | None = None
    documents: list[str] = field(default_factory=list)
    plan_error: str | None = None
    seq: int = 0
    """The last event the page reflects (the page's script follows the run from there)."""

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def stop_reason(self) -> str | None:
        return STOP_REASONS.get(self.stopped or "")

    @property
    def agreement_points(self) -> list[tuple[float, float]]:
        return [(float(r.number), r.agreement) for r in self.rounds if r.agreement is not None]


def _str(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _dicts(value: object) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def from_events(events: Iterable[Event]) -> dict[str, Any]:
    """A debate's progress as its result would hold it, from its events (what a running run has so far)."""
    raw: dict[str, Any] = {"rounds": [], "documents": []}
    rounds: dict[int, dict[str, Any]] = {}
    follow_ups: dict[int, str] = {}
    live: list[str] = []
    for e in events:
        raw["seq"] = e.seq
        d = e.data
        if e.type == "analysis":
            raw["analysis"] = dict(d)
        elif e.type == "panel":
            raw["panel"] = d.get("experts") or []
        elif e.type == "round" and isinstance(d.get("round"), int):
            rounds[d["round"]] = {"round": d["round"], "positions": d.get("positions") or [], "convergence": None,
                                 "scored": False}
        elif e.type == "convergence" and isinstance(d.get("round"), int) and d["round"] in rounds:
            rounds[d["round"]].update(convergence=d.get("score"), scored=True, convergence_error=d.get("error"))
        elif e.type == "follow_up" and isinstance(d.get("round"), int):
            follow_ups[d["round"] + 1] = _str(d.get("question"))
        elif e.type == "stage_started":
            raw["stage"] = _str(d.get("stage"))
        elif e.type == "synthesis_token":
            if d.get("replace"):  # the answer began again (the run was taken up by another process)
                live.clear()
            live.append(_str(d.get("text")))
        elif e.type == "document" and d.get("name"):
            raw["documents"].append(_str(d.get("name")))
        elif e.type == "done":
            raw["stage"] = None
    for number, entry in sorted(rounds.items()):
        entry["follow_up"] = follow_ups.get(number)
        raw["rounds"].append(entry)
    raw["answer_live"] = "".join(live)
    return raw


def _cards(panel: object, library: Mapping[str, Persona]) -> list[Card]:
    cards = []
    for p in _dicts(panel):
        name = _str(p.get("name"))
        known = library.get(name)
        same = known is not None and known.domain == p.get("domain") and known.stance == p.get("stance")
        cards.append(Card(name=name, domain=_str(p.get("domain")), stance=_str(p.get("stance")),
                          model=_str(p.get("model")), backstory=known.backstory if same and known else None))
    return cards


def _rounds(entries: object) -> list[Round]:
    out: list[Round] = []
    previous: dict[str, str] = {}
    for entry in _dicts(entries):
        positions = []
        for p in _dicts(entry.get("positions")):
            expert, text = _str(p.get("expert")), _str(p.get("text"))
            before = previous.get(expert)
            diff = word_diff(before, text) if before is not None else None
            positions.append(Position(
                expert=expert, model=_str(p.get("model")), stance=_str(p.get("stance")), text=text,
                error=_str(p.get("error")) or None, diff=diff, changed=before is None or before != text,
            ))
            previous[expert] = text
        score = entry.get("convergence")
        number = entry.get("round")
        out.append(Round(
            number=number if isinstance(number, int) else len(out) + 1, positions=positions,
            agreement=float(score) if isinstance(score, int | float) else None,
            agreement_error=_str(entry.get("convergence_error")) or None,
            follow_up=_str(entry.get("follow_up")) or None,
            scored=bool(entry.get("scored", True)),
        ))
    return out


def build_debate(record: Mapping[str, Any], raw: Mapping[str, Any], library: Sequence[Persona]) -> Debate:
    """The page's model of a run: ``record`` is the run (``GET /runs/{id}``), ``raw`` its result or the
    progress :func:`from_events` read."""
    config = record.get("config") or {}
    own = {p.name: p for p in library} if config.get("recruit", "library") == "library" else {}
    threshold = config.get("convergence")
    analysis = raw.get("analysis")
    answer = raw.get("answer")
    return Debate(
        id=_str(record.get("id")), name=_str(record.get("name")), status=_str(record.get("status")),
        question=_str(record.get("question")), created_at=record.get("created_at"),
        finished_at=record.get("finished_at"), cost_usd=float(record.get("cost_usd") or 0.0),
        error=record.get("error"), threshold=float(threshold) if isinstance(threshold, int | float) else 0.8,
        analysis=dict(analysis) if isinstance(analysis, Mapping) else None,
        panel=_cards(raw.get("panel"), own), rounds=_rounds(raw.get("rounds")),
        stopped=_str(raw.get("stopped")) or None, answer=answer if isinstance(answer, str) and answer else None,
        answer_live=_str(raw.get("answer_live")), stage=_str(raw.get("stage")) or None,
        documents=[d for d in (record.get("documents") or raw.get("documents") or []) if isinstance(d, str)],
        plan_error=_str(raw.get("plan_error")) or None, seq=int(raw.get("seq") or record.get("events") or 0),
    )
