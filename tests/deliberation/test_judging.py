from __future__ import annotations

import pytest

from thinktank.deliberation import judging
from thinktank.deliberation.judging import (
    JudgeParseError,
    extract_json,
    parse_ranking,
    parse_score,
    parse_scores,
    parse_verdict,
)

LABELS = ["A", "B", "C"]


def test_public_api() -> None:
    assert sorted(judging.__all__) == sorted(
        ["JudgeParseError", "extract_json", "parse_ranking", "parse_score", "parse_scores", "parse_verdict"]
    )
    assert issubclass(JudgeParseError, ValueError)


# ---------------------------------------------------------------------------------------------------------------------
# extract_json
# ---------------------------------------------------------------------------------------------------------------------


def test_extract_json_prose_around_object() -> None:
    text = 'Sure! Here is my assessment: {"winner": "A", "reason": "it uses {braces} and \\"quotes\\""} Hope it helps.'
    assert extract_json(text) == {"winner": "A", "reason": 'it uses {braces} and "quotes"'}


def test_extract_json_prefers_json_fence_then_any_fence() -> None:
    text = 'Draft {"x": 1}\n```\n{"x": 2}\n```\nFinal:\n```json\n{"x": 3}\n```\n'
    assert extract_json(text) == {"x": 3}
    assert extract_json('Draft {"x": 1}\n```text\n["y"]\n```') == ["y"]
    assert extract_json('```JSON\n  {"x": [1, 2]}  \n```') == {"x": [1, 2]}


def test_extract_json_skips_unparseable_spans() -> None:
    assert extract_json('see [the docs] or {not json} then [1, 2] and {"a": 1}') == [1, 2]
    assert extract_json('{"broken": } but later {"ok": true}') == {"ok": True}


def test_extract_json_failure() -> None:
    with pytest.raises(JudgeParseError):
        extract_json("no json here, just {prose} and [notes]")
    with pytest.raises(JudgeParseError):
        extract_json("the answer is 42")
    with pytest.raises(JudgeParseError):
        extract_json("[" * 3000)  # nesting deeper than the decoder's recursion limit is not JSON we accept


# ---------------------------------------------------------------------------------------------------------------------
# parse_ranking
# ---------------------------------------------------------------------------------------------------------------------


def test_parse_ranking_llm_council_format() -> None:
    text = (
        "Response A is thorough but verbose.\nResponse B misses the point.\nResponse C is best.\n\n"
        "FINAL RANKING:\n1. Response C\n2. Response A\n3. Response B\n"
    )
    assert parse_ranking(text, LABELS) == ["C", "A", "B"]


@pytest.mark.parametrize(
    "section",
    [
        "FINAL RANKING:\n1) Response B\n2) Response C\n3) Response A",
        "final ranking:\n1. B\n2. C\n3. A",
        "**FINAL RANKING:**\n1. **Response B** - clearest\n2. Response C: fine\n3. Response A",
        "## Final Ranking\n\n- Response B\n- Response C\n- Response A\n\nThat is all.",
        "FINAL RANKING:\nResponse B\nResponse C\nResponse A",
        "FINAL RANKING:\nB\nC\nA\n",
        "Final Ranking: Response B\n2. Response C\n3. Response A",
        "FINAL RANKING:\nAfter weighing it all:\n1. response b\n2. response c\n3. response a\n\nThanks for reading.",
    ],
)
def test_parse_ranking_variants(section: str) -> None:
    assert parse_ranking("Some evaluation first.\n\n" + section, LABELS) == ["B", "C", "A"]


def test_parse_ranking_uses_last_header() -> None:
    text = (
        "You asked for this format:\nFINAL RANKING:\n1. Response X\n\n"
        "My answer:\nFINAL RANKING:\n1. Response A\n2. Response C\n3. Response B"
    )
    # the echoed template names an unknown label, but only the last section counts
    assert parse_ranking(text, LABELS) == ["A", "C", "B"]


