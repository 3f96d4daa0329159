"""The summary of an evaluation: per-candidate pass rates, latency and cost; pairwise win rates with bootstrap
intervals; Bradley-Terry ratings; the judges' agreement.

Definitions (the ``summary`` object of the evaluation's result, see ``EVAL_SPEC.md``):

- **Answered**: a candidate's record on an item whose ``text`` is not None (``failed``: text None). ``answered_items``
  counts items at least one candidate answered.
- **Pass rate**: among the items a candidate answered *that have checks*, the share whose checks all passed. A
  check that could not be evaluated (``passed=None``) counts as not passed and is also counted in
  ``checks_unknown``. An item without checks has nothing to pass and is left out (None when no item has checks).
- **Latency** mean and p95 (nearest rank) over the answered items; **cost** total over every record (a failed call
  may cost too) and per answer (total / answered).
- **Win rates**: a pair's outcome on an item (1 = ``a`` better, 0 = ``b`` better, 0.5 = tie) is the mean over the
  judges whose verdict was not excluded; the pair's win rate is the mean over the items it was judged on, and a
  candidate's pooled win rate the mean over every (item, opponent) it was judged on. ``wins``/``losses``/``ties``
  count items whose mean outcome is above / below / exactly one half.
- **Intervals**: 95 % percentile bootstrap over the judged items (the items are resampled with replacement, every
  statistic computed on the same resamples); the Bradley-Terry rating's interval comes from refitting on each
  resample. The randomness is the injected ``rng`` only.
- **Bradley-Terry**: one comparison per (item, pair) with its mean outcome, fitted with
  :func:`thinktank.deliberation.ranking.bradley_terry` (prior 0.5), on the Elo-like scale of
  :func:`~thinktank.deliberation.ranking.bt_ratings`; rank 1 is the best (equal ratings share a rank).
- **Agreement** (two judges or more): over the (item, pair) units, each judge's outcome is one of three categories
  (``a`` / tie / ``b``); pairwise percent agreement over the units both judges decided, and Fleiss' kappa over the
  units every judge decided (None when undefined: no such unit, or every verdict in one category). Walkovers (a
  candidate had no answer) were not given by a judge and are left out of the agreement.

The bootstrap is vectorised with numpy (imported when a summary with judging is made): a whole summary with 1000
rounds takes about 30 ms of CPU for 300 items x 3 candidates x 2 judges, and about 0.5 s at the limits (2,000
items x 8 candidates); ``bench/evals_bootstrap.py`` measures it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from typing import TYPE_CHECKING, Any

from ..deliberation import ranking as rk
from .checks import AnswerRecord, CheckResult
from .dataset import EvalItem
from .pairwise import PairVerdict

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    _Array = npt.NDArray[np.float64]

__all__ = ["disagreement", "fleiss_kappa", "summarize"]

_LEVEL = 0.95
_PRIOR = 0.5  # Bradley-Terry's virtual wins and losses: rk.bradley_terry's default
_ITERATIONS = 200
_TOL = 1e-9

_Pair = tuple[str, str]


def _rate(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _interval(bounds: tuple[float, float] | None, digits: int = 4) -> list[float] | None:
    return None if bounds is None else [round(bounds[0], digits), round(bounds[1], digits)]


def _p95(values: Sequence[float]) -> float | None:
    """The 95th percentile by nearest rank: the smallest value with at least 95 % of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(_LEVEL * len(ordered)) - 1, 0)]


# --------------------------------------------------------------------------------------------------------------------
# Answers and checks
# --------------------------------------------------------------------------------------------------------------------


def _candidate_answers(candidate: str, item_ids: Sequence[str], answers: Mapping[tuple[str, str], AnswerRecord],
                       checks: Mapping[tuple[str, str], Sequence[CheckResult]]) -> dict[str, Any]:
    records = [record for item in item_ids if (record := answers.get((item, candidate))) is not None]
    answered = [item for item in item_ids if (record := answers.get((item, candidate))) and record.text is not None]
    latencies = [answers[(item, candidate)].latency_ms for item in answered]
    cost = math.fsum(record.cost_usd for record in records)
    passed = total = unknown = checked_items = passed_items = 0
    for item in answered:
        results = checks.get((item, candidate)) or []
        if not results:
            continue
        checked_items += 1
        passed_items += all(result.passed is True for result in results)
        passed += sum(result.passed is True for result in results)
        unknown += sum(result.passed is None for result in results)
        total += len(results)
    return {
        "candidate": candidate, "answered": len(answered), "failed": len(records) - len(answered),
        "pass_rate": _rate(passed_items / checked_items) if checked_items else None,
        "checks_passed": passed, "checks_total": total, "checks_unknown": unknown,
        "latency_mean_ms": round(math.fsum(latencies) / len(latencies), 3) if latencies else None,
        "latency_p95_ms": None if (p95 := _p95(latencies)) is None else round(p95, 3),
        "cost_total_usd": round(cost, 10),
        "cost_per_answer_usd": round(cost / len(answered), 10) if answered else None,
        "win_rate": None, "win_ci": None, "rating": None, "rating_ci": None, "rank": None,
    }


