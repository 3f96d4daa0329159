"""User regular expressions, run safely: the PyPI ``regex`` engine with a size guard before compiling and a
timeout while matching, so a catastrophic pattern (``(a|aa)+$``) fails a check instead of hanging a worker.

Compiling is guarded too: counted repeats multiply (``(?:(?:a{100}){100}){100}`` compiles to a million
nodes, and more exhausts the memory), so a pattern whose expanded size (:func:`expanded_size`) is over
:data:`MAX_EXPANDED_SIZE` is refused as invalid before the engine sees it.
"""

from __future__ import annotations

import functools
import re
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import regex

__all__ = [
    "MAX_EXPANDED_SIZE",
    "MAX_PATTERN_CHARS",
    "REGEX_TIMEOUT",
    "Deadline",
    "PatternTimeout",
    "compile_pattern",
    "expanded_size",
    "search",
]

MAX_PATTERN_CHARS: Final = 2_000
MAX_EXPANDED_SIZE: Final = 50_000
"""The most atoms a pattern may stand for once its counted repeats are expanded (compiles in milliseconds)."""
REGEX_TIMEOUT: Final = 1.0
"""Seconds one check may spend matching (a ``regex`` check, or all the ``pattern`` keywords of a schema)."""

_QUANTIFIER: Final = re.compile(r"\{(\d*)(?:,(\d*))?\}")
_BRACED_ESCAPES: Final = frozenset("pPNxug")
"""Escapes that may take a braced argument (``\\p{L}``, ``\\N{DASH}``, ``\\x{263a}``, ``\\g{name}``)."""


class PatternTimeout(Exception):
    """Matching took longer than its deadline."""


class Deadline:
    """A point in time (``time.monotonic``) that several matches share."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left, at least a millisecond (the engine treats 0 as 'no limit'); raises when none."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise PatternTimeout("the time for matching ran out")
        return max(left, 0.001)


def _skip_class(pattern: str, i: int) -> int:
    """The index after the character class opening at ``pattern[i] == '['`` (nested sets included)."""
    depth = 0
    n = len(pattern)
    j = i
    while j < n:
        c = pattern[j]
        if c == "\\":
            j += 2
            continue
        if c == "[":
            depth += 1
            j += 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":  # a ']' first in a set is literal
                j += 1
            continue
        if c == "]":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return n


def expanded_size(pattern: str, limit: int = MAX_EXPANDED_SIZE) -> int:
    """How many atoms ``pattern`` stands for with its counted repeats expanded: siblings add up, a repeat
    ``{n,m}`` multiplies what it repeats by its larger bound. An over-estimate (alternatives add up, group
    syntax counts as atoms) that stops counting once past ``limit``."""
    stack: list[int] = [0]  # the size of each open group so far
    last = 0  # the size of the last atom or group, which a quantifier repeats
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            if i - 1 < n and pattern[i - 1] in _BRACED_ESCAPES and i < n and pattern[i] == "{":
                close = pattern.find("}", i)
                i = n if close < 0 else close + 1
            last = 1
            stack[-1] += 1
            continue
        if c == "[":
            i = _skip_class(pattern, i)
            last = 1
            stack[-1] += 1
            continue
        if c == "(":
            stack.append(0)
            i += 1
            last = 0
            continue
        if c == ")":
            inner = stack.pop() if len(stack) > 1 else 0
            last = inner
            stack[-1] += inner
            i += 1
            continue
        if c == "{":
            quantifier = _QUANTIFIER.match(pattern, i)
            digits = [b for b in (quantifier[1], quantifier[2]) if b] if quantifier is not None else []
            if quantifier is not None and digits:
                if max(len(b) for b in digits) > 9:
                    return limit + 1  # a bound of a billion or more
                times = max(int(b) for b in digits)
                stack[-1] += last * (times - 1)
                last *= times
                i = quantifier.end()
                if stack[-1] > limit:
                    return stack[-1]
                continue
        last = 1
        stack[-1] += 1
        i += 1
        if stack[-1] > limit:
            return stack[-1]
    return sum(stack)


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """``pattern`` compiled by the ``regex`` engine; ValueError (saying why) when it is not acceptable."""
    import regex

    if not pattern:
        raise ValueError("the pattern is empty")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"the pattern is longer than {MAX_PATTERN_CHARS:,} characters")
    if expanded_size(pattern) > MAX_EXPANDED_SIZE:
        raise ValueError(f"the pattern's counted repeats stand for more than {MAX_EXPANDED_SIZE:,} characters; "
                         "use smaller bounds")
    try:
        return regex.compile(pattern)
    except regex.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    except (OverflowError, RecursionError, MemoryError):
        raise ValueError("the regular expression is too large") from None


def search(pattern: str, text: str, deadline: Deadline) -> regex.Match[str] | None:
    """The first match of ``pattern`` (compiled, see :func:`compile_pattern`) in ``text``; raises
    :class:`PatternTimeout` past ``deadline``. Releases the GIL while matching (run it in a thread)."""
    compiled = compile_pattern(pattern)
    try:
        return compiled.search(text, timeout=deadline.left(), concurrent=True)
    except TimeoutError:
        raise PatternTimeout("matching took too long") from None
