"""Judge-reply parsing for ensembles and debates: rankings, rubric scores, pairwise verdicts, single scores.

Everything here is deterministic, side-effect free and standard-library only, and the parsers never guess — a
reply that does not clearly say what is needed raises :class:`JudgeParseError`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

__all__ = [
    "JudgeParseError",
    "extract_json",
    "parse_ranking",
    "parse_score",
    "parse_scores",
    "parse_verdict",
]

_Verdict = Literal["A", "B", "tie"]


class JudgeParseError(ValueError):
    """A judge reply could not be parsed unambiguously; the message says why."""


_FENCE: Final = re.compile(r"```[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)```", re.DOTALL)
_HEADER: Final = re.compile(r"^[\s#>*_]*final\s+ranking[\s*_]*:?[\s*_]*(?P<rest>.*)$", re.IGNORECASE)
_ENTRY: Final = re.compile(
    r"^[\s>*_+-]*"  # markdown: quote, bullet, bold
    r"(?:(?P<num>\d+)\s*[.):]\s*)?"  # "1." / "1)" / "1:"
    r"[*_\s]*(?P<prefix>(?:response|answer)\s+)?"
    r"(?P<label>[A-Za-z0-9]+)(?P<rest>.*)$",
    re.IGNORECASE,
)
_LABEL_PREFIX: Final = re.compile(r"^(?:response|answer)\s+", re.IGNORECASE)
_VERDICT_LINE: Final = re.compile(
    r"^(?:(?:winner|verdict)\s*:\s*(?:response\s+)?(?P<choice>a|b|tie)|(?P<tie>tie))\s*[.!]?$", re.IGNORECASE
)
_MARKDOWN_CHARS: Final = "*_`#> \t"


def _first_json_value(text: str) -> dict[str, Any] | list[Any] | None:
    """The first ``{...}`` or ``[...]`` span of ``text`` that parses as JSON, or None.

    ``JSONDecoder.raw_decode`` started at each opening bracket finds exactly the balanced span (it honours
    strings and escapes) and fails fast on spans that do not parse.
    """
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char not in "{[":
            continue
        try:
            value, _ = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            continue
        if isinstance(value, dict | list):
            return value
    return None


def extract_json(text: str) -> Any:
    """The first JSON object or array in an LLM reply.

    Preference order: a ```json fenced block, any other fenced block, then the first balanced ``{...}``/``[...]``
    span anywhere in the text that parses. Raises :class:`JudgeParseError` if there is none.
    """
    fences = list(_FENCE.finditer(text))
    json_fences = [fence for fence in fences if fence["info"].strip().lower() == "json"]
    other_fences = [fence for fence in fences if fence["info"].strip().lower() != "json"]
    for fence in (*json_fences, *other_fences):
        value = _first_json_value(fence["body"])
        if value is not None:
            return value
    value = _first_json_value(text)
    if value is None:
        raise JudgeParseError("no JSON object or array found")
    return value


def _label_lookup(labels: Sequence[str]) -> dict[str, str]:
    """Map lower-cased labels to the caller's spelling, rejecting duplicates (case-insensitively)."""
    if isinstance(labels, str):
        raise TypeError("labels must be a sequence of labels, not a string")
    lookup = {label.lower(): label for label in labels}
    if len(lookup) != len(labels) or not labels:
        raise ValueError("labels must be non-empty and unique (case-insensitively)")
    return lookup


def _match_label(token: str, lookup: Mapping[str, str]) -> str:
    """Resolve ``"C"``, ``"Response C"`` or ``"**c**"`` to a known label, else raise JudgeParseError."""
    cleaned = _LABEL_PREFIX.sub("", token.strip(_MARKDOWN_CHARS + ".:")).strip(_MARKDOWN_CHARS + ".:")
    label = lookup.get(cleaned.lower())
    if label is None:
        raise JudgeParseError(f"unknown label {token!r}")
    return label


def _check_complete(ranking: Sequence[str], labels: Sequence[str]) -> list[str]:
    """Insist that ``ranking`` contains every label exactly once."""
    seen: set[str] = set()
    for label in ranking:
        if label in seen:
            raise JudgeParseError(f"label {label!r} ranked twice")
        seen.add(label)
    missing = [label for label in labels if label not in seen]
    if missing:
        raise JudgeParseError(f"ranking is missing {', '.join(missing)}")
    return list(ranking)


def _parse_entry(line: str, lookup: Mapping[str, str]) -> tuple[int | None, str] | None:
    """Parse one ranking line into (number or None, label); None if the line is not a ranking entry.

    Numbered (``1. C``) or prefixed (``Response C``) lines may carry trailing commentary; a bare line must be just
    the label. A numbered or prefixed line naming an unknown label raises rather than being skipped.
    """
    match = _ENTRY.match(line)
    if match is None:
        return None
    number = int(match["num"]) if match["num"] is not None else None
    explicit = number is not None or match["prefix"] is not None
    label = lookup.get(match["label"].lower())
    if not explicit:
        bare = match["rest"].strip(_MARKDOWN_CHARS + ".:")
        return (None, label) if label is not None and not bare else None
    if label is None:
        raise JudgeParseError(f"unknown label in ranking line {line.strip()!r}")
    return number, label


def _ranking_section(text: str, lookup: Mapping[str, str]) -> list[str] | None:
    """Labels listed under the last ``FINAL RANKING`` header, or None when there is no such header.

    Lines before the first entry are skipped; the section ends at the first non-entry line after an entry.
    """
    lines = text.splitlines()
    header_index = None
    for index, line in enumerate(lines):
        if _HEADER.match(line):
            header_index = index
    if header_index is None:
        return None
    header = _HEADER.match(lines[header_index])
    assert header is not None
    candidates = [header["rest"], *lines[header_index + 1 :]]
    ranking: list[str] = []
    for line in candidates:
        if not line.strip():
            continue
        entry = _parse_entry(line, lookup)
        if entry is None:
            if ranking:
                break
            continue
        number, label = entry
        if number is not None and number != len(ranking) + 1:
            raise JudgeParseError(f"ranking numbers out of order at {line.strip()!r}")
        ranking.append(label)
    return ranking


def _json_ranking(text: str, lookup: Mapping[str, str]) -> list[str]:
    """Labels from a JSON reply of the form ``{"ranking": ["C", "A", ...]}``."""
    try:
        value = extract_json(text)
    except JudgeParseError:
        raise JudgeParseError("no FINAL RANKING section and no JSON ranking") from None
    if not isinstance(value, dict):
        raise JudgeParseError("JSON ranking must be an object with a 'ranking' list")
    ranking = _get_key(value, "ranking")
    if not isinstance(ranking, list) or not all(isinstance(entry, str) for entry in ranking):
        raise JudgeParseError("'ranking' must be a list of labels")
    return [_match_label(entry, lookup) for entry in ranking]


def parse_ranking(text: str, labels: Sequence[str]) -> list[str]:
    """Parse a judge's ranking of anonymised answers (llm-council style) into labels, best first.

    The reply should contain a ``FINAL RANKING:`` line (any case, optionally in markdown bold or a heading)
    followed by lines such as ``1. Response C``, ``1) Response C``, ``1. C`` or unnumbered ``Response C``. Without
    such a section (or with an empty one) a JSON ``{"ranking": ["C", "A"]}`` is accepted instead. The result must
    contain every label exactly once; anything else raises :class:`JudgeParseError`.
    """
    lookup = _label_lookup(labels)
    ranking = _ranking_section(text, lookup)
    if not ranking:
        try:
            ranking = _json_ranking(text, lookup)
        except JudgeParseError:
            if ranking is not None:
                raise JudgeParseError("FINAL RANKING section has no entries") from None
            raise
    return _check_complete(ranking, labels)


def _get_key(obj: Mapping[str, Any], key: str) -> Any:
    """Case-insensitive key lookup; None when absent, JudgeParseError when ambiguous."""
    matches = [value for name, value in obj.items() if isinstance(name, str) and name.strip().lower() == key.lower()]
    if len(matches) > 1:
        raise JudgeParseError(f"key {key!r} appears more than once")
    return matches[0] if matches else None


def _as_number(value: Any) -> float | None:
    """A finite float from a JSON number or numeric string (``"85"``); None otherwise (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _json_object(text: str) -> dict[str, Any]:
    """The reply's first JSON value, which must be an object."""
    value = extract_json(text)
    if not isinstance(value, dict):
        raise JudgeParseError("expected a JSON object")
    return value


def parse_scores(text: str, criteria: Sequence[str]) -> dict[str, float]:
    """Rubric scores: a JSON object with every criterion (case-insensitive key) as a number in [0, 100].

    The scores may sit at the top level or under a ``"scores"`` key; numeric strings such as ``"85"`` are accepted.
    Returns ``{criterion: score}`` keyed by the caller's spelling.
    """
    obj = _json_object(text)
    nested = _get_key(obj, "scores")
    if isinstance(nested, dict):
        obj = nested
    scores: dict[str, float] = {}
    for criterion in criteria:
        raw = _get_key(obj, criterion)
        if raw is None:
            raise JudgeParseError(f"missing score for {criterion!r}")
        number = _as_number(raw)
        if number is None:
            raise JudgeParseError(f"score for {criterion!r} is not a number: {raw!r}")
        if not 0.0 <= number <= 100.0:
            raise JudgeParseError(f"score for {criterion!r} out of range [0, 100]: {number!r}")
        scores[criterion] = number
    return scores


def _verdict_value(raw: Any) -> _Verdict:
    """Normalise a JSON winner value (``"A"``, ``"response b"``, ``"Tie"``) or raise."""
    if not isinstance(raw, str):
        raise JudgeParseError(f"winner must be a string, got {raw!r}")
    cleaned = _LABEL_PREFIX.sub("", raw.strip(_MARKDOWN_CHARS + ".!")).strip().lower()
    if cleaned == "a":
        return "A"
    if cleaned == "b":
        return "B"
    if cleaned == "tie":
        return "tie"
    raise JudgeParseError(f"winner must be A, B or tie, got {raw!r}")


def _verdict_from_last_line(text: str) -> _Verdict | None:
    """``WINNER: A`` / ``VERDICT: B`` / ``TIE`` on the last non-empty line, else None."""
    lines = [line.strip(_MARKDOWN_CHARS) for line in text.splitlines() if line.strip(_MARKDOWN_CHARS)]
    if not lines:
        return None
    match = _VERDICT_LINE.match(lines[-1])
    if match is None:
        return None
    return _verdict_value(match["choice"] or match["tie"])


def parse_verdict(text: str) -> Literal["A", "B", "tie"]:
    """Pairwise verdict: JSON ``{"winner": "A"|"B"|"tie"}`` or a final ``WINNER: A``/``VERDICT: B``/``TIE`` line.

    A JSON ``winner`` is authoritative (an invalid value raises); otherwise the last non-empty line is checked.
    """
    try:
        value = extract_json(text)
    except JudgeParseError:
        value = None
    if isinstance(value, dict):
        raw = _get_key(value, "winner")
        if raw is not None:
            return _verdict_value(raw)
    verdict = _verdict_from_last_line(text)
    if verdict is None:
        raise JudgeParseError("no verdict found (expected JSON winner or a final WINNER:/VERDICT:/TIE line)")
    return verdict


def parse_score(text: str, key: str = "agreement") -> float:
    """A single score in [0, 1] under ``key`` of a JSON object; values in (1, 100] are read as percentages."""
    raw = _get_key(_json_object(text), key)
    if raw is None:
        raise JudgeParseError(f"missing {key!r}")
    number = _as_number(raw)
    if number is None:
        raise JudgeParseError(f"{key!r} is not a number: {raw!r}")
    if 0.0 <= number <= 1.0:
        return number
    if 1.0 < number <= 100.0:
        return number / 100.0
    raise JudgeParseError(f"{key!r} out of range: {number!r}")
