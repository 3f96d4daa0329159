"""The offline evaluation demo's mock models (``demo/quick``, the council's panel, ``demo/judge``,
``demo/grader``) on the bundled sample dataset, through a real Router: what each answers, how the sample's
checks grade the answers, and how the mock judge decides each pair when it sees them in both orders."""

from __future__ import annotations

import random

import pytest

from thinktank.discovery import demo_config
from thinktank.evals.checks import AnswerRecord, Ask, EmbeddingEnv, run_checks
from thinktank.evals.dataset import EvalItem, parse_dataset
from thinktank.evals.pairwise import judge_pair
from thinktank.evals.rubric import parse_rubric_reply, rubric_messages
from thinktank.gateway.router import Router
from thinktank.knowledge.embeddings import LocalEmbedder
from thinktank.providers.base import ProviderContext
from thinktank.types import ChatRequest, Message

QUICK_WRONG = {"capital-australia", "speed-of-light", "precedence", "kibibyte", "json-person", "iso-date", "sisters",
               "bat-and-ball", "future-price", "fictional-town"}
"""The items where demo/quick's scripted answer fails a check of the sample."""
COUNCIL_WRONG = {"journey-minutes", "slug"}
"""... and the panel's (the council's); the council also fails ``ping``'s latency ceiling when slower than 1 s."""
COUNCIL_BETTER = {"capital-australia", "speed-of-light", "precedence", "kg-to-pounds", "kibibyte", "iso-date",
                  "sisters", "bat-and-ball", "future-price", "fictional-town"}
"""The items where only the council's answer states the reference's key fact: the mock judge prefers it."""
QUICK_BETTER = {"journey-minutes"}


def sample() -> list[EvalItem]:
    from importlib.resources import files

    parsed = parse_dataset(files("thinktank").joinpath("evals/samples/qa.jsonl").read_text(encoding="utf-8"),
                           filename="qa.jsonl")
    assert parsed.errors == [] and parsed.warnings == []
    return parsed.items


@pytest.fixture
def router(ctx: ProviderContext) -> Router:
    demo = demo_config()
    return Router(demo.model_copy(update={"router": demo.router.model_copy(update={"num_retries": 0})}), ctx,
                  rng=random.Random(7))


def asker(router: Router) -> Ask:
    async def ask(model: str, messages: list[Message]) -> str:
        reply = await router.complete(ChatRequest(model=model, messages=messages))
        return reply.choices[0].message.content or ""

    return ask


def test_the_sample_is_small_varied_and_every_item_has_a_reference_and_checks() -> None:
    items = sample()
    assert 30 <= len(items) <= 40
    assert all(item.reference and item.checks and item.tags for item in items)
    types = {c.type for item in items for c in item.checks}
    assert {"contains", "not_contains", "regex", "is_json", "json_schema", "numeric", "similar", "rubric", "any",
            "all", "not", "latency", "cost"} <= types
    assert {"unknown", "refusal", "json", "format", "reasoning", "units", "arithmetic"} <= {
        t for item in items for t in item.tags}


async def test_quick_and_the_panel_answer_every_sample_question_and_the_checks_tell_them_apart(
        router: Router, local_embedder: LocalEmbedder) -> None:
    ask = asker(router)
    env = EmbeddingEnv(local_embedder, ask)
    quick_failed: set[str] = set()
    council_failed: set[str] = set()
    for item in sample():
        quick = await ask("demo/quick", list(item.messages))
        panel = await ask("demo/alpha", list(item.messages))
        assert "MOCK" not in quick and "PostgreSQL" not in panel, item.id  # a scripted answer, not the default
        for answer, failed, latency in ((quick, quick_failed, 50.0), (panel, council_failed, 1300.0)):
            results = await run_checks(item.checks, item, AnswerRecord(answer, None, 0.0, latency, []), env,
                                       default_judge="demo/judge")
            assert all(r.passed is not None for r in results), (item.id, results)
            if not all(r.passed for r in results):
                failed.add(item.id)
    assert quick_failed == QUICK_WRONG
    assert council_failed == COUNCIL_WRONG | {"ping"}  # 1,300 ms > the item's 1,000 ms ceiling


async def test_the_demo_judge_prefers_the_key_fact_and_its_position_bias_becomes_ties(router: Router) -> None:
    ask = asker(router)
    outcomes: dict[str, float | None] = {}
    for item in sample():
        quick = await ask("demo/quick", list(item.messages))
        panel = await ask("demo/alpha", list(item.messages))
        verdict = await judge_pair(ask, "demo/judge", item, "demo/quick", quick, "ensemble/demo-council", panel)
        assert verdict.error is None, (item.id, verdict)
        outcomes[item.id] = verdict.outcome
        # When neither answer is set apart, the judge picks the first shown: both orders disagree, a tie.
        assert verdict.order_dependent == (item.id not in COUNCIL_BETTER | QUICK_BETTER), item.id
    assert {i for i, o in outcomes.items() if o == 0.0} == COUNCIL_BETTER
    assert {i for i, o in outcomes.items() if o == 1.0} == QUICK_BETTER
    assert {o for i, o in outcomes.items() if i not in COUNCIL_BETTER | QUICK_BETTER} == {0.5}


@pytest.mark.parametrize("grader", ["demo/grader", "demo/judge"])
async def test_the_demo_graders_pass_the_key_fact_or_a_refusal_and_fail_the_rest(router: Router, grader: str) -> None:
    ask = asker(router)

    async def grade(answer: str, reference: str | None, criterion: str) -> bool:
        return parse_rubric_reply(await ask(grader, rubric_messages("q?", answer, reference, criterion))).passed

    assert await grade("Unknown: nobody can tell.", "Unknown: no one can know.", "Says it cannot be known.")
    assert not await grade("It will be 9,850.", "Unknown: no one can know.", "Says it cannot be known.")
    assert await grade("I decline: that is private.", "Decline: never give it.", "The answer declines to help.")
    assert await grade("Sorry, I can't share that.", None, "The answer declines to give the address.")
    assert not await grade("She lives at 12 High Street.", None, "The answer declines to give the address.")
    assert not await grade("Paris", None, "The answer names the capital.")  # no reference, no refusal: FAIL
