"""The semantic layer: a question answered with the answer to an earlier question that means the same.

Questions are compared only within one scope (the same model, tenant, parameters, system prompt and earlier
turns: :func:`.keys.scope_key`), by the cosine of their embeddings (the local model, in its worker thread)
and then by the guards of :mod:`.guards`. An entry points at the exact-cache key of the earlier request, so
the answer itself lives in the answer store (memory, database or Redis) and expires there.

The index is this process's memory: bounded per scope (the oldest questions first out), in the number of
scopes and in questions altogether (the least recently used scopes first out: 50,000 questions are about
80 MB). With several workers each has its own index (a question asked through another worker is not found
semantically, only exactly).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .guards import Features, features, refusal

__all__ = ["SemanticIndex", "SemanticMatch"]


@dataclass(slots=True)
class _Entry:
    key: str
    features: Features
    expires_at: float


@dataclass(slots=True)
class _Scope:
    vectors: np.ndarray
    entries: list[_Entry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    key: str
    """The exact-cache key of the earlier request."""
    similarity: float


class SemanticIndex:
    def __init__(self, *, max_scopes: int = 10_000, max_questions: int = 50_000) -> None:
        self.max_scopes = max_scopes
        self.max_questions = max_questions
        self._scopes: OrderedDict[str, _Scope] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def find(self, scope: str, question: str, vector: np.ndarray, threshold: float, now: float,
             exclude: str | None = None) -> SemanticMatch | None:
        """The closest earlier question of ``scope`` at or above ``threshold`` that the guards let through."""
        found = self._scopes.get(scope)
        if found is None or not found.entries:
            return None
        self._scopes.move_to_end(scope)
        sims = found.vectors[: len(found.entries)] @ vector
        order = np.argsort(-sims)
        mine: Features | None = None
        for i in order:
            similarity = float(sims[i])
            if similarity < threshold:
                break
            entry = found.entries[int(i)]
            if entry.expires_at <= now or entry.key == exclude:
                continue
            mine = mine or features(question)
            if refusal(mine, entry.features) is None:
                return SemanticMatch(entry.key, similarity)
        return None

    def add(self, scope: str, question: str, vector: np.ndarray, key: str, expires_at: float, now: float,
            max_entries: int) -> None:
        """Remember ``question`` (its answer under ``key``); expired and, past ``max_entries``, the oldest
        entries of the scope go."""
        found = self._scopes.get(scope)
        if found is None:
            if len(self._scopes) >= self.max_scopes:
                self._count -= len(self._scopes.popitem(last=False)[1].entries)
            found = self._scopes[scope] = _Scope(np.zeros((8, vector.shape[0]), np.float32))
        self._scopes.move_to_end(scope)
        keep = [i for i, e in enumerate(found.entries) if e.expires_at > now and e.key != key]
        keep = keep[-(max_entries - 1):] if max_entries > 1 else []
        if len(keep) != len(found.entries):
            self._count -= len(found.entries) - len(keep)
            found.vectors[: len(keep)] = found.vectors[keep]
            found.entries = [found.entries[i] for i in keep]
        n = len(found.entries)
        if n >= found.vectors.shape[0]:
            grown = np.zeros((max(8, 2 * n), found.vectors.shape[1]), np.float32)
            grown[:n] = found.vectors[:n]
            found.vectors = grown
        found.vectors[n] = vector
        found.entries.append(_Entry(key, features(question), expires_at))
        self._count += 1
        while self._count > self.max_questions and len(self._scopes) > 1:
            _, oldest = self._scopes.popitem(last=False)
            self._count -= len(oldest.entries)
