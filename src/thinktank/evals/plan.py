"""What an evaluation is asked to do (:class:`EvalPlan`, stored as its run's ``config``), and an item's result as
JSON and back: the ``items`` of the result and the ``eval_item`` event that takes a finished item to the run's
record, from which an evaluation taken up again knows what it need not ask again."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from .checks import AnswerRecord, CheckResult
from .dataset import EvalItem
from .pairwise import PairVerdict
from .stats import disagreement

__all__ = ["DEFAULT_CONCURRENCY", "EvalPlan", "ItemResult", "params_key"]

DEFAULT_CONCURRENCY = 4
MAX_CANDIDATES = 8
MAX_JUDGES = 3


class EvalPlan(BaseModel):
    """An evaluation's configuration (its run's ``config``; its items are in the run's ``request``)."""

    model_config = ConfigDict(extra="ignore")

    candidates: list[str] = Field(min_length=1, max_length=MAX_CANDIDATES)
    judges: list[str] = Field(default_factory=list, max_length=MAX_JUDGES)
    checks: list[dict[str, Any]] = Field(default_factory=list)
    """Checks added to every item's own (as JSON)."""
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=32)
    max_tokens: int | None = None
    temperature: float | None = None
    items: int = 0
    """How many items."""
    dataset_id: str | None = None
    dataset_name: str | None = None
    rejudge_of: str | None = None
    """The evaluation whose answers this one reuses."""
    seed: int = 0
    """The bootstrap's seed (the same intervals for the same verdicts, taken up again or not)."""

    def pairs(self) -> list[tuple[str, str]]:
        """Every pair of candidates, in their order (none with fewer than two, or without judges)."""
        if not self.judges:
            return []
        c = self.candidates
        return [(c[i], c[j]) for i in range(len(c)) for j in range(i + 1, len(c))]


def params_key(max_tokens: int | None, temperature: float | None) -> str:
    """What an answer was asked with, as the answer cache keys it."""
    payload = {"max_tokens": max_tokens, "temperature": temperature}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class ItemResult:
    """One item evaluated: every candidate's answer (and whether it came from the cache), its checks, the
    judges' verdicts."""

    item: EvalItem
    answers: dict[str, AnswerRecord] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    checks: dict[str, list[CheckResult]] = field(default_factory=dict)
    verdicts: list[PairVerdict] = field(default_factory=list)

    def disagreement(self) -> bool:
        """The candidates differ on the item's checks, or its verdicts on a pair are not all the same (judges
        disagree, or a verdict depended on the order)."""
        return disagreement(self.checks, self.verdicts)

    def to_json(self, candidates: Sequence[str]) -> dict[str, Any]:
        answers: dict[str, Any] = {}
        for c in candidates:
            a = self.answers.get(c)
            if a is None:
                continue
            answers[c] = {
                "text": a.text, "error": a.error, "cost_usd": round(a.cost_usd, 10),
                "latency_ms": round(a.latency_ms, 3), "cached": self.cached.get(c, False),
                "checks": [r.to_dict() for r in self.checks.get(c, [])],
                "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
                **({"citations": a.citations} if a.citations else {}),
            }
        verdicts = [{k: v for k, v in dataclasses.asdict(v).items() if k != "item"} for v in self.verdicts]
        return {"id": self.item.id, "question": self.item.question, "reference": self.item.reference,
                "tags": list(self.item.tags), "answers": answers, "verdicts": verdicts,
                "disagreement": self.disagreement()}

    @classmethod
    def from_json(cls, item: EvalItem, data: Mapping[str, Any]) -> ItemResult:
        """Back from :meth:`to_json` (an item an earlier execution of the run finished)."""
        out = cls(item)
        for c, a in (data.get("answers") or {}).items():
            out.answers[c] = AnswerRecord(
                text=a.get("text"), error=a.get("error"), cost_usd=float(a.get("cost_usd") or 0.0),
                latency_ms=float(a.get("latency_ms") or 0.0), citations=list(a.get("citations") or []),
                prompt_tokens=int(a.get("prompt_tokens") or 0), completion_tokens=int(a.get("completion_tokens") or 0))
            out.cached[c] = bool(a.get("cached"))
            out.checks[c] = [CheckResult(r["name"], r["type"], r.get("passed"), r.get("score"), r.get("reason", ""))
                             for r in a.get("checks") or []]
        names = {f.name for f in dataclasses.fields(PairVerdict)}
        out.verdicts = [PairVerdict(**{"item": item.id, **{k: v for k, v in d.items() if k in names}})
                        for d in data.get("verdicts") or []]
        return out
