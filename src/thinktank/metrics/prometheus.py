"""Prometheus metrics: the recorder the accounting code calls, and what a scrape reads.

**One process or several.** ``prometheus_client`` decides how it stores values once per process, when it is
first imported: in memory, or, if ``PROMETHEUS_MULTIPROC_DIR`` is set at that moment, in memory-mapped files
in that directory, one set per process, which a scrape adds up (its multiprocess mode). ``thinktank serve
--workers N`` sets the variable, to a directory of its own, just before it starts the workers and never
before its own process built its app (:mod:`.multiproc`), so only the workers write files.

This recorder asks which of the two its process got (``values.ValueClass``) rather than reading the
variable:

* **in memory**: its metrics are registered in a ``CollectorRegistry`` of its own, made here by the app
  factory, never in prometheus_client's global registry: any number of apps in one interpreter (the tests)
  each count alone;
* **files**: its metrics are registered nowhere (the files are what counts) and a scrape reads the whole
  directory with a ``MultiProcessCollector``, so whichever worker answers gives the totals of all of them.
  One app per process: a second app in the same process would go on from the first one's counts, since the
  files are the process's.

**Cheap on the hot path.** A request ending costs a dictionary lookup for its pre-bound label children (cached
per model, deployment and status: ``labels()`` alone costs ~1 µs) and additions to plain numbers: its count,
tokens, cost and the buckets of its latencies wait in those and are added to the metrics at each scrape and, with
files, every second by a background task (prometheus_client's own increments cost ~0.5 µs each in memory and ~2.5
µs each in a file here, with a lock; a request touched ten of them). So a scrape may miss at most the last second
of another worker's requests, and a worker killed outright (SIGKILL) loses at most its last second; a worker that
stops adds what it holds first. Model names become labels only if the configuration defines them (``other``
otherwise; ``kb/*`` for knowledge bases, which are data): a client cannot create series.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

from ..clock import Clock
from .sink import MetricsSink

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from ..errors import ProviderError
    from ..gateway.router import UsageRecord

__all__ = ["PrometheusMetrics"]

log = logging.getLogger(__name__)

#: Seconds; answers of large models take minutes, runs longer.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
RUN_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0)
#: Each bucket list with +Inf last, as a histogram child holds it.
BOUNDS = {buckets: (*buckets, math.inf) for buckets in (LATENCY_BUCKETS, FIRST_TOKEN_BUCKETS, RUN_BUCKETS)}

#: The kind of an upstream failure, by its error class (anything else: ``other``).
FAILURE_REASONS = {
    "UpstreamTimeoutError": "timeout", "UpstreamRateLimitError": "rate_limited", "UpstreamServerError": "server_error",
    "UpstreamConnectionError": "connection", "UpstreamBadResponseError": "bad_response", "UpstreamAuthError": "auth",
    "UpstreamBadRequestError": "bad_request", "ContextWindowExceededError": "context_window",
    "DeadlineExceededError": "deadline",
}

OTHER = "other"
KNOWLEDGE_BASES = "kb/*"
NO_DEPLOYMENT = "none"


def multiprocess_mode() -> bool:
    """Whether this process's prometheus_client keeps its values in files (see the module doc)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class _Observations:
    """Observations of one histogram child not yet added to it: a count per bucket and their sum (the hot path
    adds to ``counts``, ``observed`` and ``total`` itself: a method call more per observation measured).

    prometheus_client has no public way to add many observations at once, so :meth:`flush` adds them to the
    child's per-bucket and sum values (``_buckets``, ``_sum``), exactly what its ``observe`` does one at a time;
    tests/ops/test_metrics_flush.py checks that the exposition is the same as with ``observe``."""

    __slots__ = ("bounds", "child", "counts", "observed", "total")

    def __init__(self, child: Histogram, bounds: Sequence[float]) -> None:
        self.child = child
        self.bounds = bounds
        """The upper bounds, +Inf last: ``bisect_left(bounds, v)`` is the bucket of ``v`` (the first bound not
        below it, as ``le`` says)."""
        self.counts = [0] * len(bounds)
        self.observed = 0
        self.total = 0.0

    def flush(self) -> None:
        if not self.observed:
            return
        counts, total = self.counts, self.total
        self.counts, self.observed, self.total = [0] * len(self.bounds), 0, 0.0
        self.child._sum.inc(total)
        for bucket, count in zip(self.child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class _Request:
    """The series a kind of ending request (model, deployment, status) touches, and what is not yet added."""

    __slots__ = ("count", "duration", "first_token", "requests")

    def __init__(self, requests: Counter, duration: _Observations, first_token: _Observations) -> None:
        self.requests, self.duration, self.first_token = requests, duration, first_token
        self.count = 0

    def flush(self) -> None:
        if self.count:
            count, self.count = self.count, 0
            self.requests.inc(count)
        self.duration.flush()
        self.first_token.flush()


class _Usage:
    """The token and cost counters of a model and deployment and the deployment's upstream latency, and what is
    not yet added to them."""

    __slots__ = ("cost", "cost_counter", "input", "input_counter", "output", "output_counter", "upstream")

    def __init__(self, input_counter: Counter, output_counter: Counter, cost_counter: Counter,
                 upstream: _Observations) -> None:
        self.input_counter, self.output_counter, self.cost_counter = input_counter, output_counter, cost_counter
        self.upstream = upstream
        self.input = self.output = 0
        self.cost = 0.0

    def flush(self) -> None:
        if self.input:
            tokens, self.input = self.input, 0
            self.input_counter.inc(tokens)
        if self.output:
            tokens, self.output = self.output, 0
            self.output_counter.inc(tokens)
        if self.cost:
            cost, self.cost = self.cost, 0.0
            self.cost_counter.inc(cost)
        self.upstream.flush()


class PrometheusMetrics(MetricsSink):
    """Counts. ``known_models`` gives the names that may be labels (asked once, at the first request: the
    catalog knows them only once everything is built)."""

    enabled = True

    def __init__(self, known_models: Callable[[], Iterable[str]], clock: Clock) -> None:
        self._known_models = known_models
        self._clock = clock
        self._labels: dict[str, str] = {}
        self._labels_loaded = False
        self.multiprocess = multiprocess_mode()
        self.directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") if self.multiprocess else None
        own = None if self.multiprocess else CollectorRegistry(auto_describe=True)
        self.registry = own
        """The registry holding the metrics (in memory), or None (files: see :meth:`scrape_registry`)."""
        self.requests = Counter("thinktank_requests", "Requests admitted and ended, by public model, the deployment "
                                "that answered last and status (as the usage table records them).",
                                ["model", "deployment", "status"], registry=own)
        self.request_duration = Histogram("thinktank_request_duration_seconds", "Time from admission to the end "
                                          "of the response (a stream: its last chunk).", ["model"], registry=own,
                                          buckets=LATENCY_BUCKETS)
        self.first_token = Histogram("thinktank_time_to_first_token_seconds", "Streams: time from admission to "
                                     "the first chunk.", ["model"], registry=own, buckets=FIRST_TOKEN_BUCKETS)
        self.tokens = Counter("thinktank_tokens", "Tokens accounted, by public model, deployment and type "
                              "(input: prompt, output: completion).", ["model", "deployment", "type"], registry=own)
        self.cost = Counter("thinktank_cost_usd", "Cost accounted (USD), by public model and deployment.",
                            ["model", "deployment"], registry=own)
        self.upstream_duration = Histogram("thinktank_upstream_duration_seconds", "Time of each upstream answer "
                                           "(the answering attempt alone), by deployment.", ["deployment"],
                                           registry=own, buckets=LATENCY_BUCKETS)
        self.upstream_failures = Counter("thinktank_upstream_failures", "Failed upstream attempts, by deployment "
                                         "and kind of failure.", ["deployment", "reason"], registry=own)
        self.retries = Counter("thinktank_upstream_retries", "Attempts made again after a failed one, by model "
                               "group.", ["model"], registry=own)
        self.fallbacks = Counter("thinktank_fallbacks", "Moves from a model group to one of its fallbacks.",
                                 ["model", "fallback"], registry=own)
        self.cooldowns = Counter("thinktank_upstream_cooldowns", "Cooldowns started, by deployment.",
                                 ["deployment"], registry=own)
        self.cooldown_until = Gauge("thinktank_upstream_cooldown_until_timestamp_seconds", "When the deployment's "
                                    "latest cooldown ends (Unix time; cooling down while above time()).",
                                    ["deployment"], registry=own, multiprocess_mode="livemax")
        self.refusals = Counter("thinktank_refusals", "Requests refused by a rate limit or a budget, by reason "
                                "and the kind of limit.", ["reason", "scope"], registry=own)
        self.cache_hits = Counter("thinktank_cache_hits", "Answers served from a cache, by model and cache.",
                                  ["model", "kind"], registry=own)
        self.cache_misses = Counter("thinktank_cache_misses", "Cache lookups that found nothing.",
                                    ["model", "kind"], registry=own)
        self.runs = Counter("thinktank_runs", "Runs ended, by kind and status.", ["kind", "status"], registry=own)
        self.run_duration = Histogram("thinktank_run_duration_seconds", "Runs ended: time from creation to end.",
                                      ["kind"], registry=own, buckets=RUN_BUCKETS)
        self.documents = Counter("thinktank_ingested_documents", "Documents through knowledge ingestion, by "
                                 "outcome.", ["status"], registry=own)
        self.chunks = Counter("thinktank_ingested_chunks", "Chunks written by knowledge ingestion.", registry=own)
        self._request_children: dict[tuple[str, str | None, int], _Request] = {}
        self._usage_children: dict[tuple[str, str | None], _Usage] = {}
        self._collectors: list[Collector] = []
        self._scrape: CollectorRegistry | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.flush_interval = 1.0
        """Seconds between background flushes (files only: a scrape in this process flushes first anyway)."""

    # -- labels ---------------------------------------------------------------------------------
    def model_label(self, model: str) -> str:
        """``model`` if the configuration defines it, else ``kb/*`` (a knowledge base) or ``other``."""
        if not self._labels_loaded:
            self._labels.update((name, name) for name in self._known_models())
            self._labels_loaded = True
        found = self._labels.get(model)
        if found is not None:
            return found
        return KNOWLEDGE_BASES if model.startswith("kb/") else OTHER

    def _bind_request(self, key: tuple[str, str | None, int]) -> _Request:
        model, deployment, status = key
        found = self._request_children[key] = _Request(
            self.requests.labels(model, deployment or NO_DEPLOYMENT, str(status)),
            _Observations(self.request_duration.labels(model), BOUNDS[LATENCY_BUCKETS]),
            _Observations(self.first_token.labels(model), BOUNDS[FIRST_TOKEN_BUCKETS]))
        return found

    def _bind_usage(self, key: tuple[str, str | None]) -> _Usage:
        model, deployment = key
        deployment = deployment or NO_DEPLOYMENT
        found = self._usage_children[key] = _Usage(
            self.tokens.labels(model, deployment, "input"), self.tokens.labels(model, deployment, "output"),
            self.cost.labels(model, deployment),
            _Observations(self.upstream_duration.labels(deployment), BOUNDS[LATENCY_BUCKETS]))
        return found

    # -- recording -------------------------------------------------------------------------------
    def request_finished(
        self, model: str, records: Sequence[UsageRecord], status: int, seconds: float, first_token: float | None,
    ) -> None:
        # The hot path: one call, dictionary lookups and additions (see the module doc).
        label = self._labels.get(model) or self.model_label(model)
        key = (label, records[-1].deployment if records else None, status)
        bound = self._request_children.get(key) or self._bind_request(key)
        bound.count += 1
        hist = bound.duration
        hist.counts[bisect_left(hist.bounds, seconds)] += 1
        hist.observed += 1
        hist.total += seconds
        if first_token is not None:
            hist = bound.first_token
            hist.counts[bisect_left(hist.bounds, first_token)] += 1
            hist.observed += 1
            hist.total += first_token
        for r in records:
            usage_key = (label, r.deployment)
            usage = self._usage_children.get(usage_key) or self._bind_usage(usage_key)
            usage.input += r.prompt_tokens
            usage.output += r.completion_tokens
            usage.cost += r.cost
            hist = usage.upstream
            hist.counts[bisect_left(hist.bounds, r.latency)] += 1
            hist.observed += 1
            hist.total += r.latency

    def upstream_failed(self, deployment: str, error: ProviderError) -> None:
        self.upstream_failures.labels(deployment, FAILURE_REASONS.get(type(error).__name__, OTHER)).inc()

    def retried(self, model: str) -> None:
        self.retries.labels(model).inc()

    def fallback(self, model: str, to: str) -> None:
        self.fallbacks.labels(model, to).inc()

    def cooldown(self, deployment: str, seconds: float) -> None:
        self.cooldowns.labels(deployment).inc()
        self.cooldown_until.labels(deployment).set(self._clock.time() + seconds)

    def refused(self, reason: str, scope: str) -> None:
        self.refusals.labels(reason, scope).inc()

    def cache_hit(self, model: str, kind: str) -> None:
        self.cache_hits.labels(self.model_label(model), kind).inc()

    def cache_miss(self, model: str, kind: str) -> None:
        self.cache_misses.labels(self.model_label(model), kind).inc()

    def run_ended(self, kind: str, status: str, seconds: float) -> None:
        self.runs.labels(kind, status).inc()
        self.run_duration.labels(kind).observe(max(seconds, 0.0))

    def ingested(self, status: str, documents: int, chunks: int) -> None:
        self.documents.labels(status).inc(documents)
        if chunks:
            self.chunks.inc(chunks)

    # -- flushing --------------------------------------------------------------------------------
    def flush(self) -> None:
        """Add the counts, tokens and costs recorded since the last flush to their counters."""
        for request in self._request_children.values():
            request.flush()
        for usage in self._usage_children.values():
            usage.flush()

    async def start(self) -> None:
        """With files: flush every ``flush_interval`` seconds, so other workers' scrapes see this one's counts."""
        if self.multiprocess and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="metrics-flush")

    async def _flush_loop(self) -> None:
        while True:
            await self._clock.sleep(self.flush_interval)
            try:
                self.flush()
            except Exception:  # pragma: no cover - a full disk, say: the next round tries again
                log.exception("writing the metrics failed")

    async def close(self) -> None:
        """Stop flushing in the background; add what is pending."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self.flush()

    # -- scraping --------------------------------------------------------------------------------
    def add_collector(self, collector: Collector) -> None:
        """A collector read at every scrape besides the metrics (values computed at scrape time)."""
        self._collectors.append(collector)
        if self.registry is not None:
            self.registry.register(collector)
        elif self._scrape is not None:
            self._scrape.register(collector)

    def scrape_registry(self) -> CollectorRegistry:
        """What a scrape reads: this recorder's registry, or (files) every process's files."""
        if self.registry is not None:
            return self.registry
        if self._scrape is None:
            from prometheus_client.multiprocess import MultiProcessCollector

            self._scrape = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self._scrape, path=self.directory)  # type: ignore[no-untyped-call]
            for collector in self._collectors:
                self._scrape.register(collector)
        return self._scrape
