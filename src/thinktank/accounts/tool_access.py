"""Allowlists of agent tools on users and keys: what an entry may look like, when one list covers another,
and what a user's list and a key's list allow together.

An entry is one of

- ``knowledge_search``: a built-in tool (or, as a bare name, every tool of an MCP server of that name);
- ``git`` or ``git.*``: every tool of MCP server ``git``;
- ``git.git_log``: one tool of that server.

:meth:`Principal.may_use_tool <thinktank.accounts.principal.Principal.may_use_tool>` reads them this way.
Names that no configured server or built-in tool has are kept: a server may be configured later (and the
CLI works on the database without the server's configuration); such an entry allows nothing until then.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator, Field

from ..agents.config import BUILTIN_TOOLS

__all__ = ["MAX_TOOLS", "ToolList", "ToolName", "covers", "intersect_tools", "parse_tool_list"]

MAX_TOOLS = 100
"""Entries in one allowlist, at most."""

_ENTRY = re.compile(r"[A-Za-z0-9_-]+(?:\.(?:\*|[A-Za-z0-9_-][A-Za-z0-9_.-]*))?")
_HELP = ("a tool is a built-in tool's name (knowledge_search), an MCP server's name (git), server.* or "
         "server.tool, of letters, digits and _ - . only ('*' only as server.*)")


def _entry(v: str) -> str:
    if not _ENTRY.fullmatch(v):
        raise ValueError(_HELP)
    return v


def _unique(v: list[str]) -> list[str]:
    return list(dict.fromkeys(v))


ToolName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_entry)]
"""One allowlist entry (the characters ``[A-Za-z0-9_.*-]``, ``*`` only as ``server.*``)."""

ToolList = Annotated[list[ToolName], Field(max_length=MAX_TOOLS), AfterValidator(_unique)]
"""An allowlist as an input model takes it: at most 100 entries, repeated ones dropped."""


def _split(entry: str) -> tuple[str, str | None]:
    """``(name, None)`` for a bare name, ``(server, "*")`` for ``server.*``, ``(server, tool)`` otherwise."""
    head, dot, tail = entry.partition(".")
    return (head, tail) if dot else (head, None)


def _meet(a: str, b: str) -> str | None:
    """The entry that allows what both ``a`` and ``b`` allow (None: nothing)."""
    if a == b:
        return a
    (na, ta), (nb, tb) = _split(a), _split(b)
    if na != nb:
        return None
    if ta is None or ta == "*":  # a allows the whole server: b is narrower (or b is bare and a is server.*)
        return b if tb not in (None, "*") else f"{na}.*"
    if tb is None or tb == "*":
        return a
    return None  # two different tools of one server


def covers(allowed: Iterable[str], entry: str) -> bool:
    """Whether an allowlist ``allowed`` allows everything ``entry`` does (a key's entry within its creator's)."""
    held = set(allowed)
    if entry in held:
        return True
    name, tool = _split(entry)
    if tool is None:  # a bare name: the built-in tool of that name, if any, and all of a server of that name
        return name not in BUILTIN_TOOLS and f"{name}.*" in held
    return name in held or f"{name}.*" in held


def intersect_tools(a: list[str] | None, b: list[str] | None) -> frozenset[str] | None:
    """What a user's list ``a`` and a key's list ``b`` allow together (None: every tool).

    Not the intersection of the strings: a user allowed ``git`` with a key allowed ``git.git_log`` may use
    ``git.git_log``."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        return frozenset(a or b or [])
    return frozenset(m for x in a for y in b if (m := _meet(x, y)) is not None)


def parse_tool_list(text: str) -> list[str] | None:
    """A comma-separated list as the CLI and the web forms take it: ``*`` for every tool (None), empty for
    none; entries are checked by the input model that receives the list."""
    text = text.strip()
    if text == "*":
        return None
    return [part.strip() for part in text.split(",") if part.strip()]
