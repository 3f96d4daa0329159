from __future__ import annotations

import math
import random

import pytest

from thinktank.deliberation import ranking as rk
from thinktank.deliberation.ranking import (
    agreement,
    bootstrap_intervals,
    borda,
    bradley_terry,
    bt_ratings,
    heuristic_score,
    order_by,
    pairs_from_rankings,
    weighted_score,
)


def test_public_api() -> None:
    assert sorted(rk.__all__) == sorted(
        [
            "agreement",
            "borda",
            "bootstrap_intervals",
            "bradley_terry",
            "bt_ratings",
            "heuristic_score",
            "order_by",
            "pairs_from_rankings",
            "weighted_score",
        ]
    )


# ---------------------------------------------------------------------------------------------------------------------
# Borda
# ---------------------------------------------------------------------------------------------------------------------


def test_borda_hand_computed_with_partial_rankings() -> None:
    rankings = [
        ["A", "B", "C"],  # A 1, B 1/2, C 0
        ["B", "A"],  # B 1, A 0
        ["C", "A", "B", "D"],  # C 1, A 2/3, B 1/3, D 0
        ["E"],  # a single item carries no order: skipped
    ]
    scores = borda(rankings, ["A", "B", "C", "D", "E"])
    assert scores == pytest.approx({"A": 5 / 9, "B": 11 / 18, "C": 0.5, "D": 0.0, "E": 0.0})
    assert list(scores) == ["A", "B", "C", "D", "E"]


def test_borda_no_rankings_gives_zero() -> None:
    assert borda([], ["A", "B"]) == {"A": 0.0, "B": 0.0}


def test_borda_rejects_unknown_and_duplicate_items() -> None:
    with pytest.raises(ValueError, match="unknown"):
        borda([["A", "Z"]], ["A", "B"])
    with pytest.raises(ValueError, match="unknown"):
        borda([["Z"]], ["A", "B"])  # validated even though skipped
    with pytest.raises(ValueError, match="duplicates"):
        borda([["A", "B", "A"]], ["A", "B"])


def test_pairs_from_rankings() -> None:
    assert pairs_from_rankings([["C", "A", "B"], ["A"], ["B", "C"]]) == [
        ("C", "A", 1.0),
        ("C", "B", 1.0),
        ("A", "B", 1.0),
        ("B", "C", 1.0),
    ]
    with pytest.raises(ValueError):
        pairs_from_rankings([["A", "A"]])


# ---------------------------------------------------------------------------------------------------------------------
# Bradley-Terry
# ---------------------------------------------------------------------------------------------------------------------


def _geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def test_bt_recovers_dominance_order() -> None:
    comparisons = (
        [("a", "b", 1.0)] * 4
        + [("b", "a", 1.0)] * 1
        + [("b", "c", 1.0)] * 4
        + [("c", "b", 1.0)] * 1
        + [("a", "c", 1.0)] * 5
    )
    strengths = bradley_terry(comparisons, ["c", "b", "a"])
    assert strengths["a"] > strengths["b"] > strengths["c"]
    assert _geometric_mean(list(strengths.values())) == pytest.approx(1.0)
    assert order_by(strengths) == ["a", "b", "c"]


def test_bt_symmetric_data_gives_equal_strengths() -> None:
    comparisons = [("a", "b", 1.0), ("b", "a", 1.0), ("b", "c", 1.0), ("c", "b", 1.0), ("a", "c", 0.5)]
    strengths = bradley_terry(comparisons, ["a", "b", "c"])
    assert strengths == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})


def test_bt_two_items_mle_ratio_without_prior() -> None:
    # a beat b twice, b beat a once: the MLE has p_a / p_b = 2; geometric mean 1 gives sqrt(2) and 1/sqrt(2).
    strengths = bradley_terry([("a", "b", 1.0), ("a", "b", 1.0), ("b", "a", 1.0)], ["a", "b"], prior=0.0)
    assert strengths["a"] / strengths["b"] == pytest.approx(2.0)
    assert strengths == pytest.approx({"a": math.sqrt(2), "b": 1 / math.sqrt(2)})


def test_bt_ties_count_half_a_win() -> None:
    # one win plus one tie: a has 1.5 wins, b 0.5 -> ratio 3. Outcome 0.0 means the second item won.
    strengths = bradley_terry([("a", "b", 1.0), ("b", "a", 0.5)], ["a", "b"], prior=0.0)
    assert strengths["a"] / strengths["b"] == pytest.approx(3.0)
    reversed_outcome = bradley_terry([("b", "a", 0.0), ("a", "b", 0.5)], ["a", "b"], prior=0.0)
    assert reversed_outcome == pytest.approx(strengths)
    only_ties = bradley_terry([("a", "b", 0.5)] * 3, ["a", "b"], prior=0.0)
    assert only_ties == pytest.approx({"a": 1.0, "b": 1.0})


