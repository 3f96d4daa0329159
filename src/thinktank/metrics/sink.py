"""What thinktank counts, as the calls the accounting code makes where it already accounts.

:class:`MetricsSink` does nothing: it is what every service holds when metrics are off, so the code that
records never asks whether they are on (a call that returns at once costs ~50 ns).
:class:`~thinktank.metrics.prometheus.PrometheusMetrics` is the one that counts. Nothing here imports
``prometheus_client``.

Every label value comes from the configuration or from a small fixed set (statuses, reasons, kinds): model
names are mapped by the recorder (a name the configuration does not define becomes ``other``), so nothing a
client sends becomes a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..errors import ProviderError
    from ..gateway.router import UsageRecord

__all__ = ["MetricsSink"]


class MetricsSink:
    """The recording interface, doing nothing."""

    enabled = False

    def request_finished(
        self, model: str, records: Sequence[UsageRecord], status: int, seconds: float, first_token: float | None,
    ) -> None:
        """A request admitted by the gate ended (``Admission.finish``): the public ``model`` asked for, every
        upstream answer it was accounted for (with its deployment, tokens, cost and latency), its status, its
        duration, and for a stream the seconds to its first chunk."""

    def upstream_failed(self, deployment: str, error: ProviderError) -> None:
        """An upstream attempt on ``deployment`` failed with ``error`` (counted by the kind of failure)."""

    def retried(self, model: str) -> None:
        """The router tries ``model``'s group again after a failed attempt (same or sibling deployment)."""

    def fallback(self, model: str, to: str) -> None:
        """The router moved from ``model`` to its fallback ``to``."""

    def cooldown(self, deployment: str, seconds: float) -> None:
        """``deployment`` starts cooling down for ``seconds`` (a ``Cooldowns`` listener)."""

    def refused(self, reason: str, scope: str) -> None:
        """A request was refused by a rate limit (``rate_limit``, ``request_too_large``) or a budget
        (``budget``; ``unpriced_model``: a model without a price, scope ``model``); ``scope`` says which kind
        of limit: key, user, ip, tier, team, global or run."""

    def cache_hit(self, model: str, kind: str) -> None:
        """An answer came from a cache (``kind``: ``run`` for the deliberation run cache, ``response`` ...)."""

    def cache_miss(self, model: str, kind: str) -> None:
        """A cache was asked and had nothing."""

    def run_ended(self, kind: str, status: str, seconds: float) -> None:
        """A run (ensemble, debate, agent) ended with ``status`` after ``seconds`` (from its creation)."""

    def ingested(self, status: str, documents: int, chunks: int) -> None:
        """Documents came out of a knowledge ingestion with ``status`` (added, replaced, unchanged, duplicate,
        failed), with ``chunks`` chunks written."""

    async def start(self) -> None:
        """The app started: background work (if any) begins."""

    async def close(self) -> None:
        """The app stops: whatever is pending is written."""
