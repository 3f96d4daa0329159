"""summarize(): win rates and bootstrap intervals from judged items, Bradley-Terry ranks, the judges' agreement,
latency, cost and pass rates, each checked against numbers worked out by hand (or against the ranking module)."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import numpy as np
import pytest

from thinktank.deliberation import ranking as rk
from thinktank.evals.checks import AnswerRecord, CheckResult
from thinktank.evals.pairwise import PairVerdict, judge_pair
from thinktank.evals.stats import _bt_fit, disagreement, fleiss_kappa, summarize

from .scripted import Judge, coin, first_position, item, mostly

GOOD, BAD = "GOOD answer.", "BAD answer."


def answer(text: str | None = "an answer", *, cost: float = 0.0, latency: float = 10.0,
           error: str | None = None) -> AnswerRecord:
    return AnswerRecord(text=text, error=error if text is None else None, cost_usd=cost, latency_ms=latency,
                        citations=[])


def check(passed: bool | None) -> CheckResult:
    return CheckResult(name="c", type="contains", passed=passed, score=None, reason="")


def v(item_id: str, a: str, b: str, judge: str, outcome: float | None, *, order_dependent: bool = False,
      error: str | None = None, walkover: str | None = None) -> PairVerdict:
    if outcome is None and error is None:
        error = "excluded"
    return PairVerdict(item_id, a, b, judge, outcome, order_dependent, error, walkover)


async def judged(judge: Judge, n: int, *, judge_name: str = "j") -> list[PairVerdict]:
    """``n`` items judged between candidate "good" (answering GOOD) and "bad" (BAD)."""
    return [await judge_pair(judge, judge_name, item(i), "good", GOOD, "bad", BAD) for i in range(n)]


def summary_of(n: int, verdicts: list[PairVerdict], *, candidates: tuple[str, ...] = ("good", "bad"),
               judges: tuple[str, ...] = ("j",), seed: int = 1) -> dict[str, Any]:
    return summarize([item(i) for i in range(n)], list(candidates), list(judges), {}, {}, verdicts,
                     rng=random.Random(seed))


# --------------------------------------------------------------------------------------------------------------------
# Win rates and intervals from scripted judges
# --------------------------------------------------------------------------------------------------------------------


async def test_a_first_position_judge_yields_only_ties() -> None:
    summary = summary_of(12, await judged(first_position(), 12))
    assert summary["order_dependent"] == 12
    assert summary["pairs"] == [{"a": "good", "b": "bad", "n": 12, "wins": 0, "losses": 0, "ties": 12,
                                 "win_rate": 0.5, "ci": [0.5, 0.5]}]
    good, bad = summary["per_candidate"]
    assert (good["win_rate"], bad["win_rate"]) == (0.5, 0.5)
    assert good["rating"] == bad["rating"] == 1000.0
    assert good["rank"] == bad["rank"] == 1


async def test_a_judge_preferring_one_candidate_gives_it_a_win_rate_whose_interval_excludes_one_half() -> None:
    verdicts = await judged(mostly("GOOD", 0.7), 40)
    wins = sum(v.outcome == 1.0 for v in verdicts)
    ties = sum(v.outcome == 0.5 for v in verdicts)
    assert wins + ties == 40 and 15 < wins < 40  # the judge did prefer, but not always
    summary = summary_of(40, verdicts)
    (pair,) = summary["pairs"]
    rate = (wins + 0.5 * ties) / 40
    assert pair | {"ci": None} == {"a": "good", "b": "bad", "n": 40, "wins": wins, "losses": 0, "ties": ties,
                                   "win_rate": round(rate, 4), "ci": None}
    low, high = pair["ci"]
    assert 0.5 < low < rate < high <= 1.0
    good, bad = summary["per_candidate"]
    assert good["win_rate"] == round(rate, 4) and bad["win_rate"] == round(1 - rate, 4)
    assert good["win_ci"] == [low, high]  # two candidates: the pooled rate is the pair's
    assert bad["win_ci"] == pytest.approx([1 - high, 1 - low], abs=1e-4)
    assert bad["win_ci"][1] < 0.5
    assert (good["rank"], bad["rank"]) == (1, 2)
    assert good["rating_ci"][0] > 1000.0 > bad["rating_ci"][1]


async def test_a_coin_flip_judge_over_few_items_gives_an_interval_including_one_half() -> None:
    verdicts = await judged(coin("GOOD", "BAD", seed=0), 8)
    assert not any(v.order_dependent for v in verdicts)  # the coin is the same in both orders
    (pair,) = summary_of(8, verdicts)["pairs"]
    wins = sum(v.outcome == 1.0 for v in verdicts)
    assert (pair["wins"], pair["losses"], pair["win_rate"]) == (wins, 8 - wins, wins / 8)
    low, high = pair["ci"]
    assert low < 0.5 < high


async def test_the_same_seed_gives_the_same_summary() -> None:
    verdicts = await judged(mostly("GOOD", 0.6), 20)
    assert summary_of(20, verdicts, seed=5) == summary_of(20, verdicts, seed=5)


def test_excluded_verdicts_are_dropped_and_the_judges_averaged_per_item() -> None:
    verdicts = [
        v("q0", "good", "bad", "j1", 1.0), v("q0", "good", "bad", "j2", 0.5),  # 0.75: a win
        v("q1", "good", "bad", "j1", 0.0), v("q1", "good", "bad", "j2", None, error="unreadable reply twice"),
        v("q2", "good", "bad", "j1", None, error="the judge failed: boom"),
        v("q2", "good", "bad", "j2", None, error="the judge failed: boom"),
        v("q3", "bad", "good", "j1", 1.0), v("q3", "bad", "good", "j2", 0.5, order_dependent=True),  # turned round
        v("q9", "good", "bad", "j1", 1.0), v("q0", "good", "nobody", "j1", 1.0), v("q0", "good", "bad", "jx", 0.0),
    ]
    summary = summarize([item(i) for i in range(4)], ["good", "bad"], ["j1", "j2"], {}, {}, verdicts,
                        rng=random.Random(0), rounds=300)
    (pair,) = summary["pairs"]
    # per item: q0 0.75, q1 0.0, q3 1 - 0.75 = 0.25; q2 not judged
    assert (pair["n"], pair["wins"], pair["losses"], pair["ties"]) == (3, 1, 2, 0)
    assert pair["win_rate"] == round((0.75 + 0.0 + 0.25) / 3, 4)
    assert summary["excluded"] == [
        {"item": "q1", "a": "good", "b": "bad", "judge": "j2", "reason": "unreadable reply twice"},
        {"item": "q2", "a": "good", "b": "bad", "judge": "j1", "reason": "the judge failed: boom"},
        {"item": "q2", "a": "good", "b": "bad", "judge": "j2", "reason": "the judge failed: boom"},
    ]
    assert summary["order_dependent"] == 1


def test_a_walkover_counts_as_a_win_but_not_in_the_judges_agreement() -> None:
    verdicts = [v("q0", "a", "b", "j1", 1.0, walkover="b gave no answer"),
                v("q0", "a", "b", "j2", 1.0, walkover="b gave no answer"),
                v("q1", "a", "b", "j1", 0.0), v("q1", "a", "b", "j2", 1.0)]
    summary = summarize([item(0), item(1)], ["a", "b"], ["j1", "j2"], {}, {}, verdicts, rng=random.Random(0))
    assert summary["pairs"][0]["win_rate"] == 0.75  # q0 1.0, q1 0.5
    assert summary["judge_agreement"]["pairwise"] == [{"a": "j1", "b": "j2", "n": 1, "agreement": 0.0}]


# --------------------------------------------------------------------------------------------------------------------
# Bradley-Terry
# --------------------------------------------------------------------------------------------------------------------


def test_bradley_terry_ranks_and_ratings() -> None:
    rng = random.Random(4)
    beats = {("strong", "mid"): 0.75, ("strong", "weak"): 0.9, ("mid", "weak"): 0.7}
    verdicts = [v(f"q{i}", a, b, "j", 1.0 if rng.random() < p else 0.0) for i in range(30) for (a, b), p in
                beats.items()]
    candidates = ["weak", "mid", "strong"]  # not in rank order
    summary = summarize([item(i) for i in range(30)], candidates, ["j"], {}, {}, verdicts, rng=random.Random(2))
    rows = {row["candidate"]: row for row in summary["per_candidate"]}
    assert [rows[c]["rank"] for c in ("strong", "mid", "weak")] == [1, 2, 3]
    comparisons = []
    for verdict in verdicts:  # as summarize sees them: a before b in the candidates' order
        a, b, outcome = verdict.a, verdict.b, verdict.outcome
        assert outcome is not None
        comparisons.append((b, a, 1.0 - outcome))
    expected = rk.bt_ratings(rk.bradley_terry(comparisons, candidates))
    for candidate in candidates:
        low, high = rows[candidate]["rating_ci"]
        assert rows[candidate]["rating"] == round(expected[candidate], 1)
        assert low < rows[candidate]["rating"] < high
    assert rows["strong"]["rating"] > rows["mid"]["rating"] > rows["weak"]["rating"]
    pooled = [x.outcome if x.a == "strong" else 1.0 - x.outcome for x in verdicts
              if x.outcome is not None and "strong" in (x.a, x.b)]
    assert rows["strong"]["win_rate"] == round(sum(pooled) / len(pooled), 4)


def test_the_vectorised_fit_is_the_ranking_modules_bradley_terry() -> None:
    rng = random.Random(9)
    names = ["a", "b", "c", "d"]
    for _ in range(5):
        comparisons = [(x, y, rng.choice([0.0, 0.5, 1.0])) for x, y in itertools.combinations(names, 2)
                       for _ in range(rng.randrange(0, 6))]
        wins = np.zeros((1, 4))
        games = np.zeros((1, 4, 4))
        for x, y, outcome in comparisons:
            i, j = names.index(x), names.index(y)
            wins[0, i] += outcome
            wins[0, j] += 1.0 - outcome
            games[0, i, j] += 1
            games[0, j, i] += 1
        fitted = _bt_fit(wins, games)[0]
        expected = rk.bradley_terry(comparisons, names)
        for index, name in enumerate(names):
            assert math.isclose(fitted[index], expected[name], rel_tol=1e-7)


# --------------------------------------------------------------------------------------------------------------------
# Agreement between judges
# --------------------------------------------------------------------------------------------------------------------


def test_two_judges_agreement_and_kappa_by_hand() -> None:
    first, second = [1.0, 1.0, 0.5, 0.0], [1.0, 0.0, 0.5, 0.0]
    verdicts = [v(f"q{i}", "a", "b", judge, outcome) for judge, outcomes in (("j1", first), ("j2", second))
                for i, outcome in enumerate(outcomes)]
    agreement = summarize([item(i) for i in range(4)], ["a", "b"], ["j1", "j2"], {}, {}, verdicts,
                          rng=random.Random(0))["judge_agreement"]
    # 3 of 4 units agree. Fleiss: categories (a, tie, b) shares 3/8, 2/8, 3/8 -> P_e = 22/64; unit agreements
    # 1, 0, 1, 1 -> P = 3/4; kappa = (3/4 - 22/64) / (1 - 22/64) = 26/42.
    assert agreement == {"judges": ["j1", "j2"], "pairwise": [{"a": "j1", "b": "j2", "n": 4, "agreement": 0.75}],
                         "fleiss_kappa": round(26 / 42, 4), "n": 4}


def test_three_judges_agreement_and_kappa_by_hand() -> None:
    outcomes: dict[str, list[float | None]] = {
        "j1": [1.0, 1.0, 0.0, 0.5], "j2": [1.0, 1.0, 0.5, 0.5], "j3": [1.0, 0.5, 0.0, None]}
    verdicts = [v(f"q{i}", "a", "b", judge, outcome) for judge, row in outcomes.items()
                for i, outcome in enumerate(row)]
    agreement = summarize([item(i) for i in range(4)], ["a", "b"], list(outcomes), {}, {}, verdicts,
                          rng=random.Random(0))["judge_agreement"]
    # Units every judge decided: q0 (3, 0, 0), q1 (2, 1, 0), q2 (0, 1, 2). Shares 5/9, 2/9, 2/9 -> P_e = 33/81;
    # unit agreements 1, 1/3, 1/3 -> P = 5/9; kappa = (45/81 - 33/81) / (48/81) = 1/4.
    assert agreement["fleiss_kappa"] == 0.25
    assert agreement["n"] == 3
    assert agreement["pairwise"] == [
        {"a": "j1", "b": "j2", "n": 4, "agreement": 0.75},  # q3 too
        {"a": "j1", "b": "j3", "n": 3, "agreement": round(2 / 3, 4)},
        {"a": "j2", "b": "j3", "n": 3, "agreement": round(1 / 3, 4)},
    ]


def test_agreement_extremes_and_a_single_judge() -> None:
    items = [item(i) for i in range(3)]
    opposite = [v(f"q{i}", "a", "b", "j1", 1.0) for i in range(3)] + [v(f"q{i}", "a", "b", "j2", 0.0)
                                                                       for i in range(3)]
    agreement = summarize(items, ["a", "b"], ["j1", "j2"], {}, {}, opposite, rng=random.Random(0))["judge_agreement"]
    assert (agreement["pairwise"][0]["agreement"], agreement["fleiss_kappa"]) == (0.0, -1.0)
    same = [v(f"q{i}", "a", "b", j, 0.5) for i in range(3) for j in ("j1", "j2")]
    agreement = summarize(items, ["a", "b"], ["j1", "j2"], {}, {}, same, rng=random.Random(0))["judge_agreement"]
    assert (agreement["pairwise"][0]["agreement"], agreement["fleiss_kappa"]) == (1.0, None)  # kappa undefined
    alone = [v(f"q{i}", "a", "b", "j1", 1.0) for i in range(3)]
    assert summarize(items, ["a", "b"], ["j1"], {}, {}, alone, rng=random.Random(0))["judge_agreement"] is None


def test_fleiss_kappa_needs_the_same_number_of_ratings_per_subject() -> None:
    assert fleiss_kappa([]) is None
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[2, 0], [1, 0]])


# --------------------------------------------------------------------------------------------------------------------
# Answers: latency, cost, pass rate
# --------------------------------------------------------------------------------------------------------------------


def test_latency_cost_and_pass_rate_by_hand() -> None:
    items = [item(i) for i in range(23)]
    latencies = list(range(1, 21))
    random.Random(3).shuffle(latencies)
    answers = {(f"q{i}", "m"): answer(cost=0.001, latency=float(latency)) for i, latency in enumerate(latencies)}
    answers |= {("q20", "m"): answer(None, cost=0.0005, latency=999.0, error="boom"),
                ("q21", "m"): answer(None, cost=0.0005, latency=999.0, error="boom"),
                ("q0", "n"): answer(latency=7.0, cost=0.25)}
    checks = {("q0", "m"): [check(True), check(True)],  # passed
              ("q1", "m"): [check(True), check(None)],  # not passed: one could not be evaluated
              ("q2", "m"): [check(False)],  # failed
              ("q20", "m"): [check(False)]}  # a failed answer: not counted (not answered)
    summary = summarize(items, ["m", "n"], [], answers, checks, [], rng=random.Random(0))
    m, n = summary["per_candidate"]
    assert m == {
        "candidate": "m", "answered": 20, "failed": 2, "pass_rate": round(1 / 3, 4),
        "checks_passed": 3, "checks_total": 5, "checks_unknown": 1,
        "latency_mean_ms": 10.5, "latency_p95_ms": 19.0,  # nearest rank: the ceil(0.95 * 20) = 19th value
        "cost_total_usd": 0.021, "cost_per_answer_usd": 0.00105,
        "win_rate": None, "win_ci": None, "rating": None, "rating_ci": None, "rank": None,
    }
    assert (n["answered"], n["failed"], n["pass_rate"], n["latency_mean_ms"], n["latency_p95_ms"]) == (
        1, 0, None, 7.0, 7.0)  # no checks: no pass rate
    assert (n["cost_total_usd"], n["cost_per_answer_usd"]) == (0.25, 0.25)
    assert (summary["items"], summary["answered_items"]) == (23, 20)
    assert (summary["pairs"], summary["judge_agreement"], summary["excluded"], summary["order_dependent"]) == (
        [], None, [], 0)


@pytest.mark.parametrize(("n", "p95"), [(1, 1.0), (10, 10.0), (19, 19.0), (21, 20.0), (100, 95.0)])
def test_p95_is_the_nearest_rank(n: int, p95: float) -> None:
    answers = {(f"q{i}", "m"): answer(latency=float(i + 1)) for i in range(n)}
    summary = summarize([item(i) for i in range(n)], ["m"], [], answers, {}, [], rng=random.Random(0))
    assert summary["per_candidate"][0]["latency_p95_ms"] == p95


def test_the_summary_has_the_specified_shape() -> None:
    answers = {("q0", "a"): answer(), ("q0", "b"): answer()}
    summary = summarize([item(0)], ["a", "b"], ["j"], answers, {}, [v("q0", "a", "b", "j", 1.0)],
                        rng=random.Random(0), rounds=50)
    assert set(summary) == {"items", "answered_items", "candidates", "judges", "per_candidate", "pairs",
                            "judge_agreement", "excluded", "order_dependent"}
    assert set(summary["per_candidate"][0]) == {
        "candidate", "answered", "failed", "pass_rate", "checks_passed", "checks_total", "checks_unknown",
        "latency_mean_ms", "latency_p95_ms", "cost_total_usd", "cost_per_answer_usd", "win_rate", "win_ci",
        "rating", "rating_ci", "rank"}
    assert set(summary["pairs"][0]) == {"a", "b", "n", "wins", "losses", "ties", "win_rate", "ci"}
    with pytest.raises(ValueError, match="rounds"):
        summarize([item(0)], ["a"], [], {}, {}, [], rng=random.Random(0), rounds=0)


def test_a_candidate_never_judged_has_no_rating() -> None:
    verdicts = [v("q0", "a", "b", "j", 1.0), v("q0", "a", "c", "j", None), v("q0", "b", "c", "j", None)]
    summary = summarize([item(0)], ["a", "b", "c"], ["j"], {}, {}, verdicts, rng=random.Random(0), rounds=50)
    rows = {row["candidate"]: row for row in summary["per_candidate"]}
    assert (rows["a"]["rank"], rows["b"]["rank"]) == (1, 2)
    assert (rows["c"]["win_rate"], rows["c"]["rating"], rows["c"]["rank"]) == (None, None, None)
    assert [(p["a"], p["b"], p["n"], p["win_rate"], p["ci"]) for p in summary["pairs"][1:]] == [
        ("a", "c", 0, None, None), ("b", "c", 0, None, None)]


def test_disagreement() -> None:
    same = {"a": [check(True)], "b": [check(True)]}
    assert not disagreement(same, [v("q", "a", "b", "j1", 1.0), v("q", "a", "b", "j2", 1.0)])
    assert disagreement({"a": [check(True)], "b": [check(False)]}, [])
    assert disagreement(same, [v("q", "a", "b", "j1", 1.0), v("q", "a", "b", "j2", 0.5)])
    assert not disagreement(same, [v("q", "a", "b", "j1", 0.5, order_dependent=True)])  # one judge's tie
    assert not disagreement(same, [v("q", "a", "b", "j1", 1.0), v("q", "a", "b", "j2", None)])
