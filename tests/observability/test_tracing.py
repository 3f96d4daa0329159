"""Spans, with tracing on (an in-memory exporter behind the test's own provider) and off."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import Settings, parse_config
from thinktank.knowledge.embeddings import LocalEmbedder

from ..fakes.server import serving
from ..fakes.upstream import FakeUpstream, Reply
from .conftest import AUTH, Spans

PROMPT = "What is the airspeed velocity of an unladen swallow? ZEBRA-PROMPT-42"


def gateway_config(url: str, **router: Any) -> dict[str, Any]:
    return {"models": [{"name": "gpt", "provider": "openai", "model": "fake-model", "base_url": url + "/v1",
                        "api_key": "sk-upstream-secret-0123456789", "input_price": 1, "output_price": 2}],
            "router": {"backoff_base": 0, **router}}


@asynccontextmanager
async def traced(settings: Settings, spans: Spans | None, config: dict[str, Any],
                 **kw: Any) -> AsyncIterator[tuple[str, ThinktankApp, httpx.AsyncClient]]:
    app = create_app(settings, parse_config(config), tracer_provider=spans.provider if spans else None, **kw)
    async with serving(app) as url, httpx.AsyncClient(timeout=30) as http:
        yield url, app, http


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def no_text(spans: Spans, *texts: str) -> None:
    """None of ``texts`` is in any span's name or attributes (content capture is off)."""
    for s in spans.all():
        blob = s.name + repr(attrs(s)) + repr([e.attributes for e in s.events])
        for text in texts:
            assert text not in blob, (s.name, text)


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


async def test_a_plain_completion_is_a_request_span_with_one_attempt(
    settings: Settings, spans: Spans, upstream: FakeUpstream,
) -> None:
    async with traced(settings, spans, gateway_config(upstream.url)) as (url, _app, http):
        r = await http.post(url + "/v1/chat/completions", headers=AUTH, json={
            "model": "gpt", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0.3, "max_tokens": 50})
        assert r.status_code == 200, r.text
    request = spans.one("POST /v1/chat/completions")
    assert request.kind == SpanKind.SERVER and request.parent is None
    a = attrs(request)
    assert a["http.request.method"] == "POST" and a["http.route"] == "/v1/chat/completions"
    assert a["http.response.status_code"] == 200 and a["url.path"] == "/v1/chat/completions"
    assert a["gen_ai.request.model"] == "gpt" and a["gen_ai.operation.name"] == "chat"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (12, 8)
    assert a["thinktank.deployment"] == "gpt"
    [attempt] = spans.children(request)
    assert attempt.name == "chat fake-model" and attempt.kind == SpanKind.CLIENT
    b = attrs(attempt)
    assert b["gen_ai.operation.name"] == "chat" and b["gen_ai.provider.name"] == "openai"
    assert b["gen_ai.request.model"] == "gpt" and b["gen_ai.response.model"] == "fake-model"
    assert b["gen_ai.request.max_tokens"] == 50 and b["gen_ai.request.temperature"] == 0.3
    assert b["gen_ai.response.finish_reasons"] == ("stop",)
    assert (b["gen_ai.usage.input_tokens"], b["gen_ai.usage.output_tokens"]) == (12, 8)
    assert b["thinktank.deployment"] == "gpt" and b["thinktank.attempt"] == 1 and b["thinktank.retry"] == 0
    assert b["thinktank.cost_usd"] > 0
    assert attempt.status.status_code == StatusCode.UNSET
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for k in b)
    no_text(spans, "ZEBRA-PROMPT-42", "echo:", "sk-upstream-secret")
    # Our own provider: the global one is untouched.
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"


