"""The evaluation runner: every candidate answers every item, the answers are checked, the judges compare them
pair by pair, and a summary says who did better (:func:`.stats.summarize`).

It is the runner of a run of kind ``evaluation`` (:mod:`thinktank.deliberation.service`): every model call goes
through :meth:`LiveRun.call` (stages ``answer``, ``check``, ``judge``), so the run's ``max_cost_usd``, the caller's
budgets, cost accounting, tracing and the replay of finished calls apply as for any run. At most ``concurrency``
calls are under way at once, and as many items.

A finished item goes to the run's record as an ``eval_item`` event (its whole result): an evaluation taken up
again after its process died rebuilds its finished items from those events and does not ask them again; the
calls the unfinished items had finished are answered from their records (:mod:`thinktank.deliberation.replay`).

Answers are also kept in the answer cache (``eval_answers``, per user, candidate, question and parameters): an
answer found there, or in the evaluation this one re-judges (``rejudge_of``), is not asked again; it is marked
``cached`` and keeps the cost and latency it had when it was asked (what the candidate costs), while the run's
own cost is what it paid.

A candidate that fails on an item is that item's error (its checks fail, its pairs are won by walkover); a budget
refusal stops the evaluation (``budget_exceeded``) and a cancel stops it too, each keeping the items finished so
far as the partial result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..accounts.budgets import BudgetExceededError
from ..deliberation.runs import LiveRun
from ..errors import ThinktankError
from ..types import Message
from .checks import AnswerRecord, Check, CheckList, CheckResult, run_checks
from .dataset import EvalItem
from .pairwise import PairVerdict, judge_pair
from .plan import EvalPlan, ItemResult, params_key
from .stats import summarize
from .store import CachedAnswer, EvalStore, KeptAnswer

__all__ = ["ANSWER_TIMEOUT", "JUDGE_TIMEOUT", "EvalRunner", "Similarity"]

log = logging.getLogger("thinktank.evals")

T = TypeVar("T")

ANSWER_TIMEOUT = 600.0
"""Seconds a candidate may take for one answer (an ensemble or a debate takes a while)."""
JUDGE_TIMEOUT = 120.0
"""Seconds a judge may take for one verdict (a pair's order, a rubric)."""
PARTIAL_ROUNDS = 200
"""Bootstrap rounds of a partial result's summary (while it runs, or when it stopped early)."""
FINAL_ROUNDS = 1000
_SUMMARY_PAUSE = 4.0
"""After a partial summary that took t seconds, the next waits this many times t."""
_KEEP_BATCH = 200
_KEEP_EVERY = 1.0
"""Answers are written to the answer cache in batches: this many, or this many seconds after the last batch."""

Similarity = Callable[[str, str], Awaitable[float]]
"""The cosine of two texts' embeddings (the local model)."""


@dataclass
class _Env:
    """What the checks use: the local embeddings, and a judge to ask (a ``check`` call of the run)."""

    similar: Similarity
    ask: Callable[[str, list[Message]], Awaitable[str]]

    async def similarity(self, a: str, b: str) -> float:
        return await self.similar(a, b)


class EvalRunner:
    def __init__(self, run: LiveRun, plan: EvalPlan, items: Sequence[EvalItem], store: EvalStore,
                 similarity: Similarity, *, seeds: Callable[[], Awaitable[Mapping[tuple[str, str], AnswerRecord]]]
                 | None = None) -> None:
        """``seeds``: the answers of the evaluation this one re-judges, by (candidate, item key), loaded when it
        starts."""
        self.run = run
        self.plan = plan
        self.items = list(items)
        self.store = store
        self._seeds_of = seeds
        self._seeds: Mapping[tuple[str, str], AnswerRecord] = {}
        self._similarity = similarity
        self._checks: list[Check] = CheckList.validate_python(plan.checks)
        self._params = params_key(plan.max_tokens, plan.temperature)
        self._calls = asyncio.Semaphore(plan.concurrency)
        self._done: dict[str, ItemResult] = {}
        self._json: dict[str, dict[str, Any]] = {}
        """Each finished item's result as JSON, by item id."""
        self._refused: BudgetExceededError | None = None
        self._stale = False
        self._cache: Mapping[tuple[str, str], CachedAnswer] = {}
        self._unkept: list[KeptAnswer] = []
        self._kept_at = run.clock.monotonic()
        self._keys: dict[str, str] = {}
        self._summarizer: asyncio.Task[None] | None = None
        self._env = _Env(similarity, self._ask_check)

    # -- the whole run ---------------------------------------------------------------------------
    async def __call__(self) -> dict[str, Any]:
        run, plan = self.run, self.plan
        if run.state is None:
            run.state = {}  # (the citations of its grounded candidates' calls go on its checkpoint, for a replay)
        self._restore()
        if not any(e.type == "eval_started" for e in run.events):
            run.emit("eval_started", items=len(self.items), candidates=plan.candidates, judges=plan.judges)
        if self._seeds_of is not None:
            self._seeds = await self._seeds_of()
        left = [item for item in self.items if item.id not in self._done]
        wanted = {(c, self._key(item)) for item in left for c in plan.candidates} - set(self._seeds)
        self._cache = await self.store.cached(run.user_id, self._params, wanted)
        todo = iter(left)
        self._publish()
        try:
            await _all([self._worker(todo) for _ in range(min(plan.concurrency, len(self.items)) or 1)])
        except (BudgetExceededError, asyncio.CancelledError):
            # What finished is kept: the run's result when it stops here (budget_exceeded, cancelled).
            await self._stop_summarizer()
            await asyncio.shield(self._keep_answers())
            run.partial = await self._result(PARTIAL_ROUNDS)
            raise
        finally:
            await self._stop_summarizer()
        await self._keep_answers()
        return await self._result(FINAL_ROUNDS)

    async def _worker(self, todo: Any) -> None:
        for item in todo:
            result = await self._item(item)
            self._done[item.id] = result
            self._json[item.id] = data = result.to_json(self.plan.candidates)
            self.run.emit("eval_item", **data)
            self.run.emit("eval_progress", done=len(self._done), total=len(self.items),
                          cost_usd=round(self.run.cost, 10))
            self._publish()

    def _restore(self) -> None:
        """The items an earlier execution finished (taken up after its process died): from their events."""
        by_id = {item.id: item for item in self.items}
        for event in self.run.events:
            if event.type == "eval_item":
                item = by_id.get(str(event.data.get("id")))
                if item is not None:
                    self._done[item.id] = ItemResult.from_json(item, event.data)
                    self._json[item.id] = dict(event.data)

    # -- one item --------------------------------------------------------------------------------
    async def _item(self, item: EvalItem) -> ItemResult:
        plan, result = self.plan, ItemResult(item)
        answered = await _all([self._answer(item, c) for c in plan.candidates])
        for c, (record, cached) in zip(plan.candidates, answered, strict=True):
            result.answers[c], result.cached[c] = record, cached
        checks: list[Check] = [*item.checks, *self._checks]
        default_judge = plan.judges[0] if plan.judges else None
        checked = await _all([self._check(checks, item, result.answers[c], default_judge) for c in plan.candidates])
        for c, results in zip(plan.candidates, checked, strict=True):
            result.checks[c] = results
            self.run.emit("eval_checked", item=item.id, candidate=c, total=len(results),
                          passed=sum(1 for r in results if r.passed is True))
        jobs = [(judge, a, b) for judge in plan.judges for a, b in plan.pairs()]
        verdicts = await _all([self._judge(item, judge, a, b, result.answers) for judge, a, b in jobs])
        for v in verdicts:
            self.run.emit("eval_judged", item=item.id, a=v.a, b=v.b, judge=v.judge, outcome=v.outcome)
        result.verdicts = list(verdicts)
        return result

    async def _answer(self, item: EvalItem, candidate: str) -> tuple[AnswerRecord, bool]:
        """The candidate's answer to the item: re-judged, cached, or asked now (a failure is an answer too)."""
        key = self._key(item)
        record, cached = self._seeds.get((candidate, key)), True
        if record is None:
            hit = self._cache.get((candidate, key))
            if hit is not None:
                record = AnswerRecord(hit.text, None, hit.cost_usd, hit.latency_ms, hit.citations,
                                      hit.prompt_tokens, hit.completion_tokens)
                # This run's own answer, asked before it was taken up again, was paid by this run.
                cached = hit.run_id != self.run.id
        if record is None:
            record, cached = await self._ask_candidate(item, candidate, key), False
        self.run.emit("eval_answer", item=item.id, candidate=candidate, ok=record.text is not None,
                      cost_usd=round(record.cost_usd, 10), latency_ms=round(record.latency_ms, 3), cached=cached)
        return record, cached

    async def _ask_candidate(self, item: EvalItem, candidate: str, key: str) -> AnswerRecord:
        plan = self.plan
        try:
            async with self._calls:
                reply = await self.run.call("answer", "candidate", candidate, list(item.messages),
                                            timeout=ANSWER_TIMEOUT, max_tokens=plan.max_tokens,
                                            temperature=plan.temperature, announce=False)
        except BudgetExceededError:
            raise
        except ThinktankError as exc:
            return AnswerRecord(None, exc.message, 0.0, 0.0, [])
        if not reply.text.strip():
            record = AnswerRecord(None, "the answer was empty", reply.cost, reply.latency * 1000, [],
                                  reply.prompt_tokens, reply.completion_tokens)
        else:
            record = AnswerRecord(reply.text, None, reply.cost, round(reply.latency * 1000, 3),
                                  list(reply.citations or []), reply.prompt_tokens, reply.completion_tokens)
        self._unkept.append(KeptAnswer(
            self.run.user_id, candidate, key, self._params, text=record.text, error=record.error,
            cost_usd=record.cost_usd, latency_ms=record.latency_ms, citations=record.citations,
            prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens, run_id=self.run.id))
        if len(self._unkept) >= _KEEP_BATCH or self.run.clock.monotonic() - self._kept_at >= _KEEP_EVERY:
            await self._keep_answers()
        return record

    async def _keep_answers(self) -> None:
        """Write the answers asked since the last time to the answer cache (in one transaction)."""
        rows, self._unkept = self._unkept, []
        self._kept_at = self.run.clock.monotonic()
        try:
            await self.store.keep(rows)
        except Exception:  # the cache is a saving, not a part of the result (a run taken up replays its calls)
            log.warning("keeping %d answers in the answer cache failed", len(rows), exc_info=True)

    def _key(self, item: EvalItem) -> str:
        key = self._keys.get(item.id)
        if key is None:
            key = self._keys[item.id] = item.key()
        return key

    async def _check(self, checks: list[Check], item: EvalItem, answer: AnswerRecord,
                     default_judge: str | None) -> list[CheckResult]:
        results = await run_checks(checks, item, answer, self._env, default_judge=default_judge)
        self._raise_refusal()
        return list(results)

    async def _judge(self, item: EvalItem, judge: str, a: str, b: str, answers: Mapping[str, AnswerRecord]
                     ) -> PairVerdict:
        verdict = await judge_pair(self._ask_judge, judge, item, a, answers[a].text, b, answers[b].text)
        self._raise_refusal()
        return verdict

    # -- the judges' calls -----------------------------------------------------------------------
    async def _ask_check(self, model: str, messages: list[Message]) -> str:
        return await self._ask("check", "rubric", model, messages)

    async def _ask_judge(self, model: str, messages: list[Message]) -> str:
        return await self._ask("judge", "judge", model, messages)

    async def _ask(self, stage: str, role: str, model: str, messages: list[Message]) -> str:
        try:
            async with self._calls:
                reply = await self.run.call(stage, role, model, messages, timeout=JUDGE_TIMEOUT, announce=False)
        except BudgetExceededError as exc:
            self._refused = self._refused or exc  # raised again after the check (which may catch it)
            raise
        return reply.text

    def _raise_refusal(self) -> None:
        if self._refused is not None:
            raise self._refused

    # -- the result ------------------------------------------------------------------------------
    def _items_json(self) -> list[dict[str, Any]]:
        """The finished items' JSON, in the dataset's order (each made once)."""
        return [self._json[item.id] for item in self.items if item.id in self._json]

    def _ordered(self) -> list[ItemResult]:
        return [self._done[item.id] for item in self.items if item.id in self._done]

    def _publish(self) -> None:
        """The items finished so far as the run's partial result (what ``GET`` shows while it runs); their summary
        is made again in the background (a thread), so it may lag them by the time one summary takes."""
        self.run.partial = {"summary": self.run.partial.get("summary"),
                            "items": self._items_json(),
                            "total_items": len(self.items)}
        if not self._done:
            return
        self._stale = True
        if self._summarizer is None or self._summarizer.done():
            self._summarizer = asyncio.get_running_loop().create_task(self._summarize())

    async def _summarize(self) -> None:
        clock = self.run.clock
        while self._stale:
            self._stale = False
            started = clock.monotonic()
            summary = await asyncio.to_thread(self._summary, self._ordered(), PARTIAL_ROUNDS)
            self.run.partial = {**self.run.partial, "summary": summary}
            # At most a fifth of the time goes to partial summaries (a large evaluation's take a while).
            await clock.sleep(_SUMMARY_PAUSE * (clock.monotonic() - started))

    async def _stop_summarizer(self) -> None:
        task, self._summarizer = self._summarizer, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _result(self, rounds: int) -> dict[str, Any]:
        done = self._ordered()
        summary = await asyncio.to_thread(self._summary, done, rounds)
        return {"summary": summary, "items": self._items_json(),
                "total_items": len(self.items)}

    def _summary(self, done: Sequence[ItemResult], rounds: int) -> dict[str, Any]:
        plan = self.plan
        answers = {(r.item.id, c): a for r in done for c, a in r.answers.items()}
        checks = {(r.item.id, c): results for r in done for c, results in r.checks.items()}
        verdicts = [v for r in done for v in r.verdicts]
        return summarize([r.item for r in done], plan.candidates, plan.judges, answers, checks, verdicts,
                         rng=random.Random(plan.seed), rounds=rounds)


async def _all(jobs: Sequence[Awaitable[T]]) -> list[T]:
    """Every job at once; the first error (a budget refusal, a cancel) stops the others and is raised."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_coro(job)) for job in jobs]
    except BaseExceptionGroup as eg:
        first: BaseException = eg
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]


async def _coro(job: Awaitable[T]) -> T:
    return await job