# --------------------------------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------------------------------


def _usable_verdicts(verdicts: Sequence[PairVerdict], item_ids: Sequence[str], candidates: Sequence[str],
                     judges: Sequence[str]) -> list[PairVerdict]:
    """Verdicts on known items, candidates and judges, each with ``a`` before ``b`` in the candidates' order (a
    reversed one is turned round); a later verdict on the same (item, pair, judge) replaces an earlier one."""
    position = {candidate: index for index, candidate in enumerate(candidates)}
    known_items, known_judges = set(item_ids), set(judges)
    kept: dict[tuple[str, str, str, str], PairVerdict] = {}
    for given in verdicts:
        verdict = given
        if (verdict.item not in known_items or verdict.judge not in known_judges or verdict.a == verdict.b
                or verdict.a not in position or verdict.b not in position):
            continue
        if position[verdict.a] > position[verdict.b]:
            flipped = None if verdict.outcome is None else 1.0 - verdict.outcome
            verdict = replace(verdict, a=verdict.b, b=verdict.a, outcome=flipped)
        kept[(verdict.item, verdict.a, verdict.b, verdict.judge)] = verdict
    return list(kept.values())


@dataclass(frozen=True)
class _Units:
    """The judged (item, pair) units: each one's outcome averaged over the judges whose verdict counted."""

    items: list[str]  # judged items, in the dataset's order
    outcome: dict[tuple[str, _Pair], float]


def _units(item_ids: Sequence[str], verdicts: Sequence[PairVerdict]) -> _Units:
    collected: dict[tuple[str, _Pair], list[float]] = {}
    for verdict in verdicts:
        if verdict.outcome is not None:
            collected.setdefault((verdict.item, (verdict.a, verdict.b)), []).append(verdict.outcome)
    outcome = {key: math.fsum(values) / len(values) for key, values in collected.items()}
    judged = {item for item, _ in outcome}
    return _Units([item for item in item_ids if item in judged], outcome)


# --------------------------------------------------------------------------------------------------------------------
# The bootstrap (numpy, vectorised over the rounds)
# --------------------------------------------------------------------------------------------------------------------


def _percentiles(samples: _Array) -> list[tuple[float, float] | None]:
    """The 95 % percentile interval of each column of ``samples`` (NaN entries, undefined rounds, ignored)."""
    import numpy as np

    tail = (1.0 - _LEVEL) / 2.0 * 100.0
    intervals: list[tuple[float, float] | None] = []
    for column in samples.T:
        finite = column[np.isfinite(column)]
        if finite.size == 0:
            intervals.append(None)
            continue
        low, high = np.percentile(finite, [tail, 100.0 - tail])  # linear interpolation, as ranking's quantile
        intervals.append((float(low), float(high)))
    return intervals


def _bt_fit(wins: _Array, games: _Array, *, prior: float = _PRIOR) -> _Array:
    """Bradley-Terry strengths for many data sets at once, exactly :func:`rk.bradley_terry`'s model and MM steps.

    ``wins[r, i]``: item ``i``'s (fractional) wins in data set ``r``; ``games[r, i, j]``: its games against ``j``.
    Each item also has ``prior`` virtual wins and losses against a reference of strength 1. Returns strengths
    normalised to geometric mean 1 per data set, shape ``(r, k)``.
    """
    import numpy as np

    total_wins = wins + prior
    strengths = np.ones_like(wins)
    for _ in range(_ITERATIONS):
        pair_sums = strengths[:, :, None] + strengths[:, None, :]
        denominator = (games / pair_sums).sum(axis=2) + 2.0 * prior / (strengths + 1.0)
        updated = total_wins / denominator
        change = float(np.max(np.abs(updated - strengths) / strengths)) if updated.size else 0.0
        strengths = updated
        if change < _TOL:
            break
    scale = np.exp(np.log(strengths).mean(axis=1, keepdims=True))
    normalised: _Array = strengths / scale
    return normalised


@dataclass(frozen=True)
class _Intervals:
    pairs: list[tuple[float, float] | None]
    candidates: list[tuple[float, float] | None]
    ratings: list[tuple[float, float] | None]


