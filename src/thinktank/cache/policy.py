"""Whether a request is answered from the cache, for how long its answer is kept: from the request's
headers, its API key and the configuration (most specific first).

Headers (one meaning for every model, ensembles and debates included):

- ``x-thinktank-cache: allow`` (or ``true``, ``1``, ``yes``): use the cache for this request; ``exact``: the
  same, without semantic matching; ``deny`` (or ``false``, ``0``, ``no``, ``off``): neither read nor write.
- ``x-thinktank-cache-ttl: <seconds>``: keep this answer that long, and accept a cached one at most that old
  (an integer from 0 to ``cache.max_ttl``; 0 reads and keeps nothing). Giving it asks for the cache.
- ``Cache-Control: no-cache`` (answer afresh, keep the new answer), ``no-store`` (answer afresh, keep
  nothing), ``max-age=<seconds>`` (accept a cached answer at most that old).

A bad value of thinktank's own headers is a 400 naming the header; ``Cache-Control`` directives thinktank
does not use are ignored, as HTTP caches do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidRequestError

__all__ = ["CacheHeaders", "parse_headers"]

Mode = Literal["allow", "exact", "deny"]

_MODES: dict[bytes, Mode] = {
    b"allow": "allow", b"true": "allow", b"1": "allow", b"yes": "allow", b"exact": "exact",
    b"deny": "deny", b"false": "deny", b"0": "deny", b"no": "deny", b"off": "deny",
}


@dataclass(frozen=True, slots=True)
class CacheHeaders:
    mode: Mode | None = None
    ttl: float | None = None
    no_cache: bool = False
    no_store: bool = False
    max_age: float | None = None

    @property
    def any(self) -> bool:
        return self.mode is not None or self.ttl is not None or self.no_cache or self.no_store or \
            self.max_age is not None


NONE = CacheHeaders()


def _mode(raw: bytes) -> Mode:
    mode = _MODES.get(raw.strip().lower())
    if mode is None:
        raise InvalidRequestError("x-thinktank-cache: use allow, exact or deny", param="x-thinktank-cache",
                                  code="invalid_header")
    return mode


def _ttl(raw: bytes, max_ttl: float) -> float:
    text = raw.strip()
    if not text.isdigit() or len(text) > 12:
        raise InvalidRequestError(
            f"x-thinktank-cache-ttl: give whole seconds from 0 to {max_ttl:.0f}", param="x-thinktank-cache-ttl",
            code="invalid_header")
    seconds = float(int(text))
    if seconds > max_ttl:
        raise InvalidRequestError(
            f"x-thinktank-cache-ttl: {int(seconds)} s is longer than this server keeps answers ({max_ttl:.0f} s at "
            "most)", param="x-thinktank-cache-ttl", code="invalid_header")
    return seconds


def parse_headers(headers: list[tuple[bytes, bytes]], max_ttl: float) -> CacheHeaders:
    """The cache headers of a request (400 for a bad value of thinktank's own)."""
    mode: Mode | None = None
    ttl: float | None = None
    no_cache = no_store = False
    max_age: float | None = None
    seen = False
    for name, value in headers:
        if name == b"x-thinktank-cache":
            mode, seen = _mode(value), True
        elif name == b"x-thinktank-cache-ttl":
            ttl, seen = _ttl(value, max_ttl), True
        elif name == b"cache-control":
            seen = True
            for directive in value.lower().split(b","):
                word, _, arg = directive.strip().partition(b"=")
                if word == b"no-cache":
                    no_cache = True
                elif word == b"no-store":
                    no_store = True
                elif word == b"max-age" and arg.strip().isdigit() and len(arg.strip()) <= 12:
                    max_age = float(int(arg.strip()))
    if not seen:
        return NONE
    return CacheHeaders(mode, ttl, no_cache, no_store, max_age)
