"""Pure ranking math for ensembles (several LLM answers ranked by judges).

Everything here is deterministic, side-effect free and standard-library only: randomness is injected
(``bootstrap_intervals`` takes an ``rng``). Reading what a judge replied is :mod:`.judging`'s job.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Final

__all__ = [
    "agreement",
    "bootstrap_intervals",
    "borda",
    "bradley_terry",
    "bt_ratings",
    "heuristic_score",
    "order_by",
    "pairs_from_rankings",
    "weighted_score",
]

_Comparison = tuple[str, str, float]


# --------------------------------------------------------------------------------------------------------------------
# Rankings: validation, Borda, pairwise comparisons
# --------------------------------------------------------------------------------------------------------------------


def _check_items(items: Sequence[str]) -> frozenset[str]:
    """Return ``items`` as a set, rejecting duplicates (and a bare string passed by mistake)."""
    if isinstance(items, str):
        raise TypeError("items must be a sequence of item names, not a string")
    known = frozenset(items)
    if len(known) != len(items):
        raise ValueError("items contains duplicates")
    return known


def _check_ranking(ranking: Sequence[str], known: frozenset[str] | None = None) -> None:
    """Reject a ranking with duplicates, or (when ``known`` is given) with items outside ``known``."""
    if isinstance(ranking, str):
        raise TypeError("a ranking must be a sequence of item names, not a string")
    if len(set(ranking)) != len(ranking):
        raise ValueError(f"ranking {list(ranking)!r} contains duplicates")
    if known is not None:
        unknown = [item for item in ranking if item not in known]
        if unknown:
            raise ValueError(f"ranking contains unknown item {unknown[0]!r}")


def borda(rankings: Sequence[Sequence[str]], items: Sequence[str]) -> dict[str, float]:
    """Normalised Borda count over possibly partial rankings.

    In a ranking of ``m >= 2`` items the item at 0-based position ``p`` earns ``(m-1-p)/(m-1)`` points (1 for
    first, 0 for last). An item's score is the mean of its points over the rankings it appears in, 0.0 if it
    appears in none. Rankings of fewer than 2 items carry no order and are skipped (but still validated).
    """
    known = _check_items(items)
    totals = dict.fromkeys(items, 0.0)
    counts = dict.fromkeys(items, 0)
    for ranking in rankings:
        _check_ranking(ranking, known)
        m = len(ranking)
        if m < 2:
            continue
        for position, item in enumerate(ranking):
            totals[item] += (m - 1 - position) / (m - 1)
            counts[item] += 1
    return {item: totals[item] / counts[item] if counts[item] else 0.0 for item in items}


def pairs_from_rankings(rankings: Sequence[Sequence[str]]) -> list[tuple[str, str, float]]:
    """Every ``(a, b, 1.0)`` with ``a`` ranked above ``b`` in some ranking (one entry per ranking and pair)."""
    pairs: list[tuple[str, str, float]] = []
    for ranking in rankings:
        _check_ranking(ranking)
        pairs.extend((above, below, 1.0) for above, below in combinations(ranking, 2))
    return pairs


# --------------------------------------------------------------------------------------------------------------------
# Bradley-Terry
# --------------------------------------------------------------------------------------------------------------------


def _tally(
    comparisons: Sequence[_Comparison], items: Sequence[str], prior: float
) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, int]]]:
    """Validate comparisons and return (wins, losses, games-per-opponent); wins and losses include ``prior``."""
    known = _check_items(items)
    wins = dict.fromkeys(items, prior)
    losses = dict.fromkeys(items, prior)
    games: dict[str, dict[str, int]] = {item: {} for item in items}
    for first, second, outcome in comparisons:
        if first not in known or second not in known:
            raise ValueError(f"comparison ({first!r}, {second!r}) mentions an unknown item")
        if first == second:
            raise ValueError(f"item {first!r} compared with itself")
        if not 0.0 <= outcome <= 1.0:
            raise ValueError(f"outcome {outcome!r} is not in [0, 1]")
        wins[first] += outcome
        losses[first] += 1.0 - outcome
        wins[second] += 1.0 - outcome
        losses[second] += outcome
        games[first][second] = games[first].get(second, 0) + 1
        games[second][first] = games[second].get(first, 0) + 1
    return wins, losses, games


def _normalise(strengths: Mapping[str, float]) -> dict[str, float]:
    """Scale strengths so that their geometric mean is 1."""
    if not strengths:
        return {}
    log_mean = math.fsum(math.log(value) for value in strengths.values()) / len(strengths)
    scale = math.exp(log_mean)
    return {item: value / scale for item, value in strengths.items()}


def bradley_terry(
    comparisons: Sequence[tuple[str, str, float]],
    items: Sequence[str],
    *,
    prior: float = 0.5,
    iterations: int = 200,
    tol: float = 1e-9,
) -> dict[str, float]:
    """Fit Bradley-Terry strengths with the MM algorithm (Hunter 2004), normalised to geometric mean 1.

    ``comparisons`` are ``(first, second, outcome)`` with outcome 1.0 (first won), 0.0 (second won) or 0.5 (tie:
    half a win each; any value in [0, 1] is a fractional win). Each item also gets ``prior`` virtual wins and
    ``prior`` virtual losses against a fixed reference of strength 1, which keeps perfect separation finite and
    leaves a never-compared item at exactly 1.0 before normalisation. With ``prior=0`` the plain MLE is fitted;
    it only exists when every item has at least one win and one loss (checked) and the comparison graph is
    connected (the caller's responsibility).
    """
    if not (math.isfinite(prior) and prior >= 0.0):
        raise ValueError("prior must be a finite number >= 0")
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    wins, losses, games = _tally(comparisons, items, prior)
    if prior == 0.0:
        for item in items:
            if wins[item] <= 0.0 or losses[item] <= 0.0:
                raise ValueError(f"with prior=0 item {item!r} needs at least one win and one loss")
    strengths = dict.fromkeys(items, 1.0)
    for _ in range(iterations):
        updated = {item: wins[item] / _mm_denominator(item, strengths, games[item], prior) for item in items}
        if prior == 0.0:  # no reference item anchors the scale, so pin it each step
            updated = _normalise(updated)
        change = max((abs(updated[item] - strengths[item]) / strengths[item] for item in items), default=0.0)
        strengths = updated
        if change < tol:
            break
    return _normalise(strengths)


def _mm_denominator(item: str, strengths: Mapping[str, float], opponents: Mapping[str, int], prior: float) -> float:
    """The MM update denominator: sum of games / (own + opponent strength), including the virtual reference."""
    own = strengths[item]
    real = math.fsum(count / (own + strengths[other]) for other, count in opponents.items())
    return real + 2.0 * prior / (own + 1.0)


def bt_ratings(strengths: Mapping[str, float]) -> dict[str, float]:
    """Map Bradley-Terry strengths to an Elo-like scale: ``1000 + 400 * log10(strength)``."""
    ratings: dict[str, float] = {}
    for item, strength in strengths.items():
        if not strength > 0.0:
            raise ValueError(f"strength of {item!r} must be positive, got {strength!r}")
        ratings[item] = 1000.0 + 400.0 * math.log10(strength)
    return ratings


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already-sorted, non-empty values."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def bootstrap_intervals(
    comparisons: Sequence[tuple[str, str, float]],
    items: Sequence[str],
    *,
    rounds: int = 200,
    rng: random.Random,
    level: float = 0.95,
    prior: float = 0.5,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each item's rating (``bt_ratings`` scale).

    The comparisons are resampled with replacement ``rounds`` times and Bradley-Terry is refitted on each sample.
    ``prior`` must be positive, since a resample can easily leave an item without a win.
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    if not prior > 0.0:
        raise ValueError("bootstrap needs prior > 0")
    samples: dict[str, list[float]] = {item: [] for item in items}
    for _ in range(rounds):
        sample = rng.choices(comparisons, k=len(comparisons)) if comparisons else []
        for item, rating in bt_ratings(bradley_terry(sample, items, prior=prior)).items():
            samples[item].append(rating)
    tail = (1.0 - level) / 2.0
    intervals: dict[str, tuple[float, float]] = {}
    for item, values in samples.items():
        values.sort()
        intervals[item] = (_quantile(values, tail), _quantile(values, 1.0 - tail))
    return intervals


# --------------------------------------------------------------------------------------------------------------------
# Agreement between judges
# --------------------------------------------------------------------------------------------------------------------


def _kendall_tau(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Kendall's tau on the items both rankings contain; None with fewer than 2 common items."""
    position = {item: index for index, item in enumerate(second)}
    common = [item for item in first if item in position]
    if len(common) < 2:
        return None
    concordant = discordant = 0
    for a, b in combinations(common, 2):  # a is above b in ``first``
        if position[a] < position[b]:
            concordant += 1
        else:
            discordant += 1
    return (concordant - discordant) / (concordant + discordant)


def agreement(rankings: Sequence[Sequence[str]]) -> float | None:
    """Mean pairwise Kendall's tau between rankings, mapped to [0, 1] as ``(tau + 1) / 2``.

    Each pair of rankings is compared on the items both rank; pairs with fewer than 2 common items are skipped.
    Returns None when no pair qualifies (e.g. a single judge).
    """
    for ranking in rankings:
        _check_ranking(ranking)
    taus = [tau for first, second in combinations(rankings, 2) if (tau := _kendall_tau(first, second)) is not None]
    if not taus:
        return None
    return (math.fsum(taus) / len(taus) + 1.0) / 2.0


# --------------------------------------------------------------------------------------------------------------------
# Scores and heuristics
# --------------------------------------------------------------------------------------------------------------------


def weighted_score(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted mean of ``scores`` over the keys of ``weights`` (weights need not sum to 1).

    Scores without a weight are ignored; a weighted key missing from ``scores``, a negative weight or a zero
    total weight raises ValueError.
    """
    if any(weight < 0.0 for weight in weights.values()):
        raise ValueError("weights must be non-negative")
    total = math.fsum(weights.values())
    if total <= 0.0:
        raise ValueError("total weight must be positive")
    missing = [key for key in weights if key not in scores]
    if missing:
        raise ValueError(f"no score for weighted key {missing[0]!r}")
    return math.fsum(scores[key] * weight for key, weight in weights.items()) / total


_WORDS_FOR_FULL_LENGTH: Final = 250
_WORDS_BEFORE_PENALTY: Final = 1200
_PENALTY_SPAN: Final = 2400  # words past the threshold over which the length score falls from 1 to its floor
_PENALTY_FLOOR: Final = 0.5
_WEIGHTS: Final = (("length", 0.4), ("structure", 0.25), ("code", 0.2), ("latency", 0.15))
_CODE_FENCE: Final = re.compile(r"```[^\n]*\n.*?```", re.DOTALL)
_ASKS_FOR_CODE: Final = re.compile(
    r"\b(?:code|coding|functions?|implement\w*|scripts?|python|sql|regexp?|bash)\b", re.IGNORECASE
)
_HEADING: Final = re.compile(r"^ {0,3}(?:#{1,6}\s+\S|\*\*[^*\n]+\*\*:?\s*$)", re.MULTILINE)
_LIST_ITEM: Final = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+\S", re.MULTILINE)
_PARAGRAPH_BREAK: Final = re.compile(r"\n\s*\n")


def _length_feature(words: int) -> float:
    """Saturating length score: ``min(words/250, 1)``, falling linearly past 1200 words to a floor of 0.5."""
    score = min(words / _WORDS_FOR_FULL_LENGTH, 1.0)
    if words > _WORDS_BEFORE_PENALTY:
        score = max(_PENALTY_FLOOR, 1.0 - (words - _WORDS_BEFORE_PENALTY) / _PENALTY_SPAN)
    return score


def _structure_feature(answer: str) -> float:
    """A third each for headings, a bullet/numbered list and several paragraphs (code blocks ignored)."""
    prose = _CODE_FENCE.sub("", answer)
    paragraphs = [chunk for chunk in _PARAGRAPH_BREAK.split(prose) if chunk.strip()]
    signals = (bool(_HEADING.search(prose)), bool(_LIST_ITEM.search(prose)), len(paragraphs) >= 2)
    return sum(signals) / len(signals)


def _code_feature(answer: str, question: str) -> float:
    """1 when code was asked for and given, 0 when asked for and missing, 0.5 when not asked for."""
    asked = "`" in question or bool(_ASKS_FOR_CODE.search(question))
    if not asked:
        return 0.5
    return 1.0 if _CODE_FENCE.search(answer) else 0.0


def _latency_feature(latency: float, fastest: float, slowest: float) -> float:
    """1 for the fastest answer, 0 for the slowest, linear in between (1 when all took the same time)."""
    if fastest > slowest:
        raise ValueError("fastest must not exceed slowest")
    span = slowest - fastest
    if span <= 0.0:
        return 1.0
    return min(max((slowest - latency) / span, 0.0), 1.0)


def heuristic_score(answer: str, *, latency: float, question: str, fastest: float, slowest: float) -> dict[str, float]:
    """No-call ranking features in [0, 1] — length, structure, code, latency — plus their weighted ``total``.

    ``total = 0.4*length + 0.25*structure + 0.2*code + 0.15*latency``; an empty or whitespace answer scores 0
    on every feature.
    """
    speed = _latency_feature(latency, fastest, slowest)  # validates the bounds even for an empty answer
    features = {"length": 0.0, "structure": 0.0, "code": 0.0, "latency": 0.0}
    if answer.strip():
        features = {
            "length": _length_feature(len(answer.split())),
            "structure": _structure_feature(answer),
            "code": _code_feature(answer, question),
            "latency": speed,
        }
    features["total"] = math.fsum(features[name] * weight for name, weight in _WEIGHTS)
    return features


def order_by(scores: Mapping[str, float]) -> list[str]:
    """Keys by descending score; equal scores keep their insertion order."""
    return sorted(scores, key=lambda item: -scores[item])