async def test_a_retried_attempt_has_a_failed_span_then_a_good_one(
    settings: Settings, spans: Spans, upstream: FakeUpstream,
) -> None:
    upstream.queue(Reply(status=503, json={"error": {"message": "overloaded, key=sk-live-abcdefghijkl"}}))
    async with traced(settings, spans, gateway_config(upstream.url, num_retries=2)) as (url, _app, http):
        r = await http.post(url + "/v1/chat/completions", headers=AUTH,
                            json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
    request = spans.one("POST /v1/chat/completions")
    first, second = sorted(spans.children(request), key=lambda s: attrs(s)["thinktank.attempt"])
    assert attrs(first)["thinktank.attempt"] == 1 and attrs(second)["thinktank.attempt"] == 2
    assert attrs(second)["thinktank.retry"] == 1
    assert first.status.status_code == StatusCode.ERROR
    assert attrs(first)["http.response.status_code"] == 503
    assert attrs(first)["error.type"] == "UpstreamServerError"
    assert "sk-live-abcdefghijkl" not in (first.status.description or "")
    assert "gen_ai.usage.input_tokens" not in attrs(first)
    assert second.status.status_code == StatusCode.UNSET and attrs(second)["gen_ai.usage.output_tokens"] == 8


async def test_a_stream_attempt_span_lasts_the_stream_and_carries_its_usage(
    settings: Settings, spans: Spans, upstream: FakeUpstream,
) -> None:
    async with traced(settings, spans, gateway_config(upstream.url)) as (url, _app, http):
        body = {"model": "gpt", "messages": [{"role": "user", "content": "a b c"}], "stream": True,
                "stream_options": {"include_usage": True}}
        async with http.stream("POST", url + "/v1/chat/completions", headers=AUTH, json=body) as r:
            assert r.status_code == 200
            text = "".join([line async for line in r.aiter_lines()])
        assert "[DONE]" in text
    request = spans.one("POST /v1/chat/completions")
    assert attrs(request)["gen_ai.request.stream"] is True
    [attempt] = spans.children(request)
    a = attrs(attempt)
    assert a["gen_ai.request.stream"] is True and a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.output_tokens"] > 0 and a["gen_ai.response.model"] == "fake-model"
    assert attempt.end_time is not None and request.end_time is not None
    assert attempt.end_time <= request.end_time


async def test_an_ensemble_run_has_stage_call_and_attempt_spans(settings: Settings, spans: Spans) -> None:
    def mock(name: str, reply: str) -> dict[str, Any]:
        return {"name": name, "provider": "mock", "options": {"replies": [reply]}}

    config = {"models": [mock("a", "Use PostgreSQL."), mock("b", "Use SQLite, then PostgreSQL."),
                         mock("chair", "Start with SQLite; move to PostgreSQL.")],
              "ensembles": [{"name": "council", "members": ["a", "b"], "strategy": "heuristic",
                             "synthesis": "chairman", "chairman": "chair"}]}
    async with traced(settings, spans, config) as (url, _app, http):
        r = await http.post(url + "/v1/chat/completions", headers=AUTH, json={
            "model": "ensemble/council", "messages": [{"role": "user", "content": PROMPT}]})
        assert r.status_code == 200, r.text
        for _ in range(100):  # the run's span ends as the run does, right after its answer
            if spans.named("invoke_workflow"):
                break
            await asyncio.sleep(0.01)
    request = spans.one("POST /v1/chat/completions")
    run = spans.one("invoke_workflow ensemble/council")
    assert parent_of(run) == span_id(request)
    assert attrs(run)["gen_ai.workflow.name"] == "ensemble/council"
    assert attrs(run)["thinktank.run.status"] == "completed"
    stages = {s.name: s for s in spans.children(run)}
    assert {"ensemble answer", "ensemble rank", "ensemble synthesis"} <= set(stages)
    members = spans.children(stages["ensemble answer"])
    assert sorted(attrs(m)["gen_ai.request.model"] for m in members) == ["a", "b"]
    assert {attrs(m)["thinktank.role"] for m in members} == {"member A", "member B"}
    for member in members:
        [attempt] = spans.children(member)
        assert attrs(attempt)["gen_ai.provider.name"] == "mock"
        assert attrs(attempt)["thinktank.deployment"] == attrs(member)["gen_ai.request.model"]
        assert attrs(member)["gen_ai.usage.output_tokens"] == attrs(attempt)["gen_ai.usage.output_tokens"]
    [chairman] = spans.children(stages["ensemble synthesis"])
    assert attrs(chairman)["thinktank.role"] == "chairman"
    assert len({s.context.trace_id for s in spans.all() if s.context is not None}) == 1
    no_text(spans, "ZEBRA-PROMPT-42", "PostgreSQL")


async def test_prompt_and_answer_go_on_spans_only_when_switched_on(
    settings: Settings, spans: Spans, upstream: FakeUpstream,
) -> None:
    on = settings.model_copy(update={"otel_content": True})
    async with traced(on, spans, gateway_config(upstream.url)) as (url, _app, http):
        r = await http.post(url + "/v1/chat/completions", headers=AUTH,
                            json={"model": "gpt", "messages": [{"role": "user", "content": PROMPT}]})
        assert r.status_code == 200
    attempt = spans.one("chat fake-model")
    assert PROMPT in attrs(attempt)["gen_ai.input.messages"]
    assert "echo: " in attrs(attempt)["gen_ai.output.messages"]


async def test_a_retrieval_has_its_span(
    settings: Settings, spans: Spans, upstream: FakeUpstream, local_embedder: LocalEmbedder,
) -> None:
    async with traced(settings, spans, gateway_config(upstream.url), local_embedder=local_embedder) as (url, _, http):
        api = url + "/api/v1/knowledge-bases"
        assert (await http.post(api, headers=AUTH, json={"name": "notes"})).status_code == 201
        up = await http.post(api + "/notes/documents", headers=AUTH, files=[
            ("files", ("tea.md", b"# Tea\n\nGreen tea is steeped at 80 degrees for two minutes."))])
        assert up.status_code in (200, 201, 202), up.text
        r = await http.post(api + "/notes/search", headers=AUTH, json={"query": "ZEBRA green tea steeping"})
        assert r.status_code == 200, r.text
        assert r.json()["data"]
    request = spans.one("POST /api/v1/knowledge-bases/{kb}/search")
    assert attrs(request)["http.route"] == "/api/v1/knowledge-bases/{kb}/search"
    [retrieval] = [s for s in spans.children(request) if s.name.startswith("retrieval ")]
    a = attrs(retrieval)
    assert a["gen_ai.operation.name"] == "retrieval" and a["thinktank.retrieval.mode"] == "hybrid"
    assert a["gen_ai.request.top_k"] == 8 and a["thinktank.retrieval.hits"] >= 1
    assert a["gen_ai.data_source.id"]
    no_text(spans, "ZEBRA")


async def test_an_incoming_traceparent_is_continued(settings: Settings, spans: Spans, upstream: FakeUpstream) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with traced(settings, spans, gateway_config(upstream.url)) as (url, _app, http):
        r = await http.post(url + "/v1/chat/completions", headers={**AUTH, "traceparent": f"00-{trace_id}-{parent}-01"},
                            json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        bad = await http.get(url + "/health", headers={"traceparent": "00-zzzz-not-a-trace-01"})
        assert bad.status_code == 200  # a malformed header starts a new trace, nothing more
    request = spans.one("POST /v1/chat/completions")
    assert request.context is not None and request.parent is not None
    assert format(request.context.trace_id, "032x") == trace_id
    assert format(request.parent.span_id, "016x") == parent and request.parent.is_remote
    [attempt] = spans.children(request)
    assert attempt.context is not None and attempt.context.trace_id == request.context.trace_id
    health = spans.one("GET /health")
    assert health.parent is None and health.context is not None and health.context.trace_id != request.context.trace_id


async def test_every_route_gets_a_request_span_and_errors_are_marked(
    settings: Settings, spans: Spans, upstream: FakeUpstream,
) -> None:
    async with traced(settings, spans, gateway_config(upstream.url)) as (url, _app, http):
        assert (await http.get(url + "/v1/models", headers=AUTH)).status_code == 200
        assert (await http.get(url + "/api/v1/runs/run_nope", headers=AUTH)).status_code == 404
        upstream.queue(*[Reply(status=500, json={"error": {"message": "down"}})] * 3)
        r = await http.post(url + "/v1/chat/completions", headers=AUTH,
                            json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code >= 500
    assert attrs(spans.one("GET /v1/models"))["http.response.status_code"] == 200
    missing = spans.one("GET /api/v1/runs/{run_id}")
    assert attrs(missing)["http.response.status_code"] == 404 and missing.status.status_code == StatusCode.UNSET
    failed = spans.one("POST /v1/chat/completions")
    assert failed.status.status_code == StatusCode.ERROR
    assert all(s.status.status_code == StatusCode.ERROR for s in spans.children(failed))


OFF = textwrap.dedent("""
    import asyncio, sys, httpx
    from thinktank.api.app import create_app
    from thinktank.config import Settings, parse_config
    from tests.fakes.server import serving

    async def main():
        cfg = {"models": [{"name": "m", "provider": "mock", "options": {"replies": ["hello"]}}]}
        app = create_app(Settings(data_dir=sys.argv[1], admin_key="tt-test-admin-key-0123456789"), parse_config(cfg))
        async with serving(app) as url, httpx.AsyncClient() as http:
            r = await http.post(url + "/v1/chat/completions", json={"model": "m", "messages": [
                {"role": "user", "content": "hi"}]}, headers={"Authorization": "Bearer tt-test-admin-key-0123456789"})
            assert r.status_code == 200, r.text
            assert r.headers["x-request-id"]
            assert app.state.tracing is None and app.state.router.tracing is None
        loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "thinktank.observability.t",
                                                                 "thinktank.observability.otel")))
        print("LOADED", loaded)

    asyncio.run(main())
""")


def test_with_tracing_off_nothing_of_opentelemetry_is_loaded(tmp_path: Any) -> None:
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THINKTANK_", "OTEL_"))}
    env["PYTHONPATH"] = f"{root / 'src'}{os.pathsep}{root}"
    out = subprocess.run([sys.executable, "-c", OFF, str(tmp_path)], capture_output=True, text=True, env=env,
                         cwd=root, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout


