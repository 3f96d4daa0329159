"""Applying checks to an answer: :func:`run_checks` gives one :class:`CheckResult` per check.

A result is passed (True), failed (False) or unknown (None: it could not be evaluated — no reference to
compare with, no judge, a judge that failed or whose reply could not be read twice). The checks of a list run
one after the other, and ``all`` / ``any`` stop at the first failure / success, so a rubric that cannot change
the outcome is not paid for. A candidate that gave no answer fails every check, and nothing is asked.

What the checks need from outside comes through a :class:`CheckEnv`: ``similarity`` (the runner binds the
local embedder; :class:`EmbeddingEnv` does that) and ``ask`` (a judge model's reply; the runner routes it
through the run, so it is budgeted, recorded and replayed on resumption). A budget refusal of ``ask`` is
raised, so the evaluation stops; any other error of the judge makes that rubric unknown.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ThinktankError
from ..types import Message
from .answer_text import NoJSON, answer_json, citation_markers, last_number
from .check_types import (
    AllCheck,
    AnyCheck,
    Check,
    CheckList,
    CitationsCheck,
    ContainsCheck,
    CostCheck,
    IsJsonCheck,
    JsonSchemaCheck,
    LatencyCheck,
    NotCheck,
    NotContainsCheck,
    NumericCheck,
    RegexCheck,
    RubricCheck,
    SimilarCheck,
    judges_named,
    needs_judge,
)
from .patterns import REGEX_TIMEOUT, Deadline, PatternTimeout, search
from .rubric import RETRY_HINT, RubricParseError, parse_rubric_reply, rubric_messages
from .schemas import schema_errors

if TYPE_CHECKING:
    from ..knowledge.embeddings import Embedder
    from .dataset import EvalItem

__all__ = [
    "AnswerRecord",
    "Ask",
    "Check",
    "CheckEnv",
    "CheckList",
    "CheckResult",
    "EmbeddingEnv",
    "judges_named",
    "needs_judge",
    "run_checks",
]

Ask = Callable[[str, list[Message]], Awaitable[str]]
"""(judge model, messages) → the judge's reply text; raises ThinktankError when the call fails."""


