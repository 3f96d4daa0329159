"""The exporter as configured by THINKTANK_OTEL_ENDPOINT: spans reach a real OTLP/HTTP receiver on loopback (an
aiohttp server decoding the protobuf with opentelemetry-proto)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from thinktank.api.app import create_app
from thinktank.config import Settings, parse_config
from thinktank.errors import ConfigError
from thinktank.observability.otel import traces_url

from ..fakes.server import serve_aiohttp, serving
from .conftest import AUTH


class Receiver:
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner, self.url = await serve_aiohttp(app)

    async def _traces(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.requests.append(message)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def spans(self) -> list[tuple[str, dict[str, Any], Any]]:
        """(resource attributes' service.name, span attributes, span) of every span received."""
        out = []
        for req in self.requests:
            for rs in req.resource_spans:
                resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attributes = {kv.key: _value(kv.value) for kv in span.attributes}
                        out.append((resource.get("service.name", ""), attributes, span))
        return out


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.close()


async def test_spans_are_exported_over_otlp_http(settings: Settings, receiver: Receiver,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    cfg = {"models": [{"name": "m", "provider": "mock", "options": {"replies": ["hello"]}}]}
    app = create_app(settings.model_copy(update={"otel_endpoint": receiver.url}), parse_config(cfg))
    async with serving(app) as url, httpx.AsyncClient() as http:
        r = await http.post(url + "/v1/chat/completions", headers=AUTH,
                            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
    # Stopping the app flushed the batch.
    assert receiver.content_types and set(receiver.content_types) == {"application/x-protobuf"}
    received = receiver.spans()
    names = {span.name for _, _, span in received}
    assert {"POST /v1/chat/completions", "chat m"} <= names
    assert {service for service, _, _ in received} == {"thinktank"}
    [(_, attributes, attempt)] = [x for x in received if x[2].name == "chat m"]
    assert attributes["gen_ai.provider.name"] == "mock" and attributes["gen_ai.request.model"] == "m"
    [(_, _, request)] = [x for x in received if x[2].name == "POST /v1/chat/completions"]
    assert attempt.parent_span_id == request.span_id and attempt.trace_id == request.trace_id


def test_the_endpoint_setting(settings: Settings) -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://c.example/v1/traces") == "https://c.example/v1/traces"
    with pytest.raises(ConfigError, match="THINKTANK_OTEL_ENDPOINT"):
        create_app(settings.model_copy(update={"otel_endpoint": "collector:4318"}), parse_config({"models": []}))