def test_bt_prior_keeps_perfect_separation_finite_and_shrinks() -> None:
    strong = bradley_terry([("a", "b", 1.0)] * 5, ["a", "b"])
    assert math.isfinite(strong["a"]) and math.isfinite(strong["b"])
    assert strong["a"] > 1.0 > strong["b"]
    weak_prior = bradley_terry([("a", "b", 1.0)] * 5, ["a", "b"], prior=0.1)
    assert weak_prior["a"] / weak_prior["b"] > strong["a"] / strong["b"]


def test_bt_never_compared_item_stays_at_reference() -> None:
    strengths = bradley_terry([("a", "b", 1.0)] * 3, ["a", "b", "c"])
    assert all(math.isfinite(v) and v > 0 for v in strengths.values())
    # a and b are symmetric around the reference (p_a * p_b == 1), so c == 1 both before and after normalisation.
    assert strengths["c"] == pytest.approx(1.0)
    assert strengths["a"] * strengths["b"] == pytest.approx(1.0)
    assert bradley_terry([], ["x", "y"]) == {"x": 1.0, "y": 1.0}


def test_bt_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown"):
        bradley_terry([("a", "z", 1.0)], ["a", "b"])
    with pytest.raises(ValueError, match="itself"):
        bradley_terry([("a", "a", 1.0)], ["a", "b"])
    with pytest.raises(ValueError, match="not in"):
        bradley_terry([("a", "b", 2.0)], ["a", "b"])
    with pytest.raises(ValueError, match="prior"):
        bradley_terry([("a", "b", 1.0)], ["a", "b"], prior=-1.0)
    with pytest.raises(ValueError, match="one win and one loss"):
        bradley_terry([("a", "b", 1.0)], ["a", "b"], prior=0.0)


def test_bt_ratings() -> None:
    assert bt_ratings({"a": 10.0, "b": 1.0, "c": 0.1}) == pytest.approx({"a": 1400.0, "b": 1000.0, "c": 600.0})
    with pytest.raises(ValueError):
        bt_ratings({"a": 0.0})


# ---------------------------------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------------------------------


def _width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def test_bootstrap_contains_point_estimate_and_narrows_with_data() -> None:
    base = [("a", "b", 1.0)] * 3 + [("b", "a", 1.0)] + [("b", "c", 1.0)] * 3 + [("c", "b", 1.0)]
    items = ["a", "b", "c"]
    small = bootstrap_intervals(base, items, rng=random.Random(0))
    large = bootstrap_intervals(base * 10, items, rng=random.Random(0))
    for comparisons, intervals in ((base, small), (base * 10, large)):
        point = bt_ratings(bradley_terry(comparisons, items))
        for item in items:
            low, high = intervals[item]
            assert low <= point[item] <= high
            assert low < high
    for item in items:
        assert _width(large[item]) < _width(small[item])


def test_bootstrap_is_deterministic_given_rng_and_handles_no_data() -> None:
    data = [("a", "b", 1.0), ("b", "a", 1.0), ("a", "b", 1.0)]
    first = bootstrap_intervals(data, ["a", "b"], rounds=50, rng=random.Random(7))
    second = bootstrap_intervals(data, ["a", "b"], rounds=50, rng=random.Random(7))
    assert first == second
    assert bootstrap_intervals([], ["a"], rounds=5, rng=random.Random(0)) == {"a": (1000.0, 1000.0)}
    with pytest.raises(ValueError):
        bootstrap_intervals(data, ["a", "b"], rng=random.Random(0), level=1.0)
    with pytest.raises(ValueError):
        bootstrap_intervals(data, ["a", "b"], rng=random.Random(0), rounds=0)


def test_quantile_interpolates() -> None:
    assert rk._quantile([0.0, 10.0, 20.0, 30.0, 40.0], 0.025) == pytest.approx(1.0)
    assert rk._quantile([5.0], 0.975) == 5.0


# ---------------------------------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------------------------------


def test_agreement_extremes() -> None:
    assert agreement([["A", "B", "C"], ["A", "B", "C"], ["A", "B", "C"]]) == 1.0
    assert agreement([["A", "B", "C"], ["C", "B", "A"]]) == 0.0
    assert agreement([["A", "B", "C"]]) is None
    assert agreement([]) is None