def _bootstrap(units: _Units, candidates: Sequence[str], pairs: Sequence[_Pair], rng: random.Random,
               rounds: int) -> _Intervals:
    """Resample the judged items ``rounds`` times; intervals of the pairs' and candidates' win rates and ratings."""
    import numpy as np

    n, k, p = len(units.items), len(candidates), len(pairs)
    index = {candidate: i for i, candidate in enumerate(candidates)}
    won = np.zeros((n, p))  # a's outcome on the item, per pair
    played = np.zeros((n, p))  # 1 where the pair was judged on the item
    for row, item in enumerate(units.items):
        for column, pair in enumerate(pairs):
            outcome = units.outcome.get((item, pair))
            if outcome is not None:
                won[row, column] = outcome
                played[row, column] = 1.0
    first = np.zeros((p, k))  # pair -> its a
    second = np.zeros((p, k))  # pair -> its b
    for column, (a, b) in enumerate(pairs):
        first[column, index[a]] = 1.0
        second[column, index[b]] = 1.0
    generator = np.random.default_rng(rng.getrandbits(64))
    draws = generator.integers(0, n, size=(rounds, n)) + np.arange(rounds)[:, None] * n
    counts = np.bincount(draws.ravel(), minlength=rounds * n).reshape(rounds, n).astype(np.float64)  # times drawn
    pair_won, pair_played = counts @ won, counts @ played  # (rounds, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        pair_rates = np.where(pair_played > 0, pair_won / pair_played, np.nan)
        candidate_won = pair_won @ first + (pair_played - pair_won) @ second  # (rounds, k)
        candidate_played = pair_played @ (first + second)
        candidate_rates = np.where(candidate_played > 0, candidate_won / candidate_played, np.nan)
    games = np.zeros((rounds, k, k))
    for column, (a, b) in enumerate(pairs):
        games[:, index[a], index[b]] += pair_played[:, column]
        games[:, index[b], index[a]] += pair_played[:, column]
    strengths = _bt_fit(candidate_won, games)
    ratings = np.array([list(rk.bt_ratings(dict(zip(candidates, row, strict=True))).values())
                        for row in strengths.tolist()])
    return _Intervals(_percentiles(pair_rates), _percentiles(candidate_rates), _percentiles(ratings))


# --------------------------------------------------------------------------------------------------------------------
# Win rates, ratings, ranks
# --------------------------------------------------------------------------------------------------------------------


def _ranks(ratings: Mapping[str, float]) -> dict[str, int]:
    """Competition ranks by descending rating (at the reported precision): 1, 1, 3, ..."""
    shown = {candidate: round(rating, 1) for candidate, rating in ratings.items()}
    return {candidate: 1 + sum(other > rating for other in shown.values()) for candidate, rating in shown.items()}


