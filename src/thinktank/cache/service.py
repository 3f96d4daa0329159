"""The response cache of every model: plan (whether and how long), look up, keep.

The API calls it around the model, whatever the model is (a deployment, a group, an ensemble, a debate, a
grounded model): ``plan`` before admission work starts, ``lookup`` once the request is admitted (rate
limits apply to hits too), then either the hit is sent (at no cost: no budget hold, no upstream call) or the
model answers and ``store`` (or, for a stream, ``recording``) keeps the answer if it is complete.

Not cached: agents, and anything that reaches one (their tools have effects in the world), and models whose
configuration says ``cacheable: false`` (and what reaches them).

Observers (``observe``) are told every hit, miss and kept answer as a :class:`CacheEvent`, for metrics; they
must be quick and must not raise (an observer that raises is logged and the request goes on).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..clock import Clock
from ..names import KB_PREFIX, reachable
from ..types import ChatChunk, ChatRequest, ChatResponse
from .config import CacheConfig, SemanticCacheConfig
from .entry import CachedAnswer, StreamAssembler, answer_of
from .keys import canonical, exact_key, last_question, scope_key, tenant_of
from .policy import CacheHeaders, parse_headers
from .semantic import SemanticIndex
from .stores import AnswerStore

if TYPE_CHECKING:
    import numpy as np

    from ..knowledge.embeddings import Embedder
    from ..store.db import Database

__all__ = ["CacheEvent", "CacheHit", "CacheObserver", "CachePlan", "ResponseCache", "build_cache"]

log = logging.getLogger("thinktank.cache")

MAX_SEMANTIC_QUESTION = 1000
"""Characters: a longer question is matched exactly only (the embedding sees its first 256 tokens)."""


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """One thing the cache did, for observers (metrics). No prompt, answer or key is in it."""

    kind: Literal["hit", "miss", "store"]
    model: str
    layer: Literal["exact", "semantic"] | None = None
    """How a hit was found."""
    stream: bool = False
    saved_usd: float = 0.0
    """What the answer cost when it was made: what a hit saved."""
    backend: str = "memory"


CacheObserver = Callable[[CacheEvent], None]


@dataclass(slots=True)
class _SemanticPlan:
    scope: str
    question: str
    config: SemanticCacheConfig
    vector: np.ndarray | None = None


@dataclass(slots=True)
class CachePlan:
    """What the cache does for one request."""

    model: str
    tenant: str
    key: str
    ttl: float
    """Seconds a new answer is kept."""
    max_age: float
    """Seconds old a cached answer may be at most to be served."""
    read: bool
    write: bool
    stream: bool
    semantic: _SemanticPlan | None = None
    earlier: bool = False
    """The caller accepts an earlier answer: a run's own cache may serve it too (an ensemble that reaches an
    agent may not be served by either)."""
    principal: Any = None
    knowledge: tuple[str, ...] = ()
    """The knowledge bases the answer is grounded in (the request's, and those of the ``kb/`` models it reaches):
    their versions, checked for the caller, go into the keys before the first lookup."""

    @property
    def status(self) -> bytes:
        """``x-thinktank-cache`` of a response that did not come from the cache."""
        return b"miss" if self.read or self.write else b"bypass"


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: CachedAnswer
    layer: Literal["exact", "semantic"]
    age: float

    def headers(self, run_id: str | None = None) -> list[tuple[bytes, bytes]]:
        """``run_id``: the run that records this hit (a run model's), else the run that made the answer."""
        out = [(b"x-thinktank-cache", b"hit"), (b"x-thinktank-cache-match", self.layer.encode()),
               (b"age", str(max(0, int(self.age))).encode())]
        if self.answer.served_by:
            out.append((b"x-thinktank-deployment", self.answer.served_by.encode()))
        if run_id or self.answer.run_id:
            out.append((b"x-thinktank-run-id", (run_id or self.answer.run_id or "").encode()))
        return out


def _deterministic(request: ChatRequest, config: SemanticCacheConfig) -> bool:
    """Whether another question's answer could do for this one: nearly greedy sampling, one answer, no
    tools (an answer that calls a tool depends on the tool's exact arguments)."""
    extra = request.model_extra or {}
    return (request.temperature is not None and request.temperature <= config.max_temperature
            and request.n in (None, 1) and not request.tools and request.tool_choice is None
            and "functions" not in extra and "function_call" not in extra)


class ResponseCache:
    def __init__(
        self, config: CacheConfig, store: AnswerStore, clock: Clock, *,
        uses: Callable[[str], Sequence[str]] | None = None, embedder: Callable[[], Embedder] | None = None,
        knowledge_versions: Callable[[Any, Sequence[str]], Awaitable[str]] | None = None,
    ) -> None:
        """``uses``: the names a model calls (the catalog's), to keep agents out; ``embedder``: the local
        embedding model, for the semantic layer; ``knowledge_versions``: the versions of knowledge bases for a
        caller, checking their access (``KnowledgeService.versions``), so a grounded answer is served only while
        its knowledge bases are unchanged and readable by the caller."""
        self.config = config
        self.store = store
        self.clock = clock
        self._uses = uses
        self._embedder = embedder
        self.index = SemanticIndex()
        self.observers: list[CacheObserver] = []
        self.counts: Counter[str] = Counter()
        """Hits (``hit_exact``, ``hit_semantic``), misses and stores since start."""
        self._cacheable: dict[str, bool] = {}
        self._grounded_in: dict[str, tuple[str, ...]] = {}
        self._knowledge_versions = knowledge_versions
        self._configured = config.enabled or config.semantic.enabled or bool(config.models)

    def observe(self, observer: CacheObserver) -> None:
        self.observers.append(observer)

    def _tell(self, event: CacheEvent) -> None:
        self.counts[event.kind if event.layer is None else f"{event.kind}_{event.layer}"] += 1
        for observer in self.observers:
            try:
                observer(event)
            except Exception:
                log.exception("a cache observer failed")

    # -- planning ----------------------------------------------------------------------------------
    def grounded_in(self, name: str) -> tuple[str, ...]:
        """The knowledge bases ``name`` answers from: those of every ``kb/`` model it is or reaches."""
        known = self._grounded_in.get(name)
        if known is None:
            known = tuple(sorted({n[len(KB_PREFIX):].strip() for n in reachable(name, self._uses)
                                  if n.startswith(KB_PREFIX)}))
            if len(self._grounded_in) < 10_000 and not name.startswith(KB_PREFIX):
                self._grounded_in[name] = known
        return known

    def cacheable(self, name: str) -> bool:
        """Whether answers of ``name`` may be kept: not an agent, not ``cacheable: false``, and nothing it
        reaches is either."""
        known = self._cacheable.get(name)
        if known is None:
            known = not any(n.startswith("agent/") or not getattr(self.config.model(n), "cacheable", True)
                            for n in reachable(name, self._uses))
            if len(self._cacheable) < 10_000 and not name.startswith(KB_PREFIX):
                self._cacheable[name] = known
        return known

    def plan(self, request: ChatRequest, principal: Any, headers: list[tuple[bytes, bytes]]) -> CachePlan | None:
        """What the cache does for ``request`` (the request as the client sent it), or None when it is not
        used. 400 for a bad cache header."""
        asked = parse_headers(headers, self.config.max_ttl)
        key_ttl: float | None = getattr(principal, "cache_ttl", None)
        if not (self._configured or asked.any or key_ttl is not None):
            return None
        name = request.model
        own = self.config.model(name)
        enabled = self._enabled(asked, key_ttl, name, own)
        if enabled is None:
            return None
        ttl = self._ttl(asked, key_ttl, own)
        data = canonical(request)
        tenant = tenant_of(principal)
        read = enabled and ttl > 0 and not asked.no_cache and not asked.no_store and self.cacheable(name)
        write = enabled and ttl > 0 and not asked.no_store and self.cacheable(name)
        max_age = ttl if asked.max_age is None else min(ttl, asked.max_age)
        # An agent's own run cache (its cache_ttl, 0 unless configured) decides for it, as before.
        earlier = read or (name.startswith("agent/") and asked.mode in ("allow", "exact") and not asked.no_cache
                           and not asked.no_store)
        from ..knowledge.grounded import GroundedModels

        asked_kbs, _, _ = GroundedModels.fields(request.model_extra or {})
        knowledge = tuple(sorted({*asked_kbs, *self.grounded_in(name)})) if read or write else ()
        plan = CachePlan(name, tenant, exact_key(tenant, data), ttl, max_age, read, write, request.stream,
                         earlier=earlier, principal=principal, knowledge=knowledge)
        semantic = self.config.semantic_for(name)
        if semantic.enabled and asked.mode != "exact" and (read or write) and self._embedder is not None \
                and _deterministic(request, semantic):
            question = last_question(request.messages)
            if question and question.strip() and len(question) <= MAX_SEMANTIC_QUESTION:
                plan.semantic = _SemanticPlan(scope_key(tenant, data), question, semantic)
        return plan

    def _enabled(self, asked: CacheHeaders, key_ttl: float | None, name: str, own: Any) -> bool | None:
        """True: the cache is in play (a model that may not be cached is then a ``bypass``); None: it is not.
        A model whose semantic layer is on is cached without being asked, unless it says ``enabled: false``."""
        if asked.mode == "deny":
            return None
        if asked.mode is not None or asked.ttl is not None:
            return True
        if key_ttl is not None:
            return key_ttl > 0 or None
        if own is not None and own.enabled is not None:
            return own.enabled or None
        return (self.config.enabled or self.config.semantic_for(name).enabled) or None

    def _ttl(self, asked: CacheHeaders, key_ttl: float | None, own: Any) -> float:
        if asked.ttl is not None:
            return asked.ttl
        if key_ttl:
            return min(key_ttl, self.config.max_ttl)
        if own is not None and own.ttl is not None:
            return float(own.ttl)
        return self.config.ttl

    # -- looking up --------------------------------------------------------------------------------
    async def _get(self, plan: CachePlan, key: str, now: float) -> CachedAnswer | None:
        try:
            answer = await self.store.get(key, now)
        except Exception:
            log.warning("the %s cache failed to read; answering afresh", self.store.name, exc_info=True)
            return None
        if answer is None or now - answer.created_at > plan.max_age:
            return None
        return answer

    async def _ground_keys(self, plan: CachePlan) -> None:
        """A grounded answer's keys name the versions of its knowledge bases (read access checked: 404 as the
        grounded model itself would say), so a change to one, or a lost share, never serves an old answer."""
        if not plan.knowledge:
            return
        if self._knowledge_versions is None:
            plan.read = plan.write = False  # nothing can tell whether the sources changed: not cached
            return
        versions = await self._knowledge_versions(plan.principal, plan.knowledge)
        plan.knowledge = ()

        def vary(key: str) -> str:
            return hashlib.sha256(f"{key}\n{versions}".encode()).hexdigest()

        plan.key = vary(plan.key)
        if plan.semantic is not None:
            plan.semantic.scope = vary(plan.semantic.scope)

    async def lookup(self, plan: CachePlan) -> CacheHit | None:
        """The cached answer for ``plan``: an identical request's, else (semantic models) that of a question
        meaning the same."""
        await self._ground_keys(plan)
        if not plan.read:
            return None
        now = self.clock.time()
        answer = await self._get(plan, plan.key, now)
        layer: Literal["exact", "semantic"] = "exact"
        if answer is None and plan.semantic is not None:
            layer = "semantic"
            answer = await self._semantic(plan, now)
        if answer is None:
            self._tell(CacheEvent("miss", plan.model, stream=plan.stream, backend=self.store.name))
            return None
        self._tell(CacheEvent("hit", plan.model, layer, plan.stream, answer.cost, self.store.name))
        return CacheHit(answer, layer, now - answer.created_at)

    async def _embed(self, semantic: _SemanticPlan) -> np.ndarray | None:
        if semantic.vector is None and self._embedder is not None:
            try:
                semantic.vector = (await self._embedder().embed([semantic.question]))[0]
            except Exception:
                log.warning("embedding a question for the semantic cache failed", exc_info=True)
        return semantic.vector

    async def _semantic(self, plan: CachePlan, now: float) -> CachedAnswer | None:
        semantic = plan.semantic
        assert semantic is not None
        vector = await self._embed(semantic)
        if vector is None:
            return None
        match = self.index.find(semantic.scope, semantic.question, vector, semantic.config.threshold, now,
                                exclude=plan.key)
        return await self._get(plan, match.key, now) if match is not None else None

    # -- keeping -----------------------------------------------------------------------------------
    async def store_response(self, plan: CachePlan, response: ChatResponse) -> bool:
        """Keep a complete answer; whether it was kept."""
        if not plan.write:
            return False
        now = self.clock.time()
        return await self._put(plan, answer_of(response, model=plan.model, now=now, ttl=plan.ttl), now)

    async def _put(self, plan: CachePlan, answer: CachedAnswer | None, now: float) -> bool:
        if answer is None or len(answer.body) > self.config.max_entry_bytes or plan.knowledge:
            return False  # (a grounded answer whose keys were not given its sources' versions is not kept)
        try:
            await self.store.put(plan.key, plan.tenant, answer)
        except Exception:
            log.warning("the %s cache failed to keep an answer", self.store.name, exc_info=True)
            return False
        if plan.semantic is not None:
            vector = await self._embed(plan.semantic)
            if vector is not None:
                self.index.add(plan.semantic.scope, plan.semantic.question, vector, plan.key, answer.expires_at, now,
                               plan.semantic.config.max_entries)
        self._tell(CacheEvent("store", plan.model, stream=plan.stream, saved_usd=answer.cost, backend=self.store.name))
        return True

    async def recording(self, plan: CachePlan, chunks: AsyncIterator[ChatChunk]) -> AsyncIterator[ChatChunk]:
        """``chunks`` passed on as they come, and kept as one answer if the stream ends normally and complete
        (an error, a client gone or a cut-short answer keeps nothing)."""
        assembler = StreamAssembler()
        try:
            async for chunk in chunks:
                assembler.add(chunk)
                yield chunk
        finally:
            aclose: Callable[[], Any] | None = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        data = assembler.response()
        if data is not None and plan.write:
            now = self.clock.time()
            await self._put(plan, answer_of(data, model=plan.model, now=now, ttl=plan.ttl,
                                            served_by=assembler.served_by, run_id=assembler.run_id), now)

    @staticmethod
    def replay(hit: CacheHit) -> AsyncIterator[ChatChunk]:
        async def chunks() -> AsyncIterator[ChatChunk]:
            for chunk in hit.answer.chunks():
                yield chunk

        return chunks()

    # -- life --------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()


def build_cache(
    config: CacheConfig, clock: Clock, *, redis_url: str | None = None, db: Database | None = None,
    uses: Callable[[str], Sequence[str]] | None = None, embedder: Callable[[], Embedder] | None = None,
    knowledge_versions: Callable[[Any, Sequence[str]], Awaitable[str]] | None = None,
) -> ResponseCache:
    """The cache with the store the configuration asks for (``auto``: Redis when there is one, else memory)."""
    from ..errors import ConfigError
    from .stores import MemoryStore, RedisStore, SqlStore

    backend = config.backend if config.backend != "auto" else ("redis" if redis_url else "memory")
    store: AnswerStore
    if backend == "redis":
        if not redis_url:
            raise ConfigError("cache: backend 'redis' needs THINKTANK_REDIS_URL")
        store = RedisStore(redis_url)
    elif backend == "database":
        if db is None:
            raise ConfigError("cache: backend 'database' needs the gateway's database")
        store = SqlStore(db, clock, cleanup_interval=config.cleanup_interval)
    else:
        store = MemoryStore(config.memory_bytes)
    return ResponseCache(config, store, clock, uses=uses, embedder=embedder, knowledge_versions=knowledge_versions)
