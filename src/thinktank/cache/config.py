"""The ``cache:`` section of the YAML configuration: which models' answers are kept, for how long, where,
and which models may also be answered by a semantically equal earlier question.

A request is cached when the request asks for it (``x-thinktank-cache: allow`` or a TTL header), else
when its API key says so (``cache_ttl`` on the key), else when the model's entry here or the section
itself says so (``enabled``). ``cacheable: false`` on a model keeps its answers out whatever is asked.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MAX_TTL", "CacheConfig", "ModelCacheConfig", "SemanticCacheConfig"]

MAX_TTL = 366 * 86400.0
"""A year: the longest any answer may be kept (``max_ttl`` may only be lower)."""

DEFAULT_THRESHOLD = 0.90
"""The cosine (all-MiniLM-L6-v2) at or above which two questions may share an answer, with the guards of
:mod:`.guards`; chosen on a held-out labelled set (``bench/semantic_cache.py``, docs/benchmarks.md)."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SemanticCacheConfig(_In):
    """Answering a question from the answer to an earlier one that means the same (opt-in per model)."""

    enabled: bool = False
    """On: the model's answers are cached without being asked too (unless its ``enabled`` says false)."""
    threshold: float = Field(default=DEFAULT_THRESHOLD, ge=0.5, le=1.0)
    """Cosine of the two questions' embeddings at or above which they may match (the guards apply too)."""
    max_temperature: float = Field(default=0.1, ge=0, le=2)
    """Only requests with ``temperature`` set and at most this (default 0.1: greedy or nearly) are
    deterministic enough to be answered with another question's answer; a request without a temperature
    samples at its provider's default (1 for most) and is never answered semantically."""
    max_entries: int = Field(default=1000, ge=1, le=100_000)
    """Questions remembered per scope (model, tenant, system prompt, earlier turns, parameters); the least
    recently used go first."""


class ModelCacheConfig(_In):
    """One model's overrides (any catalog name: a deployment, group, alias, ``ensemble/…``, ``kb/…``)."""

    enabled: bool | None = None
    """Cache this model's answers without being asked (None: as the section says)."""
    cacheable: bool = True
    """False: never cache this model's answers, whatever a key or a request asks (answers that must be fresh)."""
    ttl: float | None = Field(default=None, gt=0, le=MAX_TTL)
    """Seconds this model's answers are kept (None: the section's ``ttl``)."""
    semantic: SemanticCacheConfig | None = None
    """None: the section's ``semantic``."""


class CacheConfig(_In):
    """``cache:`` — the response cache of every model."""

    enabled: bool = False
    """Cache every model's answers without being asked (a request, a key or a model may still say no)."""
    ttl: float = Field(default=3600.0, gt=0, le=MAX_TTL)
    """Seconds an answer is kept when nothing more specific says."""
    max_ttl: float = Field(default=30 * 86400.0, gt=0, le=MAX_TTL)
    """The longest TTL a request header or a key may ask for (a longer one is refused with a 400)."""
    backend: Literal["auto", "memory", "database", "redis"] = "auto"
    """``auto``: Redis when ``THINKTANK_REDIS_URL`` is set (shared by every worker and host), else memory (this
    process only, the fastest). ``database``: the gateway's database (survives restarts, shared, slower)."""
    memory_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=2**40)
    """The memory backend's budget: least recently used answers go first beyond it."""
    max_entry_bytes: int = Field(default=1024 * 1024, ge=256, le=64 * 1024 * 1024)
    """Answers larger than this (serialised) are not kept."""
    cleanup_interval: float = Field(default=300.0, ge=1, le=86400)
    """Seconds between deletions of expired rows (database backend)."""
    semantic: SemanticCacheConfig = Field(default_factory=SemanticCacheConfig)
    """The default for every model; a model's own ``semantic`` replaces it."""
    models: dict[str, ModelCacheConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ttls_within_max(self) -> CacheConfig:
        if self.ttl > self.max_ttl:
            raise ValueError(f"ttl ({self.ttl:g}) is longer than max_ttl ({self.max_ttl:g})")
        for name, m in self.models.items():
            if m.ttl is not None and m.ttl > self.max_ttl:
                raise ValueError(f"models.{name}: ttl ({m.ttl:g}) is longer than max_ttl ({self.max_ttl:g})")
        return self

    def model(self, name: str) -> ModelCacheConfig | None:
        return self.models.get(name)

    def semantic_for(self, name: str) -> SemanticCacheConfig:
        own = self.models.get(name)
        return own.semantic if own is not None and own.semantic is not None else self.semantic

    def unknown_model(self, known: set[str]) -> str | None:
        """The first model named here that the configuration does not define (``kb/…`` names are data)."""
        return next((n for n in self.models if n not in known and not n.startswith("kb/")), None)
