"""Building the tracer from the settings: imported only when tracing is on, and the one place that imports
the OpenTelemetry SDK (the ``otel`` extra)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from ..settings import Settings
    from .tracing import Tracing

__all__ = ["build_tracing", "from_provider", "traces_url"]

_MISSING = ("tracing is on (THINKTANK_OTEL_ENDPOINT is set) but OpenTelemetry is not installed: "
            "pip install 'thinktank[otel]', or unset THINKTANK_OTEL_ENDPOINT")


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector given by its base URL (``/v1/traces`` added unless there)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def from_provider(provider: TracerProvider, *, content: bool = False, owned: bool = False) -> Tracing:
    """Tracing with ``provider``'s tracer (``owned``: shut down with the app)."""
    from .. import __version__
    from .tracing import Tracing

    return Tracing(provider.get_tracer("thinktank", __version__), content=content,
                   provider=provider if owned else None)


def build_tracing(settings: Settings) -> Tracing | None:
    """None when tracing is off (no endpoint, or ``OTEL_SDK_DISABLED=true``): nothing is imported then.
    Else a provider of its own (not the global one) exporting in batches over OTLP/HTTP."""
    if not settings.otel_endpoint or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if not settings.otel_endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"THINKTANK_OTEL_ENDPOINT must be an http:// or https:// URL, not "
                          f"'{settings.otel_endpoint[:80]}'")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError(_MISSING) from None
    from .. import __version__

    attributes = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "thinktank"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings.otel_endpoint))))
    return from_provider(provider, content=settings.otel_content, owned=True)
