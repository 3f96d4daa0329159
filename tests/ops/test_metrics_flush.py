"""The recorder keeps counts and histogram buckets in plain numbers and adds them at a flush: what a scrape
then reads is exactly what recording each request straight into prometheus_client would have given."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from thinktank.clock import SystemClock
from thinktank.gateway.router import UsageRecord
from thinktank.metrics.prometheus import FIRST_TOKEN_BUCKETS, LATENCY_BUCKETS, PrometheusMetrics

from .scrape import parse


def test_flushed_values_equal_direct_recording() -> None:
    rng = random.Random(7)
    metrics = PrometheusMetrics(lambda: ["a", "b"], SystemClock())
    reference = CollectorRegistry()
    requests = Counter("thinktank_requests", "", ["model", "deployment", "status"], registry=reference)
    duration = Histogram("thinktank_request_duration_seconds", "", ["model"], registry=reference,
                         buckets=LATENCY_BUCKETS)
    first = Histogram("thinktank_time_to_first_token_seconds", "", ["model"], registry=reference,
                      buckets=FIRST_TOKEN_BUCKETS)
    upstream = Histogram("thinktank_upstream_duration_seconds", "", ["deployment"], registry=reference,
                         buckets=LATENCY_BUCKETS)
    tokens = Counter("thinktank_tokens", "", ["model", "deployment", "type"], registry=reference)
    for i in range(500):
        model = rng.choice(["a", "b", "kb/notes", "who-knows"])
        label = model if model in ("a", "b") else "kb/*" if model.startswith("kb/") else "other"
        status = rng.choice([200, 200, 200, 429, 502])
        # Bounds themselves too: a value equal to a bound belongs to that bound's bucket.
        seconds = rng.choice([*LATENCY_BUCKETS, rng.uniform(0, 400), 1e6])
        ttft = rng.choice([None, *FIRST_TOKEN_BUCKETS, rng.uniform(0, 70)])
        record = UsageRecord(model, "dep-1", rng.randint(0, 50), rng.randint(0, 50), 0.0, seconds / 2, 200, False, 1)
        metrics.request_finished(model, [record], status, seconds, ttft)
        requests.labels(label, "dep-1", str(status)).inc()
        duration.labels(label).observe(seconds)
        if ttft is not None:
            first.labels(label).observe(ttft)
        upstream.labels("dep-1").observe(seconds / 2)
        tokens.labels(label, "dep-1", "input").inc(record.prompt_tokens)
        tokens.labels(label, "dep-1", "output").inc(record.completion_tokens)
        if i % 97 == 0:
            metrics.flush()  # flushes in between add up
    metrics.flush()
    assert metrics.registry is not None
    got = parse(generate_latest(metrics.registry).decode())
    want = parse(generate_latest(reference).decode())
    names = ("thinktank_requests_total", "thinktank_request_duration_seconds_bucket",
             "thinktank_request_duration_seconds_count", "thinktank_time_to_first_token_seconds_bucket",
             "thinktank_upstream_duration_seconds_bucket", "thinktank_tokens_total")
    for name in names:
        mine = sorted((tuple(sorted(lb.items())), v) for n, lb, v in got.samples if n == name)
        theirs = sorted((tuple(sorted(lb.items())), v) for n, lb, v in want.samples if n == name)
        assert mine == theirs and mine, name
    for name in ("thinktank_request_duration_seconds_sum", "thinktank_upstream_duration_seconds_sum"):
        assert abs(got.value(name) - want.value(name)) < 1e-6 * want.value(name)
    assert got.label_values("thinktank_requests_total", "model") == {"a", "b", "kb/*", "other"}
