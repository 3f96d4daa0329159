"""EnsembleRunner on the real path: LiveRun -> real Router -> mock deployments (and their recorded requests)."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from thinktank.accounts.budgets import BudgetExceededError
from thinktank.clock import SystemClock
from thinktank.config import EnsembleConfig
from thinktank.deliberation.ensemble import EnsembleRunner
from thinktank.deliberation.run_cap import RunCap
from thinktank.deliberation.runs import LiveRun
from thinktank.errors import RunFailedError
from thinktank.gateway.router import Router
from thinktank.providers._http import HttpClient
from thinktank.providers.base import ProviderContext
from thinktank.types import Message

from ..fakes import openai as oa
from ..fakes.clock import FakeClock
from ..fakes.upstream import FakeUpstream, Reply
from .conftest import make_router, make_run, mock, of_type, prompt_of, requests_of, rule, user

Q = "What is the capital of France?"
ALPHA = "alpha: Paris is the capital."  # 5 words
BETA = "beta: the capital of France is Paris, the seat of its government."  # 12 words
GAMMA = "gamma: Paris."  # 2 words
TEXTS = {"A": ALPHA, "B": BETA, "C": GAMMA}
FAIL = {"fail_first": 1000, "fail_status": 500}
FAIL_MESSAGE = "answered 500: mock failure (failure injection)"


def ens(**kw: Any) -> EnsembleConfig:
    return EnsembleConfig.model_validate({"name": "t", "members": ["m1", "m2", "m3"], **kw})


def three(extra: dict[str, dict[str, Any]] | None = None, *more: dict[str, Any]) -> list[dict[str, Any]]:
    """m1/m2/m3 answering ALPHA/BETA/GAMMA; ``extra`` adds options per member."""
    extra = extra or {}
    return [mock(name, replies=[text], **extra.get(name, {}))
            for name, text in (("m1", ALPHA), ("m2", BETA), ("m3", GAMMA))] + list(more)


def runner(run: LiveRun, cfg: EnsembleConfig, seed: int = 0, messages: list[Message] | None = None) -> EnsembleRunner:
    return EnsembleRunner(run, cfg, messages or user(Q), random.Random(seed))


def prefers(first: str) -> list[dict[str, Any]]:
    """Reviewer rules for a review of two answers: rank the one that starts with ``first`` first, whichever
    anonymous label it was given."""
    return [
        rule(rf"Response A:\s*<<<\s*{first}", "A is better.\nFINAL RANKING:\n1. Response A\n2. Response B"),
        rule(rf"Response B:\s*<<<\s*{first}", "B is better.\nFINAL RANKING:\n1. Response B\n2. Response A"),
    ]


def shown_order(prompt: str, texts: dict[str, str]) -> list[str]:
    """The public labels of the answers shown in ``prompt``, in the order shown."""
    found = [(prompt.index(text), label) for label, text in texts.items() if text in prompt]
    return [label for _, label in sorted(found)]


# --------------------------------------------------------------------------------------------------------------
# 1. fan-out
# --------------------------------------------------------------------------------------------------------------


async def test_fan_out_every_member_answers_concurrently(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, [mock("m1", replies=[ALPHA], latency=0.1), mock("m2", replies=[BETA], latency=0.3),
                               mock("m3", replies=[GAMMA], latency=0.2)])
    run = make_run(router, clock)
    answers, failed = await runner(run, ens(strategy="heuristic")).answer()
    assert [(a.label, a.model, a.text) for a in answers] == [("A", "m1", ALPHA), ("B", "m2", BETA), ("C", "m3", GAMMA)]
    assert failed == []
    assert sorted(clock.sleeps) == [0.1, 0.2, 0.3]
    for name in ("m1", "m2", "m3"):
        [request] = requests_of(router, name)
        assert [m.model_dump(exclude_none=True) for m in request.messages] == [{"role": "user", "content": Q}]
    # Concurrent: every call had started (on the fake clock) before the first answer came back.
    assert [(c.stage, c.role, c.model, c.answer) for c in run.calls] == [
        ("answer", "member A", "m1", ALPHA), ("answer", "member B", "m2", BETA), ("answer", "member C", "m3", GAMMA)]
    first_answer = min(e.ts for e in of_type(run, "model_answered"))
    assert max(c.ts for c in run.calls) < first_answer
    assert [a["text"] for a in run.partial["answers"]] == [ALPHA, BETA, GAMMA]
    assert run.partial["failed"] == []


async def test_a_failing_member_is_reported_and_the_others_ranked(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, three({"m2": FAIL}))
    run = make_run(router, clock)
    result = await runner(run, ens(strategy="heuristic"))()
    assert result["failed"] == [{"label": "B", "model": "m2", "error": f"upstream m2 {FAIL_MESSAGE}", "status": 502}]
    assert [a["label"] for a in result["answers"]] == ["A", "C"]
    assert result["ranking"]["order"] == ["A", "C"]  # ALPHA is longer than GAMMA
    assert result["answer"] == ALPHA
    assert len(requests_of(router, "m2")) == 1  # num_retries 0: one try
    [failed_event] = of_type(run, "model_failed")
    assert failed_event.data == {"stage": "answer", "role": "member B", "model": "m2",
                                 "error": f"upstream m2 {FAIL_MESSAGE}", "status": 502}
    record = run.calls[1]
    assert (record.model, record.answer, record.error) == ("m2", None, f"upstream m2 {FAIL_MESSAGE}")


async def test_every_member_failing_raises_naming_each_reason(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, [mock("m1", **FAIL), mock("m2", fail_first=1000, fail_status=503),
                               mock("m3", replies=["   "])])
    run = make_run(router, clock)
    with pytest.raises(RunFailedError) as info:
        await runner(run, ens(strategy="heuristic"))()
    assert info.value.message == (
        "Every member of the ensemble failed (m1: upstream m1 answered 500: mock failure (failure injection); "
        "m2: upstream m2 answered 503: mock failure (failure injection); m3: the answer was empty)."
    )
    assert run.partial["answers"] == []
    assert [f["model"] for f in run.partial["failed"]] == ["m1", "m2", "m3"]
    assert not of_type(run, "ranking")


async def test_an_empty_answer_counts_as_a_failure(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, [mock("m1", replies=[ALPHA]), mock("m2", replies=[""]), mock("m3", replies=[GAMMA])])
    answers, failed = await runner(make_run(router, clock), ens(strategy="heuristic")).answer()
    assert [a.label for a in answers] == ["A", "C"]
    assert failed == [{"label": "B", "model": "m2", "error": "the answer was empty", "status": 502}]


async def test_a_member_past_its_timeout_fails_and_the_others_answer(http: HttpClient) -> None:
    """Real time (small values): member_timeout bounds each member's call."""
    real = SystemClock()
    router = make_router(ProviderContext(http=http, clock=real),
                         [mock("m1", replies=[ALPHA]), mock("m2", replies=[BETA], latency=30.0),
                          mock("m3", replies=[GAMMA])])
    run = make_run(router, real)
    answers, failed = await runner(run, ens(strategy="heuristic", member_timeout=0.05)).answer()
    assert [a.model for a in answers] == ["m1", "m3"]
    assert failed == [{"label": "B", "model": "m2", "error": "m2 gave no answer within 0.05 s", "status": 504}]
    assert run.calls[1].error == "m2 gave no answer within 0.05 s"