@dataclass(frozen=True)
class AnswerRecord:
    """What a candidate answered to an item."""

    text: str | None
    """None when it failed."""
    error: str | None
    cost_usd: float
    latency_ms: float
    citations: list[Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class CheckResult:
    name: str
    type: str
    passed: bool | None
    """None: could not be evaluated (counted apart from passed and failed)."""
    score: float | None
    """The measured quantity, where there is one: the cosine (similar), the number found (numeric), the
    citations counted, the cost in USD, the latency in ms."""
    reason: str
    """Short and human-readable."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "passed": self.passed, "score": self.score,
                "reason": self.reason}


class CheckEnv(Protocol):
    async def similarity(self, a: str, b: str) -> float:
        """The cosine of the two texts' embeddings, in [-1, 1]."""
        ...

    @property
    def ask(self) -> Ask: ...


@dataclass(frozen=True)
class EmbeddingEnv:
    """A :class:`CheckEnv` whose similarity is the cosine of an embedder's vectors."""

    embedder: Embedder
    ask: Ask

    async def similarity(self, a: str, b: str) -> float:
        import numpy as np

        vectors = await self.embedder.embed([a, b])
        first, second = np.asarray(vectors[0], dtype=np.float64), np.asarray(vectors[1], dtype=np.float64)
        norms = float(np.linalg.norm(first) * np.linalg.norm(second))
        if norms == 0.0:
            return 0.0
        return max(-1.0, min(1.0, float(first @ second) / norms))


@dataclass(frozen=True)
class _Context:
    item: EvalItem
    answer: AnswerRecord
    text: str
    env: CheckEnv
    default_judge: str | None


def _result(check: Check, passed: bool | None, reason: str, score: float | None = None) -> CheckResult:
    return CheckResult(check.label, check.type, passed, score, reason)


def _quote(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def run_checks(checks: Sequence[Check], item: EvalItem, answer: AnswerRecord, env: CheckEnv, *,
                     default_judge: str | None) -> list[CheckResult]:
    """One result per check of ``checks``, in order. ``default_judge`` judges rubrics that name no judge."""
    if answer.text is None:
        why = f"no answer: {answer.error or 'the candidate failed'}"
        return [_result(check, False, why) for check in checks]
    ctx = _Context(item, answer, answer.text, env, default_judge)
    return [await _run(check, ctx) for check in checks]


async def _run(check: Check, ctx: _Context) -> CheckResult:
    text = ctx.text
    if isinstance(check, ContainsCheck | NotContainsCheck):
        found = check.value in text if check.case_sensitive else check.value.casefold() in text.casefold()
        wanted = isinstance(check, ContainsCheck)
        return _result(check, found == wanted, "found" if found else "not found")
    if isinstance(check, RegexCheck):
        return await _regex(check, text)
    if isinstance(check, IsJsonCheck):
        try:
            answer_json(text)
        except NoJSON as exc:
            return _result(check, False, _quote(str(exc)))
        return _result(check, True, "valid JSON")
    if isinstance(check, JsonSchemaCheck):
        return await _json_schema(check, text)
    if isinstance(check, NumericCheck):
        return _numeric(check, text)
    if isinstance(check, SimilarCheck):
        return await _similar(check, ctx)
    if isinstance(check, CitationsCheck):
        count = max(len(ctx.answer.citations), len(citation_markers(text)))
        return _result(check, count >= check.min, f"{count} citation{'' if count == 1 else 's'}", float(count))
    if isinstance(check, CostCheck):
        cost = ctx.answer.cost_usd
        ok = cost <= check.max_usd
        return _result(check, ok, f"${cost:.6g} {'≤' if ok else '>'} ${check.max_usd:g}", cost)
    if isinstance(check, LatencyCheck):
        latency = ctx.answer.latency_ms
        ok = latency <= check.max_ms
        return _result(check, ok, f"{latency:.1f} ms {'≤' if ok else '>'} {check.max_ms:g} ms", latency)
    if isinstance(check, RubricCheck):
        return await _rubric(check, ctx)
    if isinstance(check, AllCheck | AnyCheck):
        return await _all_or_any(check, ctx)
    if isinstance(check, NotCheck):
        inner = await _run(check.check, ctx)
        if inner.passed is None:
            return _result(check, None, f"{inner.name}: {inner.reason}")
        return _result(check, not inner.passed,
                       f"{inner.name} {'passed' if inner.passed else 'failed'}: {inner.reason}")
    raise AssertionError(f"unhandled check type {check.type}")


async def _regex(check: RegexCheck, text: str) -> CheckResult:
    try:
        match = await asyncio.to_thread(search, check.pattern, text, Deadline(REGEX_TIMEOUT))
    except PatternTimeout:
        return _result(check, False, f"matching took longer than {REGEX_TIMEOUT:g} s (a pattern that backtracks "
                                     "catastrophically?)")
    except ValueError as exc:
        return _result(check, None, str(exc))
    if match is None:
        return _result(check, False, "no match")
    return _result(check, True, f"matched {_quote(match.group(0), 60)!r}")


async def _json_schema(check: JsonSchemaCheck, text: str) -> CheckResult:
    try:
        value = answer_json(text)
    except NoJSON as exc:
        return _result(check, False, _quote(str(exc)))
    try:
        error = await asyncio.to_thread(schema_errors, check.schema_, value, Deadline(REGEX_TIMEOUT))
    except PatternTimeout:
        return _result(check, False, f"the schema's patterns took longer than {REGEX_TIMEOUT:g} s on this answer")
    except RecursionError:
        return _result(check, False, "the answer's JSON nests too deep to validate")
    except Exception as exc:  # the schema engine's own errors (an unresolvable reference): the check cannot apply
        return _result(check, None, f"the schema could not be applied: {_quote(str(exc))}")
    if error is None:
        return _result(check, True, "valid")
    return _result(check, False, _quote(error, 200))


def _numeric(check: NumericCheck, text: str) -> CheckResult:
    found = last_number(text)
    if found is None:
        return _result(check, False, "no number in the answer")
    allowed = check.allowed()
    ok = abs(found - check.value) <= allowed or math.isclose(found, check.value, rel_tol=1e-12)
    expected = f"{check.value:g}" + (f" ± {allowed:g}" if allowed else "")
    return _result(check, ok, f"found {found:g}, expected {expected}", found)


async def _similar(check: SimilarCheck, ctx: _Context) -> CheckResult:
    reference = check.value if check.value is not None else ctx.item.reference
    if reference is None:
        return _result(check, None, "no reference to compare with")
    if not ctx.text.strip():
        return _result(check, False, "the answer is empty", 0.0)
    try:
        cosine = await ctx.env.similarity(ctx.text, reference)
    except Exception as exc:  # the embedder's failure (a missing model, a runtime error): the check cannot apply
        message = exc.message if isinstance(exc, ThinktankError) else str(exc) or type(exc).__name__
        return _result(check, None, f"similarity could not be computed: {_quote(message)}")
    if not math.isfinite(cosine):
        return _result(check, None, "similarity could not be computed")
    ok = cosine >= check.threshold
    return _result(check, ok, f"cosine {cosine:.3f} {'≥' if ok else '<'} {check.threshold:g}", cosine)


async def _rubric(check: RubricCheck, ctx: _Context) -> CheckResult:
    judge = check.judge or ctx.default_judge
    if judge is None:
        return _result(check, None, "no judge for the rubric: name one, or give the evaluation a judge")
    messages = rubric_messages(ctx.item.question, ctx.text, ctx.item.reference, check.criterion)
    for attempt in range(2):
        try:
            reply = await ctx.env.ask(judge, messages)
        except ThinktankError as exc:
            from ..accounts.budgets import BudgetExceededError  # here: it imports the store (SQLAlchemy)

            if isinstance(exc, BudgetExceededError):
                raise
            return _result(check, None, f"judge {judge} failed: {_quote(exc.message)}")
        try:
            verdict = parse_rubric_reply(reply)
        except RubricParseError as exc:
            if attempt == 1:
                return _result(check, None, f"judge {judge}'s reply could not be read twice ({exc})")
            messages = [*messages, Message(role="assistant", content=reply),
                        Message(role="user", content=f"{RETRY_HINT} ({exc})")]
            continue
        return _result(check, verdict.passed, verdict.reason)
    raise AssertionError("unreachable")


async def _all_or_any(check: AllCheck | AnyCheck, ctx: _Context) -> CheckResult:
    """``all``: every child passes (stops at the first failure); ``any``: one passes (stops at the first)."""
    every = isinstance(check, AllCheck)
    results: list[CheckResult] = []
    for child in check.checks:
        result = await _run(child, ctx)
        results.append(result)
        if result.passed is (not every):  # all: a failure decides; any: a success does
            return _result(check, result.passed, f"{result.name}: {result.reason}")
    unknown = [r for r in results if r.passed is None]
    if unknown:
        return _result(check, None, f"unknown: {unknown[0].name}: {unknown[0].reason}")
    total = len(check.checks)
    return _result(check, every, f"all {total} passed" if every else f"none of {total} passed")
