"""Operational metrics (Prometheus): what the gateway, the runs and ingestion count, and how a scrape reads it.

:class:`MetricsSink` is the interface the accounting code calls (doing nothing when metrics are off);
:func:`make_metrics` gives the app factory the one the settings ask for. ``prometheus_client`` is imported only
when metrics are on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..clock import Clock
from ..settings import Settings
from .sink import MetricsSink

__all__ = ["MetricsSink", "make_metrics"]


def make_metrics(settings: Settings, clock: Clock, known_models: Callable[[], Iterable[str]]) -> MetricsSink:
    """Prometheus metrics if ``THINKTANK_METRICS`` is on (the default), else the sink that does nothing.
    ``known_models``: the model names that may be labels (see :mod:`.prometheus`)."""
    if not settings.metrics:
        return MetricsSink()
    from .prometheus import PrometheusMetrics

    return PrometheusMetrics(known_models, clock)