# --------------------------------------------------------------------------------------------------------------
# 2. ranking: heuristic
# --------------------------------------------------------------------------------------------------------------


async def test_heuristic_prefers_a_structured_answer_with_code_for_a_code_question(
    ctx: ProviderContext, clock: FakeClock,
) -> None:
    structured = (
        "## Reversing a list\n\nUse slicing, which returns a new list:\n\n```python\ndef reverse(xs):\n"
        "    return xs[::-1]\n```\n\n- `xs[::-1]` copies the list\n- `xs.reverse()` reverses it in place\n"
    )
    router = make_router(ctx, [mock("m1", replies=["Use reversed()."]), mock("m2", replies=[structured])])
    run = make_run(router, clock)
    cfg = EnsembleConfig.model_validate({"name": "t", "members": ["m1", "m2"], "strategy": "heuristic"})
    result = await runner(run, cfg, messages=user("Write a Python function that reverses a list."))()
    ranking = result["ranking"]
    assert ranking["order"] == ["B", "A"]
    assert ranking["features"]["B"]["code"] == 1.0
    assert ranking["features"]["A"]["code"] == 0.0
    assert ranking["features"]["B"]["structure"] == 1.0
    assert ranking["scores"]["B"] > ranking["scores"]["A"]
    assert result["answer"] == structured
    assert result["synthesis"] == {"method": "best", "from": "B"}


# --------------------------------------------------------------------------------------------------------------
# 2. ranking: peer review
# --------------------------------------------------------------------------------------------------------------