def _judging(units: _Units, candidates: Sequence[str], per_candidate: list[dict[str, Any]], rng: random.Random,
             rounds: int) -> list[dict[str, Any]]:
    """Fill in the candidates' win rates, ratings and ranks; return the pairs' rows."""
    pairs = list(combinations(candidates, 2))
    intervals = _bootstrap(units, candidates, pairs, rng, rounds) if units.items else None
    rows: list[dict[str, Any]] = []
    for column, (a, b) in enumerate(pairs):
        outcomes = [units.outcome[(item, (a, b))] for item in units.items if (item, (a, b)) in units.outcome]
        rows.append({
            "a": a, "b": b, "n": len(outcomes), "wins": sum(o > 0.5 for o in outcomes),
            "losses": sum(o < 0.5 for o in outcomes), "ties": sum(o == 0.5 for o in outcomes),
            "win_rate": _rate(math.fsum(outcomes) / len(outcomes)) if outcomes else None,
            "ci": _interval(intervals.pairs[column]) if intervals and outcomes else None,
        })
    comparisons = [(a, b, outcome) for (_, (a, b)), outcome in units.outcome.items()]
    compared = {name for a, b, _ in comparisons for name in (a, b)}
    ratings = rk.bt_ratings(rk.bradley_terry(comparisons, candidates, prior=_PRIOR))
    ranks = _ranks({candidate: ratings[candidate] for candidate in candidates if candidate in compared})
    scores: dict[str, list[float]] = {candidate: [] for candidate in candidates}  # its outcome, per unit
    for a, b, outcome in comparisons:
        scores[a].append(outcome)
        scores[b].append(1.0 - outcome)
    for position, (candidate, row) in enumerate(zip(candidates, per_candidate, strict=True)):
        if candidate not in compared:
            continue
        assert intervals is not None  # a compared candidate means judged items
        won = scores[candidate]
        row.update(
            win_rate=_rate(math.fsum(won) / len(won)), win_ci=_interval(intervals.candidates[position]),
            rating=round(ratings[candidate], 1), rating_ci=_interval(intervals.ratings[position], 1),
            rank=ranks[candidate],
        )
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Agreement between judges
# --------------------------------------------------------------------------------------------------------------------


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa of a subjects-by-categories table of rating counts (every subject rated by the same number
    of raters, at least two). None when undefined: no subject, or every rating in one category."""
    if not table:
        return None
    raters = sum(table[0])
    if raters < 2 or any(sum(row) != raters for row in table):
        raise ValueError("every subject needs the same number of ratings, at least two")
    subjects = len(table)
    shares = [sum(row[j] for row in table) / (subjects * raters) for j in range(len(table[0]))]
    observed = math.fsum((sum(c * c for c in row) - raters) / (raters * (raters - 1)) for row in table) / subjects
    expected = math.fsum(share * share for share in shares)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def _agreement(judges: Sequence[str], verdicts: Sequence[PairVerdict]) -> dict[str, Any] | None:
    if len(judges) < 2:
        return None
    decided: dict[tuple[str, str, str], dict[str, float]] = {}
    for verdict in verdicts:
        if verdict.outcome is not None and verdict.walkover is None:
            decided.setdefault((verdict.item, verdict.a, verdict.b), {})[verdict.judge] = verdict.outcome
    pairwise: list[dict[str, Any]] = []
    for first, second in combinations(judges, 2):
        both = [(unit[first], unit[second]) for unit in decided.values() if first in unit and second in unit]
        same = sum(x == y for x, y in both)
        pairwise.append({"a": first, "b": second, "n": len(both),
                         "agreement": _rate(same / len(both)) if both else None})
    table: list[list[int]] = []  # per unit every judge decided: how many said a, tie, b
    for unit in decided.values():
        if len(unit) == len(judges):
            row = [0, 0, 0]
            for outcome in unit.values():
                row[0 if outcome > 0.5 else 2 if outcome < 0.5 else 1] += 1
            table.append(row)
    kappa = fleiss_kappa(table)
    return {"judges": list(judges), "pairwise": pairwise, "fleiss_kappa": _rate(kappa), "n": len(table)}


def disagreement(checks_by_candidate: Mapping[str, Sequence[CheckResult]], verdicts: Sequence[PairVerdict]) -> bool:
    """An item's ``disagreement`` flag: the candidates' check results differ, or the judges' verdicts on a pair are
    not all the same. Excluded verdicts are ignored; an order-dependent verdict is one judge's tie, not a
    disagreement (with one judge and close answers nearly every item would be one, and the filter would show
    them all)."""
    per_pair: dict[tuple[str, str], set[float]] = {}
    for verdict in verdicts:
        if verdict.outcome is not None:
            per_pair.setdefault((verdict.a, verdict.b), set()).add(verdict.outcome)
    if any(len(values) > 1 for values in per_pair.values()):
        return True
    passed = {tuple(result.passed for result in results) for results in checks_by_candidate.values()}
    return len(passed) > 1


# --------------------------------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------------------------------


def summarize(items: Sequence[EvalItem], candidates: Sequence[str], judges: Sequence[str],
              answers: Mapping[tuple[str, str], AnswerRecord],
              checks: Mapping[tuple[str, str], Sequence[CheckResult]],
              verdicts: Sequence[PairVerdict], *, rng: random.Random, rounds: int = 1000) -> dict[str, Any]:
    """The evaluation's ``summary`` (see the module's docstring). ``answers`` and ``checks`` are keyed by
    (item id, candidate); anything missing (a partial run) is simply not counted. Verdicts naming an unknown
    item, candidate or judge are ignored. Without judges (or with one candidate) the win rates, ratings and
    ranks are None and ``pairs`` is empty."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    if len(set(candidates)) != len(candidates):
        raise ValueError("candidates contains duplicates")
    item_ids = [item.id for item in items]
    usable = _usable_verdicts(verdicts, item_ids, candidates, judges)
    per_candidate = [_candidate_answers(candidate, item_ids, answers, checks) for candidate in candidates]
    answered_items = sum(
        any((record := answers.get((item, c))) is not None and record.text is not None for c in candidates)
        for item in item_ids
    )
    judged = bool(judges) and len(candidates) >= 2
    pairs = _judging(_units(item_ids, usable), candidates, per_candidate, rng, rounds) if judged else []
    excluded = [{"item": v.item, "a": v.a, "b": v.b, "judge": v.judge, "reason": v.error}
                for v in usable if v.outcome is None]
    return {
        "items": len(item_ids), "answered_items": answered_items, "candidates": list(candidates),
        "judges": list(judges), "per_candidate": per_candidate, "pairs": pairs,
        "judge_agreement": _agreement(judges, usable), "excluded": excluded,
        "order_dependent": sum(v.order_dependent for v in usable),
    }
