"""Model names: the prefixes that say what a name is, and the walk over the names a name uses.

``ensemble/<name>``, ``debate/<name>`` and ``agent/<name>`` are runs of the configuration's ensembles, debates
and agents;
``kb/<name>`` is the knowledge model grounded in a knowledge base (data, not configuration); any other
name is a deployment, a group or an alias, served by the router.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["KB_PREFIX", "MAX_DEPTH", "RUN_PREFIXES", "find_cycle", "is_kb_name", "reachable"]

KB_PREFIX = "kb/"
RUN_PREFIXES = ("ensemble/", "debate/", "agent/")
MAX_DEPTH = 8
"""How deep models may nest (an ensemble whose member is an ensemble whose member ...)."""


def is_kb_name(name: str) -> bool:
    return name.startswith(KB_PREFIX) and bool(name[len(KB_PREFIX):].strip())


def find_cycle(root: str, uses: Callable[[str], Iterable[str]], *, start: Iterable[str] | None = None) -> str | None:
    """Why ``root`` cannot be used, or None: it reaches itself (``'a' contains itself: a -> b -> a``), or
    its models nest deeper than :data:`MAX_DEPTH`. ``uses(name)`` gives the names a name calls;
    ``start``, when given, replaces ``uses(root)`` (a run configured in a request)."""
    done: set[str] = set()

    def walk(name: str, path: tuple[str, ...]) -> str | None:
        if len(path) > MAX_DEPTH:
            return f"models nest deeper than {MAX_DEPTH} levels: {' -> '.join(path)}"
        for used in dict.fromkeys(uses(name) if name != root or start is None else start):
            if used in path:
                return f"'{root}' contains itself: {' -> '.join((*path, used))}"
            if used not in done:
                found = walk(used, (*path, used))
                if found is not None:
                    return found
        done.add(name)
        return None

    return walk(root, (root,))


def reachable(root: str, uses: Callable[[str], Iterable[str]] | None) -> list[str]:
    """``root`` and every name it reaches through ``uses`` (each once, ``root`` first): what a request for it
    may call, at any depth."""
    out: list[str] = []
    pending, seen = [root], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        out.append(current)
        if uses is not None:
            pending.extend(uses(current))
    return out
