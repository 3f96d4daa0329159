"""What the checks read out of an answer's text: its last number, the JSON it holds, its citation markers."""

from __future__ import annotations

import math
import re
from typing import Any, Final

import orjson

__all__ = ["NoJSON", "answer_json", "citation_markers", "last_number"]

_NUMBER: Final = re.compile(
    r"(?<![\w.])"  # not the tail of a word or of a version ("H2O", "v1.2"); so "10-20" ends with 20, not -20
    r"(?P<sign>[-+\u2212])?"
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<exponent>[eE][-+]?\d+)?"
)
_MARKER: Final = re.compile(r"\[(\d{1,4}(?:\s*[,;]\s*\d{1,4})*)\]")


def last_number(text: str) -> float | None:
    """The last number written in ``text``: ``1,234.5`` → 1234.5, ``-3e2`` → -300, ``42%`` → 42 (a percent
    sign is read as part of the number's unit, not as a factor); None when there is no finite one."""
    found = None
    for found in _NUMBER.finditer(text):  # noqa: B007 - the last one is wanted
        pass
    if found is None:
        return None
    sign = found["sign"]
    literal = found["digits"].replace(",", "") + (found["exponent"] or "")
    try:
        value = float(literal)
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(value):
        return None
    return -value if sign in ("-", "\u2212") else value


class NoJSON(ValueError):
    """The answer holds no JSON value; the message says what went wrong."""


def answer_json(text: str) -> Any:
    """The JSON value the answer is: its whole text, else its first ```json (or unlabelled) fenced block.

    Strict JSON (no ``NaN``, no lone surrogates, nesting up to 1,024 deep); raises :class:`NoJSON`."""
    try:
        return orjson.loads(text.strip())
    except orjson.JSONDecodeError as exc:
        whole = str(exc)
    parts = text.split("```")  # linear, where a lazy regex over unclosed fences is quadratic
    for i in range(1, len(parts) - 1, 2):  # the odd parts are inside a fence (that is closed)
        info, _, body = parts[i].partition("\n")
        if info.strip().lower() not in ("json", ""):
            continue
        try:
            return orjson.loads(body.strip())
        except orjson.JSONDecodeError as exc:
            raise NoJSON(f"the fenced block is not valid JSON: {exc}") from None
    raise NoJSON(f"not valid JSON: {whole}")


def citation_markers(text: str) -> set[int]:
    """The distinct numbers cited as ``[n]`` (or ``[n, m]``) in ``text``."""
    numbers: set[int] = set()
    for marker in _MARKER.finditer(text):
        numbers.update(int(n) for n in re.split(r"\s*[,;]\s*", marker[1]))
    return numbers