def test_parse_ranking_json_fallback() -> None:
    assert parse_ranking('My ranking: ```json\n{"ranking": ["C", "A", "B"]}\n```', LABELS) == ["C", "A", "B"]
    assert parse_ranking('{"Ranking": ["Response B", "a", "C"]}', LABELS) == ["B", "A", "C"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("FINAL RANKING:\n1. Response C\n2. Response A", "missing B"),
        ("FINAL RANKING:\n1. Response C\n2. Response A\n3. Response C", "twice"),
        ("FINAL RANKING:\n1. Response C\n2. Response D\n3. Response A", "unknown label"),
        ("FINAL RANKING:\n1. Response C\n3. Response A\n2. Response B", "out of order"),
        ("FINAL RANKING:\nC > A > B", "no entries"),
        ("I liked C the most, then A, then B.", "no FINAL RANKING"),
        ('{"ranking": ["C", "A"]}', "missing B"),
        ('{"ranking": ["C", "A", "Z"]}', "unknown label"),
        ('{"order": ["C", "A", "B"]}', "ranking"),
        ('["C", "A", "B"]', "object"),
    ],
)
def test_parse_ranking_errors(text: str, reason: str) -> None:
    with pytest.raises(JudgeParseError, match=reason):
        parse_ranking(text, LABELS)


def test_parse_ranking_rejects_bad_labels_argument() -> None:
    with pytest.raises(ValueError):
        parse_ranking("FINAL RANKING:\n1. A", ["A", "a"])


# ---------------------------------------------------------------------------------------------------------------------
# parse_scores / parse_verdict / parse_score
# ---------------------------------------------------------------------------------------------------------------------


def test_parse_scores_good() -> None:
    text = 'Here are my scores:\n```json\n{"Accuracy": 85, "clarity": "70", "Depth": 92.5}\n```\nOverall solid.'
    assert parse_scores(text, ["accuracy", "Clarity", "depth"]) == {"accuracy": 85.0, "Clarity": 70.0, "depth": 92.5}
    nested = '{"scores": {"accuracy": 0, "clarity": 100}, "rationale": "..."}'
    assert parse_scores(nested, ["accuracy", "clarity"]) == {"accuracy": 0.0, "clarity": 100.0}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"accuracy": 85}', "missing score for 'clarity'"),
        ('{"accuracy": 85, "clarity": 101}', "out of range"),
        ('{"accuracy": -1, "clarity": 50}', "out of range"),
        ('{"accuracy": "high", "clarity": 50}', "not a number"),
        ('{"accuracy": true, "clarity": 50}', "not a number"),
        ('{"accuracy": 1, "Accuracy": 2, "clarity": 50}', "more than once"),
        ("[85, 70]", "object"),
        ("accuracy: 85, clarity: 70", "no JSON"),
    ],
)
def test_parse_scores_errors(text: str, reason: str) -> None:
    with pytest.raises(JudgeParseError, match=reason):
        parse_scores(text, ["accuracy", "clarity"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('After comparing both, {"winner": "A", "reason": "more precise"}', "A"),
        ('```json\n{"Winner": "Response B"}\n```', "B"),
        ('{"winner": "TIE"}', "tie"),
        ("Both are decent, but B cites sources.\n\nWINNER: B", "B"),
        ("Analysis...\n**VERDICT: Response A**\n", "A"),
        ("They are equivalent.\nTIE", "tie"),
        ("Reasoning here.\nverdict: tie.", "tie"),
        ('Notes {"confidence": 0.8}\nWINNER: A', "A"),
    ],
)
def test_parse_verdict_good(text: str, expected: str) -> None:
    assert parse_verdict(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        '{"winner": "C"}',
        '{"winner": "both"}',
        '{"winner": 1}',
        "WINNER: A\nActually I am not sure.",
        "A is better.",
        "WINNER: C",
        "",
    ],
)
def test_parse_verdict_errors(text: str) -> None:
    with pytest.raises(JudgeParseError):
        parse_verdict(text)


def test_parse_score() -> None:
    assert parse_score('The positions are close. {"agreement": 0.8}') == pytest.approx(0.8)
    assert parse_score('{"Agreement": 85}') == pytest.approx(0.85)
    assert parse_score('{"agreement": "1"}') == 1.0
    assert parse_score('{"convergence": 0}', key="convergence") == 0.0
    for bad in ('{"agreement": 150}', '{"agreement": -0.1}', '{"other": 0.5}', '{"agreement": "high"}', "0.8"):
        with pytest.raises(JudgeParseError):
            parse_score(bad)