def test_agreement_partial_overlaps() -> None:
    # one discordant pair (B, C) out of three: tau = 1/3 -> 2/3
    assert agreement([["A", "B", "C"], ["A", "C", "B"]]) == pytest.approx(2 / 3)
    # (r1, r2) agree on B>C (tau 1); (r1, r3) disagree on A vs C (tau -1); (r2, r3) share only C: skipped
    assert agreement([["A", "B", "C"], ["B", "C"], ["C", "A"]]) == pytest.approx(0.5)
    # no pair shares two items
    assert agreement([["A", "B"], ["C", "D"], ["A", "C"]]) is None


# ---------------------------------------------------------------------------------------------------------------------
# weighted_score / order_by
# ---------------------------------------------------------------------------------------------------------------------


def test_weighted_score() -> None:
    assert weighted_score({"a": 80.0, "b": 60.0, "c": 0.0}, {"a": 3.0, "b": 1.0}) == pytest.approx(75.0)
    assert weighted_score({"a": 10.0}, {"a": 0.5}) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="total weight"):
        weighted_score({"a": 1.0}, {"a": 0.0})
    with pytest.raises(ValueError, match="total weight"):
        weighted_score({"a": 1.0}, {})
    with pytest.raises(ValueError, match="no score"):
        weighted_score({"a": 1.0}, {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        weighted_score({"a": 1.0, "b": 2.0}, {"a": 2.0, "b": -1.0})


def test_order_by_is_stable_on_ties() -> None:
    assert order_by({"a": 1.0, "b": 3.0, "c": 1.0, "d": 3.0, "e": 2.0}) == ["b", "d", "e", "a", "c"]
    assert order_by({}) == []


# ---------------------------------------------------------------------------------------------------------------------
# heuristic_score
# ---------------------------------------------------------------------------------------------------------------------


def _words(n: int) -> str:
    return " ".join(["word"] * n)


def _h(answer: str, *, question: str = "Explain photosynthesis.", latency: float = 1.0) -> dict[str, float]:
    return heuristic_score(answer, latency=latency, question=question, fastest=1.0, slowest=3.0)


def test_heuristic_empty_answer_scores_zero() -> None:
    assert _h("   \n") == {"length": 0.0, "structure": 0.0, "code": 0.0, "latency": 0.0, "total": 0.0}


def test_heuristic_length() -> None:
    assert _h(_words(125))["length"] == pytest.approx(0.5)
    assert _h(_words(250))["length"] == 1.0
    assert _h(_words(1200))["length"] == 1.0
    assert _h(_words(2400))["length"] == pytest.approx(0.5)
    assert _h(_words(1800))["length"] == pytest.approx(0.75)


def test_heuristic_structure() -> None:
    assert _h("One plain sentence.")["structure"] == 0.0
    rich = "# Overview\n\nIntro paragraph.\n\n- first point\n- second point\n\n1. step one\n"
    assert _h(rich)["structure"] == 1.0
    assert _h("Para one.\n\nPara two.")["structure"] == pytest.approx(1 / 3)
    # list markers inside a code block do not count
    assert _h("```\n- not a list\n```")["structure"] == 0.0


def test_heuristic_code() -> None:
    code_answer = "Here:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert _h(code_answer, question="Write a Python function to add numbers")["code"] == 1.0
    assert _h("Just add them.", question="Implement addition")["code"] == 0.0
    assert _h("Just add them.", question="How does `sorted` work?")["code"] == 0.0
    assert _h("Plants use light.", question="Explain photosynthesis.")["code"] == 0.5
    assert _h(code_answer, question="Explain photosynthesis.")["code"] == 0.5


def test_heuristic_latency() -> None:
    assert _h("ok", latency=1.0)["latency"] == 1.0
    assert _h("ok", latency=3.0)["latency"] == 0.0
    assert _h("ok", latency=2.0)["latency"] == pytest.approx(0.5)
    same = heuristic_score("ok", latency=2.0, question="q", fastest=2.0, slowest=2.0)
    assert same["latency"] == 1.0
    with pytest.raises(ValueError):
        heuristic_score("ok", latency=2.0, question="q", fastest=3.0, slowest=1.0)


def test_heuristic_total_formula() -> None:
    answer = "## Answer\n\n" + _words(125) + "\n\n- a bullet"
    scores = heuristic_score(answer, latency=2.0, question="Explain tides.", fastest=1.0, slowest=3.0)
    words = 125 + 2 + 3  # heading "##", "Answer", bullet "-", "a", "bullet"
    assert scores["length"] == pytest.approx(words / 250)
    assert scores["structure"] == 1.0
    assert scores["code"] == 0.5
    assert scores["latency"] == pytest.approx(0.5)
    expected = 0.4 * words / 250 + 0.25 * 1.0 + 0.2 * 0.5 + 0.15 * 0.5
    assert scores["total"] == pytest.approx(expected)
