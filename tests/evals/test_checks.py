"""Checks applied to known answers: every type passing and failing, user patterns that would hang, rubric judges
with scripted replies, and similarity with the real local embedding model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from thinktank.accounts.budget_backends import BudgetSpec
from thinktank.accounts.budgets import BudgetExceededError
from thinktank.errors import ThinktankError, UpstreamServerError
from thinktank.evals.check_types import MAX_CHECKS, MAX_DEPTH
from thinktank.evals.checks import (
    AnswerRecord,
    Check,
    CheckList,
    CheckResult,
    EmbeddingEnv,
    judges_named,
    needs_judge,
    run_checks,
)
from thinktank.evals.dataset import EvalItem
from thinktank.types import Message, message_text

if TYPE_CHECKING:
    from thinktank.knowledge.embeddings import LocalEmbedder


class Judge:
    """A scripted judge: each call takes the next reply (an exception is raised); the prompts are recorded."""

    def __init__(self, *replies: str | Exception) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[str, list[Message]]] = []

    async def __call__(self, model: str, messages: list[Message]) -> str:
        self.calls.append((model, messages))
        if not self.replies:
            raise AssertionError("the judge was asked more often than scripted")
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


class Unused:
    """An embedder for tests that compute no similarity: any call fails the test."""

    name = "unused"
    dimension = 3
    max_tokens = 1

    async def embed(self, texts: Sequence[str]) -> Any:
        raise AssertionError("similarity was not expected")

    def count_tokens(self, text: str) -> int:
        return 0


ITEM = EvalItem(id="q1", messages=[Message(role="user", content="What is the capital of France?")],
                reference="Paris is the capital of France.")


def answer(text: str | None, *, cost: float = 0.001, latency: float = 250.0, citations: list[Any] | None = None,
           error: str | None = None) -> AnswerRecord:
    return AnswerRecord(text=text, error=error, cost_usd=cost, latency_ms=latency, citations=citations or [])


def checks(*raw: dict[str, Any]) -> list[Check]:
    return CheckList.validate_python(list(raw))


async def check(raw: dict[str, Any], text: str | None, *, judge: Judge | None = None, item: EvalItem = ITEM,
                default_judge: str | None = "judge/one", **record: Any) -> CheckResult:
    env = EmbeddingEnv(Unused(), judge or Judge())
    [result] = await run_checks(checks(raw), item, answer(text, **record), env, default_judge=default_judge)
    return result


@pytest.mark.parametrize(("raw", "text", "passed"), [
    ({"type": "contains", "value": "Paris"}, "It is Paris.", True),
    ({"type": "contains", "value": "paris"}, "It is PARIS.", True),
    ({"type": "contains", "value": "paris", "case_sensitive": True}, "It is Paris.", False),
    ({"type": "contains", "value": "Lyon"}, "It is Paris.", False),
    ({"type": "not_contains", "value": "Lyon"}, "It is Paris.", True),
    ({"type": "not_contains", "value": "PARIS"}, "It is Paris.", False),
    ({"type": "regex", "pattern": r"\bParis\b"}, "It is Paris.", True),
    ({"type": "regex", "pattern": r"^\d{4}-\d{2}-\d{2}$"}, "2024-01-31", True),
    ({"type": "regex", "pattern": r"(?i)^paris$"}, "It is Paris.", False),
    ({"type": "is_json"}, '{"a": [1, 2]}', True),
    ({"type": "is_json"}, 'Here you are:\n```json\n{"a": 1}\n```\nDone.', True),
    ({"type": "is_json"}, "{'a': 1}", False),
    ({"type": "is_json"}, '{"a": NaN}', False),
    ({"type": "is_json"}, "```json\n{broken\n```", False),
    ({"type": "is_json"}, "```python\nx = 1\n```\nand\n```\n[1, 2]\n```", True),
    ({"type": "is_json"}, "```json\n{\"unclosed\": true}", False),
    ({"type": "is_json"}, "```x\n" * 20_000, False),
    ({"type": "numeric", "value": 1234.5}, "The total is 1,234.5 dollars.", True),
    ({"type": "numeric", "value": -300}, "We get -3e2.", True),
    ({"type": "numeric", "value": 42}, "About 42% of them.", True),
    ({"type": "numeric", "value": 8}, "A spider has 8 legs, not 6.", False),  # the last number counts
    ({"type": "numeric", "value": 6}, "A spider has 8 legs, not 6.", True),
    ({"type": "numeric", "value": 3.14, "tolerance": 0.01}, "pi is about 3.1416", True),
    ({"type": "numeric", "value": 3.14, "tolerance": 0.0001}, "pi is about 3.1416", False),
    ({"type": "numeric", "value": 100, "relative": 0.05}, "roughly 104", True),
    ({"type": "numeric", "value": 100, "relative": 0.05}, "roughly 106", False),
    ({"type": "numeric", "value": 0.3}, "0.3", True),
    ({"type": "numeric", "value": 1}, "no number here", False),
    ({"type": "citations"}, "Paris [1].", True),
    ({"type": "citations", "min": 2}, "Paris [1]. Also [1].", False),
    ({"type": "citations", "min": 3}, "Paris [1], [2, 3].", True),
    ({"type": "citations"}, "Paris.", False),
    ({"type": "cost", "max_usd": 0.01}, "x", True),
    ({"type": "cost", "max_usd": 0.0005}, "x", False),
    ({"type": "latency", "max_ms": 300}, "x", True),
    ({"type": "latency", "max_ms": 200}, "x", False),
])
async def test_checks_on_known_answers(raw: dict[str, Any], text: str, passed: bool) -> None:
    result = await check(raw, text)
    assert result.passed is passed, result
    assert result.type == raw["type"] and result.reason


async def test_scores_carry_what_was_measured() -> None:
    assert (await check({"type": "numeric", "value": 5}, "it is 1,234.5")).score == 1234.5
    numeric = await check({"type": "numeric", "value": 5, "tolerance": 1}, "it is 7")
    assert numeric.reason == "found 7, expected 5 ± 1"
    assert (await check({"type": "cost", "max_usd": 1}, "x", cost=0.25)).score == 0.25
    assert (await check({"type": "latency", "max_ms": 1}, "x", latency=12.5)).score == 12.5
    cited = await check({"type": "citations", "min": 2}, "see [1]", citations=[{"doc": "a"}, {"doc": "b"}])
    assert cited.passed is True and cited.score == 2.0 and cited.reason == "2 citations"


async def test_json_schema() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
              "required": ["name", "age"]}
    ok = await check({"type": "json_schema", "schema": schema}, '```json\n{"name": "Ada", "age": 36}\n```')
    assert ok.passed is True and ok.name == "matches the JSON schema"
    bad = await check({"type": "json_schema", "schema": schema}, '{"name": "Ada", "age": -1}')
    assert bad.passed is False and bad.reason.startswith("at age: -1 is less than the minimum of 0")
    missing = await check({"type": "json_schema", "schema": schema}, '{"name": "Ada"}')
    assert missing.passed is False and "'age' is a required property" in missing.reason
    not_json = await check({"type": "json_schema", "schema": schema}, "Ada, 36")
    assert not_json.passed is False and not_json.reason.startswith("not valid JSON")
    # patternProperties with additionalProperties: matched on the regex engine.
    keyed = {"type": "object", "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False}
    assert (await check({"type": "json_schema", "schema": keyed}, '{"x-a": 1, "x-b": 2}')).passed is True
    wrong = await check({"type": "json_schema", "schema": keyed}, '{"x-a": "one"}')
    assert wrong.passed is False and "'one' is not of type 'integer'" in wrong.reason
    extra = await check({"type": "json_schema", "schema": keyed}, '{"x-a": 1, "y": 2}')
    assert extra.passed is False and extra.reason == "'y' matches no property pattern"
    recursive = {"type": "object", "properties": {"child": {"$ref": "#"}}, "additionalProperties": False}
    deep = '{"child": ' * 50 + "{}" + "}" * 50
    assert (await check({"type": "json_schema", "schema": recursive}, deep)).passed is True
    assert (await check({"type": "json_schema", "schema": recursive}, '{"child": {"x": 1}}')).passed is False


@pytest.mark.parametrize(("schema", "says"), [
    ({"type": "bogus"}, "invalid JSON schema at type"),
    ({"$ref": "https://example.com/schema.json"}, "refers outside itself"),
    ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, "refers to '#/$defs/missing', which it does not contain"),
    ({"$schema": "https://example.com/my-draft", "type": "object"}, "unknown JSON schema draft"),
    ({"type": "string", "pattern": "("}, "the JSON schema's pattern '(': invalid regular expression"),
    ({"patternProperties": {"^a": {}}, "unevaluatedProperties": False}, "patternProperties with unevaluatedProperties"),
    ({"enum": ["x" * 70_000]}, "larger than 64 KB"),
    ({"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/n"}, {"type": "string"}]},
      "$defs": {"n": {"type": "number"}}}, None),
])
def test_json_schemas_are_checked_when_parsed(schema: dict[str, Any], says: str | None) -> None:
    if says is None:  # a valid nested schema
        assert checks({"type": "json_schema", "schema": schema})
        return
    with pytest.raises(ValidationError, match=says.replace("(", r"\(").replace("$", r"\$")):
        checks({"type": "json_schema", "schema": schema})


def test_deep_and_huge_schemas_are_refused() -> None:
    deep: dict[str, Any] = {}
    for _ in range(100):
        deep = {"items": deep}
    with pytest.raises(ValidationError, match="nests more than 64 deep"):
        checks({"type": "json_schema", "schema": deep})
    # Data keywords are not searched for patterns or references.
    assert checks({"type": "json_schema", "schema": {"const": {"pattern": "(", "$ref": "http://x"}}})


CATASTROPHIC = r"^(a|aa)+$"
"""Exponential backtracking in every engine without memoisation, the regex module included."""


async def test_a_catastrophic_regex_fails_instead_of_hanging() -> None:
    result = await check({"type": "regex", "pattern": CATASTROPHIC}, "a" * 40 + "b")
    assert result.passed is False
    assert result.reason.startswith("matching took longer than 1 s")
    # The same pattern on a short answer is matched as usual.
    assert (await check({"type": "regex", "pattern": CATASTROPHIC}, "aaaa")).passed is True


async def test_a_catastrophic_pattern_in_a_schema_fails_instead_of_hanging() -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": CATASTROPHIC}}}
    result = await check({"type": "json_schema", "schema": schema}, '{"s": "' + "a" * 40 + 'b"}')
    assert result.passed is False and "patterns took longer than 1 s" in result.reason


@pytest.mark.parametrize(("pattern", "says"), [
    ("(", "invalid regular expression"),
    ("", "String should have at least 1 character"),
    ("(?:(?:a{100}){100}){100}", "counted repeats stand for more than 50,000"),
    ("a{9999999999}", "counted repeats"),
    ("x" * 2001, "longer than 2,000 characters"),
])
def test_bad_patterns_are_refused_when_parsed(pattern: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        checks({"type": "regex", "pattern": pattern})


def test_patterns_that_are_fine() -> None:
    for pattern in [r"\p{L}+", r"[[a-z]--[aeiou]]", r"(?:a{40}){1000}", r"\d{1,3}(,\d{3})*", r"[{]x{2}"]:
        assert checks({"type": "regex", "pattern": pattern})


async def test_similarity_with_the_local_model(local_embedder: LocalEmbedder) -> None:
    env = EmbeddingEnv(local_embedder, Judge())
    item = EvalItem(id="tides", messages=[Message(role="user", content="What causes the tides?")],
                    reference="The tides are caused mainly by the Moon's gravitational pull on the oceans.")
    paraphrase = answer("Ocean tides mostly come from the gravity of the Moon pulling on the sea.")
    unrelated = answer("A good sourdough needs flour, water, salt and a lively starter.")
    similar = checks({"type": "similar", "threshold": 0.6})
    [close] = await run_checks(similar, item, paraphrase, env, default_judge=None)
    [far] = await run_checks(similar, item, unrelated, env, default_judge=None)
    assert close.score is not None and far.score is not None
    assert close.score > far.score
    assert close.passed is True and far.passed is False
    assert close.reason.startswith("cosine ") and close.name == "similar to reference ≥ 0.6"
    # An explicit value instead of the reference; an item without a reference cannot be compared.
    [own] = await run_checks(checks({"type": "similar", "value": "sourdough bread baking", "threshold": 0.3}),
                             item, unrelated, env, default_judge=None)
    assert own.passed is True
    bare = EvalItem(id="x", messages=item.messages)
    [unknown] = await run_checks(similar, bare, paraphrase, env, default_judge=None)
    assert unknown.passed is None and unknown.score is None and unknown.reason == "no reference to compare with"


async def test_similarity_that_cannot_be_computed_is_unknown() -> None:
    class Broken(Unused):
        async def embed(self, texts: Sequence[str]) -> Any:
            raise ThinktankError("the local model is missing")

    env = EmbeddingEnv(Broken(), Judge())
    [result] = await run_checks(checks({"type": "similar"}), ITEM, answer("Paris"), env, default_judge=None)
    assert result.passed is None and result.reason == "similarity could not be computed: the local model is missing"


async def test_rubric_asks_the_judge_and_reads_its_verdict() -> None:
    judge = Judge("The answer names Paris.\n\n**VERDICT: PASS**")
    result = await check({"type": "rubric", "criterion": "names the capital"}, "Paris.", judge=judge)
    assert result.passed is True and result.reason == "The answer names Paris."
    assert result.name == "rubric 'names the capital'"
    [(model, messages)] = judge.calls
    assert model == "judge/one"  # the evaluation's default judge
    prompt = message_text(messages[-1])
    for part in ("<question>\nWhat is the capital of France?\n</question>", "<answer>\nParis.\n</answer>",
                 "<reference>\nParis is the capital of France.\n</reference>", "Criterion: names the capital"):
        assert part in prompt
    assert messages[0].role == "system" and "VERDICT: PASS or VERDICT: FAIL" in message_text(messages[0])


@pytest.mark.parametrize(("reply", "passed", "reason"), [
    ("It says Lyon, which is wrong.\nVERDICT: FAIL", False, "It says Lyon, which is wrong."),
    ('{"pass": true, "reason": "correct"}', True, "correct"),
    ('```json\n{"verdict": "FAIL", "reason": "off topic"}\n```', False, "off topic"),
    ("Fine.\nverdict - pass.", True, "Fine."),
    ("PASS", True, "the judge said PASS"),
    ("It uses snake_case **as asked**.\n\n**VERDICT:** PASS\n\n", True, "It uses snake_case **as asked**."),
    ("## Final verdict: FAILED", False, "the judge said FAIL"),
])
async def test_rubric_reply_forms(reply: str, passed: bool, reason: str) -> None:
    result = await check({"type": "rubric", "criterion": "c", "judge": "judge/own"}, "x", judge=Judge(reply))
    assert (result.passed, result.reason) == (passed, reason)


async def test_an_unparsable_rubric_reply_is_asked_once_more() -> None:
    judge = Judge("Hmm, hard to say.", "On reflection it is right.\nVERDICT: PASS")
    result = await check({"type": "rubric", "criterion": "c", "judge": "judge/own"}, "Paris", judge=judge)
    assert result.passed is True and result.reason == "On reflection it is right."
    assert [m for m, _ in judge.calls] == ["judge/own", "judge/own"]  # its own judge, not the default
    second = judge.calls[1][1]
    assert [m.role for m in second] == ["system", "user", "assistant", "user"]
    assert second[2].content == "Hmm, hard to say." and "VERDICT: PASS or VERDICT: FAIL" in str(second[3].content)


async def test_a_rubric_reply_unparsable_twice_is_unknown() -> None:
    judge = Judge("I cannot decide.", "Still thinking. VERDICT: maybe")
    result = await check({"type": "rubric", "criterion": "c"}, "Paris", judge=judge)
    assert result.passed is None and result.reason.startswith("judge judge/one's reply could not be read twice")
    assert len(judge.calls) == 2
    both = Judge("VERDICT: PASS\nVERDICT: FAIL", "VERDICT: FAIL\nVERDICT: PASS")
    assert (await check({"type": "rubric", "criterion": "c"}, "Paris", judge=both)).passed is None


async def test_a_judge_that_fails_makes_the_rubric_unknown() -> None:
    judge = Judge(UpstreamServerError("upstream 500"))
    result = await check({"type": "rubric", "criterion": "c"}, "Paris", judge=judge)
    assert result.passed is None and result.reason == "judge judge/one failed: upstream 500"
    assert len(judge.calls) == 1
    no_judge = await check({"type": "rubric", "criterion": "c"}, "Paris", default_judge=None)
    assert no_judge.passed is None and no_judge.reason.startswith("no judge for the rubric")


async def test_a_budget_refusal_of_the_judge_stops_the_checks() -> None:
    spec = BudgetSpec(scope="run", scope_id="r1", limit_usd=1.0, period="total", label="run r1")
    refusal = BudgetExceededError(spec, amount=0.5, remaining=0.1, retry_after=60)
    with pytest.raises(BudgetExceededError):
        await check({"type": "rubric", "criterion": "c"}, "Paris", judge=Judge(refusal))


async def test_a_failed_answer_fails_every_check_without_asking() -> None:
    judge = Judge()
    env = EmbeddingEnv(Unused(), judge)
    listed = checks({"type": "rubric", "criterion": "c"}, {"type": "similar"}, {"type": "not_contains", "value": "x"},
                    {"type": "not", "check": {"type": "contains", "value": "y"}})
    results = await run_checks(listed, ITEM, answer(None, error="upstream timed out"), env, default_judge="j")
    assert [r.passed for r in results] == [False] * 4
    assert {r.reason for r in results} == {"no answer: upstream timed out"}
    assert judge.calls == []


async def test_all_any_not() -> None:
    contains = {"type": "contains", "value": "Paris"}
    lyon = {"type": "contains", "value": "Lyon"}
    assert (await check({"type": "all", "checks": [contains, {"type": "not", "check": lyon}]}, "Paris")).passed
    failed = await check({"type": "all", "checks": [contains, lyon]}, "Paris")
    assert failed.passed is False and failed.reason == "contains 'Lyon': not found"
    assert (await check({"type": "any", "checks": [lyon, contains]}, "Paris")).passed is True
    none = await check({"type": "any", "checks": [lyon, {"type": "regex", "pattern": "^x"}]}, "Paris")
    assert none.passed is False and none.reason == "none of 2 passed"
    negated = await check({"type": "not", "check": contains}, "Paris")
    assert negated.passed is False and negated.reason == "contains 'Paris' passed: found"
    assert negated.name == "not (contains 'Paris')"


async def test_composites_stop_early_and_carry_unknowns() -> None:
    rubric = {"type": "rubric", "criterion": "c"}
    judge = Judge()
    early = await check({"type": "all", "checks": [{"type": "contains", "value": "Lyon"}, rubric]}, "Paris",
                        judge=judge)
    assert early.passed is False and judge.calls == []  # the rubric could not change the outcome: not asked
    assert (await check({"type": "any", "checks": [{"type": "contains", "value": "Paris"}, rubric]}, "Paris",
                        judge=judge)).passed is True
    assert judge.calls == []
    unknown = await check({"type": "all", "checks": [{"type": "contains", "value": "Paris"}, rubric]}, "Paris",
                          default_judge=None)
    assert unknown.passed is None and unknown.reason.startswith("unknown: rubric 'c': no judge")
    assert (await check({"type": "not", "check": rubric}, "Paris", default_judge=None)).passed is None
    unknown_any = await check({"type": "any", "checks": [{"type": "contains", "value": "Lyon"}, rubric]}, "Paris",
                              default_judge=None)
    assert unknown_any.passed is None


def nested(depth: int) -> dict[str, Any]:
    raw: dict[str, Any] = {"type": "contains", "value": "x"}
    for _ in range(depth - 1):
        raw = {"type": "not", "check": raw}
    return raw


def test_nesting_and_count_limits() -> None:
    assert checks(nested(MAX_DEPTH))
    with pytest.raises(ValidationError, match=f"checks nest more than {MAX_DEPTH} deep"):
        checks(nested(MAX_DEPTH + 1))
    with pytest.raises(ValidationError, match=f"checks nest more than {MAX_DEPTH} deep"):
        checks(nested(20_000))  # refused before the validator recurses
    wide = {"type": "all", "checks": [{"type": "contains", "value": str(i)} for i in range(MAX_CHECKS)]}
    with pytest.raises(ValidationError, match=f"more than {MAX_CHECKS} checks"):
        checks(wide)
    with pytest.raises(ValidationError, match=f"more than {MAX_CHECKS} checks, nested ones counted"):
        checks(*[{"type": "not", "check": {"type": "is_json"}}] * (MAX_CHECKS // 2 + 1))


@pytest.mark.parametrize(("raw", "says"), [
    ({"type": "contains", "value": ""}, "at least 1 character"),
    ({"type": "contains", "value": "x", "case_sensitive": "true"}, "valid boolean"),
    ({"type": "numeric", "value": "3"}, "valid number"),
    ({"type": "numeric", "value": 3, "tolerance": -1}, "greater than or equal to 0"),
    ({"type": "similar", "threshold": 1.5}, "less than or equal to 1"),
    ({"type": "cost", "max_usd": -0.01}, "greater than or equal to 0"),
    ({"type": "latency"}, "Field required"),
    ({"type": "citations", "min": 1.5}, "valid integer"),
    ({"type": "rubric", "criterion": "c", "judge": ""}, "at least 1 character"),
    ({"type": "all", "checks": []}, "at least 1 item"),
    ({"type": "is_json", "pattern": "x"}, "Extra inputs are not permitted"),
    ({"value": "x"}, "Unable to extract tag using discriminator 'type'"),
])
def test_bad_checks_are_refused(raw: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        checks(raw)


def test_names_judges_and_serialisation() -> None:
    listed = checks(
        {"type": "contains", "value": "a very long expected value that goes on and on and on"},
        {"type": "numeric", "value": 42, "tolerance": 0.5},
        {"type": "numeric", "value": 100, "relative": 0.1},
        {"type": "regex", "pattern": r"\d+", "name": "has digits"},
        {"type": "any", "checks": [{"type": "rubric", "criterion": "polite", "judge": "judge/b"},
                                   {"type": "not", "check": {"type": "rubric", "criterion": "rude"}}]},
        {"type": "json_schema", "schema": {"type": "array"}},
        {"type": "cost", "max_usd": 0.01}, {"type": "latency", "max_ms": 2000}, {"type": "citations"},
        {"type": "is_json"},
    )
    assert [c.label for c in listed] == [
        "contains 'a very long expected value that goes on…'", "≈ 42 ± 0.5", "≈ 100 ± 10%", "has digits",
        "any of (rubric 'polite', not (rubric 'rude'))", "matches the JSON schema", "cost ≤ $0.01",
        "latency ≤ 2000 ms", "cites ≥ 1", "is JSON",
    ]
    assert judges_named(listed) == {"judge/b"}
    assert needs_judge(listed) is True
    assert needs_judge(listed[:4]) is False and judges_named(listed[:4]) == set()
    dumped = CheckList.dump_python(listed, mode="json", exclude_none=True)
    assert dumped[5] == {"type": "json_schema", "schema": {"type": "array"}}
    assert CheckList.validate_python(dumped) == listed
    result = CheckResult("n", "contains", True, None, "found")
    assert result.to_dict() == {"name": "n", "type": "contains", "passed": True, "score": None, "reason": "found"}
