"""The ranges of the numbers a request may carry, in one place, so every input model bounds a quantity
the same way: within what its database column holds (``BigInteger`` for token counts and rate limits,
``Integer`` for sequence numbers and pages), what every JSON client reads exactly (integers up to
2**53 - 1), and what the code can compute with (finite floats, times a date can be written for).

A number outside its range is refused when the request is validated (422 on the ``/api`` routes,
400 on the OpenAI ones), never by the database (a 500) or by the arithmetic after it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

__all__ = [
    "MAX_INT32",
    "MAX_INT64",
    "MAX_OUTPUT_TOKENS",
    "MAX_SAFE_INT",
    "MAX_UNIX_TIME",
    "MAX_USD",
    "MIN_INT64",
    "OutputTokens",
    "RateLimit",
    "Seq",
    "TokenCount",
    "UnixTime",
    "Usd",
]

MAX_INT32 = 2**31 - 1
"""The largest value of an ``Integer`` column on PostgreSQL (sequence numbers, pages, positions)."""
MIN_INT64 = -(2**63)
MAX_INT64 = 2**63 - 1
"""The range of a ``BigInteger`` column, of SQLite's integers, and of OpenAI's ``seed``."""
MAX_SAFE_INT = 2**53 - 1
"""The largest integer a client reading JSON numbers as doubles (JavaScript) reads exactly."""
MAX_OUTPUT_TOKENS = MAX_INT32
"""The most tokens a request may ask for in one reply (``max_tokens``)."""
MAX_USD = 1e12
"""The largest amount of money (a budget, a cost, a cap) in USD."""
MAX_UNIX_TIME = 253_402_300_799.0
"""9999-12-31 23:59:59 UTC, the last second a date can be written for (an export shows every time as one)."""

TokenCount = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]
"""Tokens used (stored in ``BigInteger`` columns)."""
RateLimit = Annotated[int, Field(ge=1, le=MAX_SAFE_INT)]
"""Requests or tokens per minute (stored in ``BigInteger`` columns)."""
OutputTokens = Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS)]
Seq = Annotated[int, Field(ge=1, le=MAX_INT32)]
"""A position in a sequence (a message's ``seq``, a page)."""
Usd = Annotated[float, Field(ge=0, le=MAX_USD, allow_inf_nan=False)]
UnixTime = Annotated[float, Field(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False)]
