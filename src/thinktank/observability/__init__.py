"""Seeing a running server: request ids carried into every log line (``request_ids``), log formats
(``logs``), and OpenTelemetry traces (``tracing``, imported only when tracing is on: the ``otel`` extra)."""