def reviewers(m1: list[dict[str, Any]], m2: list[dict[str, Any]], m3: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [mock("m1", replies=[ALPHA], rules=m1), mock("m2", replies=[BETA], rules=m2),
            mock("m3", replies=[GAMMA], rules=m3)]


async def test_peer_review_borda_matches_a_hand_computation(ctx: ProviderContext, clock: FakeClock) -> None:
    # m1 (A) sees B, C and prefers beta; m2 (B) sees A, C and prefers gamma; m3 (C) sees A, B and prefers beta.
    router = make_router(ctx, reviewers(prefers("beta"), prefers("gamma"), prefers("beta")))
    run = make_run(router, clock)
    result = await runner(run, ens(strategy="peer_review"), seed=3)()
    ranking = result["ranking"]
    assert ranking["rankings"] == {"A": ["B", "C"], "B": ["C", "A"], "C": ["B", "A"]}
    # Normalised Borda over 2-item rankings: first 1, last 0, mean over the rankings an answer appears in.
    # A: (0 + 0) / 2 = 0; B: (1 + 1) / 2 = 1; C: (0 + 1) / 2 = 0.5.
    assert ranking["scores"] == {"A": 0.0, "B": 1.0, "C": 0.5}
    assert ranking["order"] == ["B", "C", "A"]
    assert ranking["excluded"] == []
    # No two reviewers ranked two answers in common, so agreement is each reviewer's with the consensus order:
    # B>C, C>A and B>A all agree with B, C, A.
    assert (ranking["agreement"], ranking["agreement_method"]) == (1.0, "with the consensus")
    assert result["answer"] == BETA
    assert [e.data for e in of_type(run, "review")] == [
        {"reviewer": "A", "ranking": ["B", "C"]}, {"reviewer": "B", "ranking": ["C", "A"]},
        {"reviewer": "C", "ranking": ["B", "A"]}]
    assert of_type(run, "ranking")[0].data == {"strategy": "peer_review", "order": ["B", "C", "A"],
                                               "scores": {"A": 0.0, "B": 1.0, "C": 0.5}, "agreement": 1.0,
                                               "excluded": 0}


async def test_peer_review_bradley_terry_on_the_same_reviews(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, reviewers(prefers("beta"), prefers("gamma"), prefers("beta")))
    result = await runner(make_run(router, clock), ens(strategy="peer_review", aggregate="bradley_terry"))()
    scores = result["ranking"]["scores"]
    # Comparisons B>C, C>A, B>A: a strict order B > C > A.
    assert result["ranking"]["order"] == ["B", "C", "A"]
    assert scores["B"] > scores["C"] > scores["A"]
    assert math.prod(scores.values()) == pytest.approx(1.0, rel=1e-5)


async def test_peer_reviewers_see_every_other_answer_and_never_their_own(
    ctx: ProviderContext, clock: FakeClock,
) -> None:
    router = make_router(ctx, reviewers(prefers("beta"), prefers("gamma"), prefers("beta")))
    await runner(make_run(router, clock), ens(strategy="peer_review"))()
    for name, label in (("m1", "A"), ("m2", "B"), ("m3", "C")):
        answer, review = requests_of(router, name)
        assert prompt_of(answer) == Q
        prompt = prompt_of(review)
        assert TEXTS[label] not in prompt
        assert sorted(shown_order(prompt, TEXTS)) == sorted(set(TEXTS) - {label})
        assert "Response A:" in prompt and "Response B:" in prompt and "Response C:" not in prompt
        for model in ("m1", "m2", "m3"):
            assert model not in prompt


async def test_peer_review_orders_are_shuffled_per_reviewer(ctx: ProviderContext, clock: FakeClock) -> None:
    texts = {"A": ALPHA, "B": BETA, "C": GAMMA, "D": "delta: it is Paris, on the Seine."}
    always = [rule("FINAL RANKING", "FINAL RANKING:\n1. Response A\n2. Response B\n3. Response C")]
    seen_orders: set[tuple[str, ...]] = set()
    disagreeing_seed = None
    for seed in range(20):
        router = make_router(ctx, [mock(f"m{i + 1}", replies=[text], rules=always)
                                   for i, text in enumerate(texts.values())])
        cfg = EnsembleConfig.model_validate({"name": "t", "members": ["m1", "m2", "m3", "m4"],
                                             "strategy": "peer_review"})
        await runner(make_run(router, clock), cfg, seed=seed)()
        shown = {label: shown_order(prompt_of(requests_of(router, f"m{i + 1}")[1]), texts)
                 for i, label in enumerate(texts)}
        for label, order in shown.items():
            assert sorted(order) == sorted(set(texts) - {label})
            seen_orders.add(tuple(order))
        # Reviewers A and B are both shown C and D: with independent shuffles, some seed shows them in
        # opposite orders.
        a_cd = [x for x in shown["A"] if x in "CD"]
        b_cd = [x for x in shown["B"] if x in "CD"]
        if a_cd != b_cd and disagreeing_seed is None:
            disagreeing_seed = seed
    assert disagreeing_seed is not None
    assert ("C", "B", "D") in seen_orders or ("D", "C", "B") in seen_orders  # not always the label order


async def test_an_unparseable_reviewer_is_asked_twice_then_excluded(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, reviewers(prefers("beta"), prefers("gamma"), [rule("FINAL RANKING", "I cannot decide.")]))
    run = make_run(router, clock)
    result = await runner(run, ens(strategy="peer_review"))()
    ranking = result["ranking"]
    [excluded] = ranking["excluded"]
    assert excluded["judge"] == "C" and excluded["model"] == "m3"
    assert excluded["reason"].startswith("unparseable reply twice (")
    answer, first, retry = requests_of(router, "m3")
    assert prompt_of(answer) == Q
    assert [m.role for m in retry.messages] == ["system", "user", "assistant", "user"]
    assert retry.messages[:2] == first.messages
    assert retry.messages[2].content == "I cannot decide."
    assert str(retry.messages[3].content).startswith("Your reply could not be read: ")
    assert ranking["rankings"] == {"A": ["B", "C"], "B": ["C", "A"]}
    assert ranking["scores"] == {"A": 0.0, "B": 1.0, "C": 0.5}
    assert {"reviewer": "C", "excluded": True, "reason": excluded["reason"]} in [e.data for e in of_type(run, "review")]
    assert of_type(run, "ranking")[0].data["excluded"] == 1


async def test_a_reviewer_that_answers_properly_on_the_retry_is_included(
    ctx: ProviderContext, clock: FakeClock,
) -> None:
    retry_prefers_beta = [
        rule(r"Response A:\s*<<<\s*beta.*could not be read", "FINAL RANKING:\n1. Response A\n2. Response B"),
        rule(r"Response B:\s*<<<\s*beta.*could not be read", "FINAL RANKING:\n1. Response B\n2. Response A"),
        rule("FINAL RANKING", "I cannot decide."),
    ]
    router = make_router(ctx, reviewers(prefers("beta"), prefers("gamma"), retry_prefers_beta))
    result = await runner(make_run(router, clock), ens(strategy="peer_review"))()
    assert len(requests_of(router, "m3")) == 3  # the answer, the review, the retry
    assert result["ranking"]["excluded"] == []
    assert result["ranking"]["rankings"]["C"] == ["B", "A"]
    assert result["ranking"]["order"] == ["B", "C", "A"]


async def test_every_reviewer_excluded_falls_back_to_the_heuristic(ctx: ProviderContext, clock: FakeClock) -> None:
    garbage = [rule("FINAL RANKING", "no idea")]
    router = make_router(ctx, reviewers(garbage, garbage, garbage))
    result = await runner(make_run(router, clock), ens(strategy="peer_review"))()
    ranking = result["ranking"]
    assert ranking["fallback"] == "heuristic"
    assert ranking["fallback_reason"] == "no judge reply could be used"
    assert ranking["order"] == ["B", "A", "C"]  # by length
    assert [x["judge"] for x in ranking["excluded"]] == ["A", "B", "C"]


async def test_peer_review_of_two_answers_does_not_invent_a_ranking(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, [mock("m1", replies=[GAMMA], rules=[rule("FINAL RANKING", "FINAL RANKING:\n1. A")]),
                               mock("m2", replies=[BETA], rules=[rule("FINAL RANKING", "FINAL RANKING:\n1. A")])])
    cfg = EnsembleConfig.model_validate({"name": "t", "members": ["m1", "m2"], "strategy": "peer_review"})
    result = await runner(make_run(router, clock), cfg)()
    ranking = result["ranking"]
    # Each reviewer would see one answer: no review is asked for, and the ranking says it fell back.
    assert len(requests_of(router, "m1")) == len(requests_of(router, "m2")) == 1
    assert ranking.get("fallback") == "heuristic"
    assert ranking["fallback_reason"] == "peer review needs at least three answers"
    assert ranking["order"] == ["B", "A"]


# --------------------------------------------------------------------------------------------------------------
# 2. ranking: rubric
# --------------------------------------------------------------------------------------------------------------


def scores(relevance: float, completeness: float, clarity: float, accuracy: float) -> str:
    return "Here is my assessment: " + json.dumps({"relevance": relevance, "completeness": completeness,
                                                   "clarity": clarity, "accuracy": accuracy, "rationale": "ok"})


async def test_rubric_order_follows_the_weighted_scores(ctx: ProviderContext, clock: FakeClock) -> None:
    judge = mock("judge", rules=[rule("alpha", scores(90, 90, 90, 90)), rule("beta", scores(50, 50, 50, 50)),
                                 rule("gamma", scores(60, 80, 70, 70))])
    router = make_router(ctx, three(None, judge))
    run = make_run(router, clock)
    result = await runner(run, ens(strategy="rubric", judge="judge"))()
    ranking = result["ranking"]
    # gamma: 0.3*60 + 0.25*80 + 0.2*70 + 0.25*70 = 69.5
    assert ranking["rubric_scores"] == {"A": 90.0, "B": 50.0, "C": 69.5}
    assert ranking["order"] == ["A", "C", "B"]
    assert ranking["scores"] == {"A": 1.0, "B": 0.0, "C": 0.5}
    assert ranking["criteria_scores"]["C"] == {"judge 1": {"relevance": 60.0, "completeness": 80.0,
                                                           "clarity": 70.0, "accuracy": 70.0}}
    requests = requests_of(router, "judge")
    assert len(requests) == 3
    for request in requests:  # one answer per judgement
        assert len(shown_order(prompt_of(request), TEXTS)) == 1
        assert "m1" not in prompt_of(request)
    assert result["answer"] == ALPHA


@pytest.mark.parametrize(("weights", "order", "rubric"), [
    ({"relevance": 3, "clarity": 1}, ["A", "B"], {"A": 75.0, "B": 25.0}),
    ({"relevance": 1, "clarity": 3}, ["B", "A"], {"A": 25.0, "B": 75.0}),
])
async def test_rubric_weights_decide_when_criteria_disagree(
    ctx: ProviderContext, clock: FakeClock, weights: dict[str, float], order: list[str], rubric: dict[str, float],
) -> None:
    judge = mock("judge", rules=[rule("alpha", scores(100, 50, 0, 50)), rule("beta", scores(0, 50, 100, 50))])
    router = make_router(ctx, [mock("m1", replies=[ALPHA]), mock("m2", replies=[BETA]), judge])
    cfg = EnsembleConfig.model_validate({"name": "t", "members": ["m1", "m2"], "strategy": "rubric",
                                         "judge": "judge", "weights": weights})
    result = await runner(make_run(router, clock), cfg)()
    assert result["ranking"]["order"] == order
    assert result["ranking"]["rubric_scores"] == rubric
    assert result["ranking"]["weights"] == weights


async def test_rubric_judgement_unparseable_twice_is_excluded(ctx: ProviderContext, clock: FakeClock) -> None:
    judge = mock("judge", rules=[rule("alpha", scores(40, 40, 40, 40)), rule("beta", scores(80, 80, 80, 80)),
                                 rule("gamma", "Looks good to me.")])
    router = make_router(ctx, three(None, judge))
    run = make_run(router, clock)
    result = await runner(run, ens(strategy="rubric", judge="judge"))()
    ranking = result["ranking"]
    [excluded] = ranking["excluded"]
    assert {k: v for k, v in excluded.items() if k != "reason"} == {"judge": "judge 1", "model": "judge",
                                                                     "answer": "C"}
    assert excluded["reason"].startswith("unparseable reply twice (")
    assert sum(GAMMA in prompt_of(r) for r in requests_of(router, "judge")) == 2
    assert ranking["rubric_scores"] == {"A": 40.0, "B": 80.0}
    assert ranking["order"].index("B") < ranking["order"].index("A")
    assert "fallback" not in ranking
    assert {"judge": "judge 1", "answer": "C", "excluded": True, "reason": excluded["reason"]} in [
        e.data for e in of_type(run, "review")]


async def test_rubric_with_every_judgement_excluded_falls_back(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, three(None, mock("judge", replies=["I would rather not score."])))
    run = make_run(router, clock)
    result = await runner(run, ens(strategy="rubric", judge="judge"))()
    ranking = result["ranking"]
    assert ranking["fallback"] == "heuristic"
    assert ranking["fallback_reason"] == "no judge reply could be used"
    assert ranking["order"] == ["B", "A", "C"]  # the heuristic's order: by length
    assert len(ranking["excluded"]) == 3
    assert len(requests_of(router, "judge")) == 6
    assert of_type(run, "ranking")[0].data["excluded"] == 3


# --------------------------------------------------------------------------------------------------------------
# 2. ranking: pairwise
# --------------------------------------------------------------------------------------------------------------


async def test_pairwise_judge_that_always_picks_the_first_shown_makes_every_pair_a_tie(
    ctx: ProviderContext, clock: FakeClock,
) -> None:
    router = make_router(ctx, three(None, mock("judge", replies=['Both fine. {"winner": "A"}'])))
    run = make_run(router, clock)
    result = await runner(run, ens(strategy="pairwise", judge="judge"))()
    ranking = result["ranking"]
    assert ranking["position_flips"] == 3
    assert (ranking["consistent"], ranking["inconsistent"]) == (0, 3)
    assert ranking["comparisons"] == [{"a": "A", "b": "B", "outcome": 0.5}, {"a": "A", "b": "C", "outcome": 0.5},
                                      {"a": "B", "b": "C", "outcome": 0.5}]
    assert ranking["scores"] == {"A": 0.5, "B": 0.5, "C": 0.5}
    # Each pair was shown in both orders.
    shown = sorted(tuple(shown_order(prompt_of(r), TEXTS)) for r in requests_of(router, "judge"))
    assert shown == sorted([("A", "B"), ("B", "A"), ("A", "C"), ("C", "A"), ("B", "C"), ("C", "B")])
    assert [e.data["verdicts"] for e in of_type(run, "review")] == [["A", "A"]] * 3


def prefers_beta_pairwise() -> dict[str, Any]:
    return mock("judge", replies=['{"winner": "tie"}'], rules=[
        rule(r"Response A:\s*<<<\s*beta", 'A is more complete.\n{"winner": "A"}'),
        rule(r"Response B:\s*<<<\s*beta", 'B is more complete.\n{"winner": "B"}'),
    ])


async def test_pairwise_consistent_preference_wins_in_both_orders(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, three(None, prefers_beta_pairwise()))
    result = await runner(make_run(router, clock), ens(strategy="pairwise", judge="judge"))()
    ranking = result["ranking"]
    assert ranking["comparisons"] == [{"a": "A", "b": "B", "outcome": 0.0}, {"a": "A", "b": "C", "outcome": 0.5},
                                      {"a": "B", "b": "C", "outcome": 1.0}]
    assert (ranking["position_flips"], ranking["consistent"], ranking["inconsistent"]) == (0, 3, 0)
    assert ranking["scores"] == {"A": 0.25, "B": 1.0, "C": 0.25}
    assert ranking["order"][0] == "B"
    assert result["answer"] == BETA


async def test_pairwise_bradley_terry_gives_the_winner_the_highest_strength(
    ctx: ProviderContext, clock: FakeClock,
) -> None:
    router = make_router(ctx, three(None, prefers_beta_pairwise()))
    result = await runner(make_run(router, clock), ens(strategy="pairwise", judge="judge",
                                                       aggregate="bradley_terry"))()
    ranking = result["ranking"]
    assert ranking["aggregate"] == "bradley_terry"
    assert ranking["order"][0] == "B"
    assert ranking["scores"]["B"] > ranking["scores"]["A"]
    assert ranking["scores"]["A"] == pytest.approx(ranking["scores"]["C"])
    assert math.prod(ranking["scores"].values()) == pytest.approx(1.0, rel=1e-5)


# --------------------------------------------------------------------------------------------------------------
# 3. synthesis
# --------------------------------------------------------------------------------------------------------------

CHAIR = "The capital of France is Paris, its seat of government for centuries."


def named_members(*more: dict[str, Any]) -> list[dict[str, Any]]:
    return [mock("model-north", replies=[ALPHA]), mock("model-south", replies=[BETA]),
            mock("model-east", replies=[GAMMA]), *more]


def named(**kw: Any) -> EnsembleConfig:
    return EnsembleConfig.model_validate({"name": "t", "members": ["model-north", "model-south", "model-east"],
                                          "strategy": "heuristic", **kw})


async def test_chairman_gets_the_top_answers_anonymised_in_ranked_order_and_streams(
    ctx: ProviderContext, clock: FakeClock,
) -> None:
    router = make_router(ctx, named_members(mock("chair", replies=[CHAIR])))
    run = make_run(router, clock)
    messages = [Message(role="system", content="Answer in one sentence."), Message(role="user", content=Q)]
    result = await runner(run, named(chairman="chair", top_k=2), messages=messages)()
    assert result["ranking"]["order"] == ["B", "A", "C"]
    [request] = requests_of(router, "chair")
    assert request.stream is True
    assert request.messages[0] == messages[0]
    prompt = prompt_of(request)
    assert "model-" not in prompt  # no member's name
    assert prompt.index(BETA) < prompt.index(ALPHA)
    assert GAMMA not in prompt  # top_k = 2
    assert "Response 1 (ranked 1 of 3)" in prompt and "Response 2 (ranked 2 of 3)" in prompt
    tokens = [e.data["text"] for e in of_type(run, "synthesis_token")]
    assert len(tokens) > 1
    assert "".join(tokens) == CHAIR == result["answer"]
    assert result["synthesis"] == {"method": "chairman", "model": "chair", "from": ["B", "A"]}


async def test_best_returns_the_top_answer_unchanged(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, named_members(mock("chair", replies=[CHAIR])))
    run = make_run(router, clock)
    result = await runner(run, named(chairman="chair", synthesis="best"))()
    assert result["answer"] == BETA
    assert result["synthesis"] == {"method": "best", "from": "B"}
    assert requests_of(router, "chair") == []
    assert [e.data for e in of_type(run, "synthesis_token")] == [{"text": BETA}]


async def test_a_failing_chairman_falls_back_to_the_best_answer(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, named_members(mock("chair", **FAIL)))
    run = make_run(router, clock)
    result = await runner(run, named(chairman="chair"))()
    assert result["answer"] == BETA
    assert result["synthesis"] == {"method": "best", "from": "B",
                                   "fallback_reason": f"the chairman failed: upstream chair {FAIL_MESSAGE}"}
    assert [e.data for e in of_type(run, "synthesis_token")] == [{"text": BETA}]
    assert run.calls[-1].role == "chairman" and run.calls[-1].error == f"upstream chair {FAIL_MESSAGE}"


async def test_a_chairman_cut_off_mid_stream_leaves_tokens_that_join_to_the_answer(
    ctx: ProviderContext, clock: FakeClock, fake_openai: FakeUpstream,
) -> None:
    fake_openai.queue(Reply(sse=oa.stream_events(["The", " chair", " says", " Paris."]), drop_after=3))
    chair = {"name": "chair", "provider": "openai", "model": "fake-model", "base_url": fake_openai.url + "/v1",
             "api_key": "sk-x"}
    router = make_router(ctx, named_members(chair))
    run = make_run(router, clock)
    result = await runner(run, named(chairman="chair"))()
    assert result["answer"] == BETA
    assert result["synthesis"]["fallback_reason"] == "the chairman failed: upstream chair broke off its answer"
    tokens = of_type(run, "synthesis_token")
    assert "".join(e.data["text"] for e in tokens[:-1]) == "The chair"  # what went out before the break
    assert tokens[-1].data == {"text": result["answer"], "replace": True}  # ... is replaced by the answer


# --------------------------------------------------------------------------------------------------------------
# budget
# --------------------------------------------------------------------------------------------------------------


def priced_fan_out(ctx: ProviderContext, clock: FakeClock) -> tuple[Router, LiveRun]:
    """$1 per output token and 10 output tokens reserved per call: a $25 cap holds two calls, not three."""
    router = make_router(ctx, [mock(n, replies=[t], latency=0.1, input_price=0.0, output_price=1_000_000.0)
                               for n, t in (("m1", ALPHA), ("m2", BETA), ("m3", GAMMA))])
    run = make_run(router, clock)
    run.ctx.meter = RunCap(None, 25.0, run, 10)
    return router, run


async def test_budget_refusal_stops_the_fan_out_and_keeps_the_records(ctx: ProviderContext, clock: FakeClock) -> None:
    router, run = priced_fan_out(ctx, clock)
    with pytest.raises(BudgetExceededError) as info:  # itself, not wrapped in an ExceptionGroup
        await runner(run, ens(strategy="heuristic"))()
    assert "run run_x (max_cost_usd)" in info.value.message
    assert "(remaining $5.0000)" in info.value.message
    # m1 and m2 were reserved and sent before m3 was refused; their answers and costs stay on record.
    assert [(c.model, c.answer) for c in run.calls] == [("m1", ALPHA), ("m2", BETA), ("m3", None)]
    assert [c.cost_usd for c in run.calls] == [7.0, 17.0, 0.0]  # $1 per completion token
    assert run.cost == 24.0
    assert run.calls[2].error == info.value.message
    [failed] = of_type(run, "model_failed")
    assert (failed.data["model"], failed.data["status"]) == ("m3", 429)
    assert requests_of(router, "m3") == []  # refused before it was sent
    assert not of_type(run, "ranking")


async def test_calls_cancelled_by_a_budget_stop_are_marked_on_their_records(http: HttpClient) -> None:
    real = SystemClock()  # m1 and m2 are still waiting for their answers when m3 is refused
    router = make_router(ProviderContext(http=http, clock=real), [
        mock(n, replies=[t], latency=lat, input_price=0.0, output_price=1_000_000.0)
        for n, t, lat in (("m1", ALPHA, 30.0), ("m2", BETA, 30.0), ("m3", GAMMA, 0.0))])
    run = make_run(router, real)
    run.ctx.meter = RunCap(None, 25.0, run, 10)
    with pytest.raises(BudgetExceededError):
        await runner(run, ens(strategy="heuristic"))()
    assert [(c.model, c.answer) for c in run.calls] == [("m1", None), ("m2", None), ("m3", None)]
    assert run.calls[0].error is not None
    assert run.calls[1].error is not None


async def test_budget_refusal_of_the_chairman_propagates_and_answers_keep_their_cost(
    ctx: ProviderContext, clock: FakeClock,
) -> None:
    router = make_router(ctx, [
        mock("m1", replies=[ALPHA], input_price=1.0, output_price=1.0),
        mock("m2", replies=[BETA], input_price=1.0, output_price=1.0),
        mock("chair", replies=[CHAIR], input_price=0.0, output_price=1_000_000.0),
    ])
    run = make_run(router, clock)
    run.ctx.meter = RunCap(None, 1.0, run, 100)
    cfg = EnsembleConfig.model_validate({"name": "t", "members": ["m1", "m2"], "strategy": "heuristic",
                                         "chairman": "chair"})
    with pytest.raises(BudgetExceededError):
        await runner(run, cfg)()
    assert [(c.model, c.answer) for c in run.calls[:2]] == [("m1", ALPHA), ("m2", BETA)]
    assert all(c.cost_usd > 0 for c in run.calls[:2])
    assert run.cost == pytest.approx(sum(c.cost_usd for c in run.calls[:2]))
    assert run.calls[2].model == "chair" and run.calls[2].error is not None
    assert requests_of(router, "chair") == []
    assert [a["text"] for a in run.partial["answers"]] == [ALPHA, BETA]


# --------------------------------------------------------------------------------------------------------------
# events
# --------------------------------------------------------------------------------------------------------------


async def test_events_of_a_normal_run(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, named_members(mock("chair", replies=[CHAIR])))
    run = make_run(router, clock)
    await runner(run, named(chairman="chair"))()
    assert [e.seq for e in run.events] == list(range(1, len(run.events) + 1))
    kinds = [e.type for e in run.events if e.type != "cost"]
    tokens = len(of_type(run, "synthesis_token"))
    assert kinds == [
        "stage_started", "model_answered", "model_answered", "model_answered", "stage_finished",
        "stage_started", "ranking", "stage_finished",
        "stage_started", *["synthesis_token"] * tokens, "model_answered", "stage_finished",
    ]
    stages = [(e.type, e.data["stage"]) for e in run.events if e.type.startswith("stage_")]
    assert stages == [("stage_started", "answer"), ("stage_finished", "answer"), ("stage_started", "rank"),
                      ("stage_finished", "rank"), ("stage_started", "synthesis"), ("stage_finished", "synthesis")]
    answered = [(e.data["stage"], e.data["role"], e.data["model"]) for e in of_type(run, "model_answered")]
    assert sorted(answered[:3]) == [("answer", "member A", "model-north"), ("answer", "member B", "model-south"),
                                    ("answer", "member C", "model-east")]
    assert answered[3] == ("synthesis", "chairman", "chair")
    assert of_type(run, "ranking")[0].data["order"] == ["B", "A", "C"]
    assert "".join(e.data["text"] for e in of_type(run, "synthesis_token")) == CHAIR
