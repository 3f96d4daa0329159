"""OpenTelemetry spans for requests, router attempts, run stages, model calls, tool calls and retrievals.

Imported only when tracing is on (``THINKTANK_OTEL_ENDPOINT``, the ``otel`` extra): every component holds a
``Tracing | None`` and checks it for None, so a server without tracing never imports OpenTelemetry and does
nothing more per request. The tracer comes from a provider the app factory builds (:mod:`.otel`); nothing is
set globally. Spans nest through OpenTelemetry's context, a context variable: a span is made current while its
step runs, and tasks started meanwhile (ensemble members) inherit it.

Attribute names follow the GenAI semantic conventions (``gen_ai.*``) and, for the request span, the HTTP ones.
No prompt, answer, query or tool text goes on a span unless ``content`` is on (``THINKTANK_OTEL_CONTENT``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..gateway.health import scrub_message

if TYPE_CHECKING:
    from ..gateway.strategies import Deployment
    from ..types import ChatRequest, ChatResponse, Message, Usage

__all__ = ["AttemptTrace", "Opened", "Tracing", "provider_name"]

_PROVIDERS = {"azure": "azure.ai.openai", "gemini": "gcp.gemini", "mistral": "mistral_ai"}
"""Our provider names whose GenAI convention name differs (``openai``, ``anthropic``, ``groq``, ``deepseek``
are the same)."""

_PROPAGATOR = TraceContextTextMapPropagator()


def provider_name(provider: str) -> str:
    return _PROVIDERS.get(provider, provider)


def _error(span: Span, exc: BaseException | None, message: str | None = None) -> None:
    """Mark ``span`` failed: the error's type, and its message scrubbed of secrets (never a traceback)."""
    kind = type(exc).__name__ if exc is not None else "error"
    span.set_attribute("error.type", kind)
    text = message if message is not None else (getattr(exc, "message", None) or str(exc or ""))
    span.set_status(Status(StatusCode.ERROR, scrub_message(str(text))))


class Opened:
    """A span made current until :meth:`close` (in the same task that opened it)."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))

    def close(self, error: BaseException | None = None, message: str | None = None) -> None:
        if error is not None or message is not None:
            _error(self.span, error, message)
        self.span.end()
        otel_context.detach(self._token)


class AttemptTrace:
    """The spans of one request's router attempts (one per deployment tried), each a child of the current span.
    Not made current: nothing under an attempt starts spans of its own."""

    __slots__ = ("_attributes", "_content", "_input", "_operation", "_tracer")

    def __init__(self, tracer: Tracer, operation: str, request: ChatRequest | None, model: str, content: bool) -> None:
        self._tracer = tracer
        self._operation = operation
        self._content = content
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.request.model": model}
        self._input: str | None = None
        if request is not None:
            if request.max_tokens is not None or request.max_completion_tokens is not None:
                attributes["gen_ai.request.max_tokens"] = request.output_limit() or 0
            if request.temperature is not None:
                attributes["gen_ai.request.temperature"] = request.temperature
            if request.top_p is not None:
                attributes["gen_ai.request.top_p"] = request.top_p
            attributes["gen_ai.request.stream"] = bool(request.stream)
            if content:
                self._input = orjson.dumps([m.model_dump(mode="json", exclude_none=True)
                                            for m in request.messages]).decode()
        self._attributes = attributes

    def start(self, deployment: Deployment, number: int) -> Span:
        provider = provider_name(deployment.config.provider)
        attributes = {
            **self._attributes, "gen_ai.provider.name": provider, "gen_ai.system": provider,
            "thinktank.deployment": deployment.id, "thinktank.attempt": number, "thinktank.retry": number - 1,
        }
        if self._input is not None:
            attributes["gen_ai.input.messages"] = self._input
        return self._tracer.start_span(f"{self._operation} {deployment.config.upstream_model}",
                                       kind=SpanKind.CLIENT, attributes=attributes)

    @staticmethod
    def failed(span: Span, error: BaseException) -> None:
        status = getattr(error, "upstream_status", None) or getattr(error, "status", None)
        if isinstance(status, int):
            span.set_attribute("http.response.status_code", status)
        _error(span, error)
        span.end()

    def answered(self, span: Span, response: ChatResponse) -> None:
        """What a complete answer says: its model and finish reasons (and text, with content on)."""
        span.set_attribute("gen_ai.response.model", response.model)
        if response.id:
            span.set_attribute("gen_ai.response.id", response.id)
        reasons = [c.finish_reason for c in response.choices if c.finish_reason]
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)
        if self._content:
            span.set_attribute("gen_ai.output.messages", orjson.dumps(
                [c.message.model_dump(mode="json", exclude_none=True) for c in response.choices]).decode())

    @staticmethod
    def streamed(span: Span, model: str | None, reasons: Sequence[str]) -> None:
        if model:
            span.set_attribute("gen_ai.response.model", model)
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", list(reasons))

    @staticmethod
    def accounted(span: Span, usage: Usage, cut_short: bool = False) -> None:
        """The attempt's usage and cost as the router accounted them; ends the span."""
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        span.set_attribute("thinktank.cost_usd", usage.cost or 0.0)
        if cut_short:
            span.set_attribute("thinktank.cut_short", True)
        span.end()


class Tracing:
    """The tracer, and what spans may carry. ``provider``: what to flush and shut down when the app stops
    (None when the caller owns it)."""

    def __init__(self, tracer: Tracer, *, content: bool = False, provider: Any = None) -> None:
        self.tracer = tracer
        self.content = content
        self.provider = provider

    # -- the request -----------------------------------------------------------------------------
    async def serve_http(
        self, app: Callable[[Any, Any, Any], Awaitable[None]], scope: Any, receive: Any, send: Any, route: str | None,
    ) -> None:
        """Run ``app`` under a SERVER span continuing the caller's W3C ``traceparent`` (if it sent one)."""
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in (b"traceparent", b"tracestate"):
                carrier[name.decode("latin-1")] = value.decode("latin-1")
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        method: str = scope["method"]
        attributes: dict[str, Any] = {
            "http.request.method": method, "url.path": scope["path"], "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        server = scope.get("server")
        if server:
            attributes["server.address"] = server[0]
            if server[1] is not None:
                attributes["server.port"] = server[1]
        if route is not None:
            attributes["http.route"] = route
        span = self.tracer.start_span(f"{method} {route}" if route else method, context=parent,
                                      kind=SpanKind.SERVER, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        status = [0]

        async def traced_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, traced_send)
        except BaseException as exc:
            _error(span, exc, "unhandled error")
            raise
        finally:
            if route is None:
                found = scope.get("route")
                path = getattr(found, "path", None)
                if isinstance(path, str):
                    span.set_attribute("http.route", path)
                    span.update_name(f"{method} {path}")
            if status[0]:
                span.set_attribute("http.response.status_code", status[0])
                if status[0] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                    span.set_attribute("error.type", str(status[0]))
            span.end()
            otel_context.detach(token)

    @staticmethod
    def describe_chat(request: ChatRequest, operation: str = "chat") -> None:
        """The request's GenAI attributes on the current (request) span."""
        span = trace.get_current_span()
        span.set_attribute("gen_ai.operation.name", operation)
        span.set_attribute("gen_ai.request.model", request.model)
        limit = request.output_limit()
        if limit is not None:
            span.set_attribute("gen_ai.request.max_tokens", limit)
        if request.temperature is not None:
            span.set_attribute("gen_ai.request.temperature", request.temperature)
        span.set_attribute("gen_ai.request.stream", bool(request.stream))

    @staticmethod
    def describe_usage(records: Sequence[Any], served_by: str | None = None) -> None:
        """What the whole request used (every call it made, a run's included), on the current span."""
        span = trace.get_current_span()
        span.set_attribute("gen_ai.usage.input_tokens", sum(r.prompt_tokens for r in records))
        span.set_attribute("gen_ai.usage.output_tokens", sum(r.completion_tokens for r in records))
        span.set_attribute("thinktank.cost_usd", sum(r.cost for r in records))
        if served_by:
            span.set_attribute("thinktank.deployment", served_by)

    @staticmethod
    def describe(attributes: Mapping[str, Any]) -> None:
        trace.get_current_span().set_attributes(attributes)

    # -- router attempts -------------------------------------------------------------------------
    def attempts(self, operation: str, request: ChatRequest | None, model: str) -> AttemptTrace:
        return AttemptTrace(self.tracer, operation, request, model, self.content)

    @staticmethod
    def accounted(span: Span, usage: Usage) -> None:
        AttemptTrace.accounted(span, usage)

    # -- steps: runs, stages, model calls, tools, retrieval --------------------------------------
    def open(self, name: str, attributes: Mapping[str, Any], kind: SpanKind = SpanKind.INTERNAL) -> Opened:
        """A span, current until ``close`` (a step whose own calls nest under it)."""
        return Opened(self.tracer.start_span(name, kind=kind, attributes=attributes))

    def run(self, kind: str, name: str, run_id: str) -> Opened:
        operation = "invoke_agent" if kind == "agent" else "invoke_workflow"
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "thinktank.run.id": run_id,
                                      "thinktank.run.kind": kind}
        attributes["gen_ai.agent.name" if kind == "agent" else "gen_ai.workflow.name"] = f"{kind}/{name}"
        return self.open(f"{operation} {kind}/{name}", attributes)

    def stage(self, kind: str, run_id: str, stage: str) -> Opened:
        return self.open(f"{kind} {stage}", {"thinktank.run.id": run_id, "thinktank.stage": stage})

    def call(self, stage: str, role: str, model: str, messages: Sequence[Message], max_tokens: int | None,
             temperature: float | None) -> Opened:
        """One model call of a run (a member's answer, a judge's review, an agent's step)."""
        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                                      "thinktank.stage": stage, "thinktank.role": role}
        if max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = max_tokens
        if temperature is not None:
            attributes["gen_ai.request.temperature"] = temperature
        if self.content:
            attributes["gen_ai.input.messages"] = orjson.dumps(
                [m.model_dump(mode="json", exclude_none=True) for m in messages]).decode()
        return self.open(f"chat {model}", attributes)

    def called(self, opened: Opened, deployment: str | None, prompt_tokens: int, completion_tokens: int,
               cost: float, text: str) -> None:
        span = opened.span
        if deployment:
            span.set_attribute("thinktank.deployment", deployment)
        span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", completion_tokens)
        span.set_attribute("thinktank.cost_usd", cost)
        if self.content:
            span.set_attribute("gen_ai.output.messages", orjson.dumps(
                [{"role": "assistant", "content": text}]).decode())
        opened.close()

    def tool(self, name: str, call_id: str, arguments: Mapping[str, Any]) -> Opened:
        attributes: dict[str, Any] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                                      "gen_ai.tool.call.id": call_id}
        if self.content:
            attributes["gen_ai.tool.call.arguments"] = orjson.dumps(arguments, default=str).decode()
        return self.open(f"execute_tool {name}", attributes)

    def tool_done(self, opened: Opened, text: str, is_error: bool) -> None:
        if self.content:
            opened.span.set_attribute("gen_ai.tool.call.result", text)
        opened.close(message="the tool failed" if is_error else None)

    def retrieval(self, kb_ids: Sequence[str], query: str, mode: str, limit: int) -> Opened:
        attributes: dict[str, Any] = {"gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": ",".join(kb_ids),
                                      "thinktank.retrieval.mode": mode, "gen_ai.request.top_k": limit}
        if self.content:
            attributes["gen_ai.retrieval.query.text"] = query
        return self.open(f"retrieval {','.join(kb_ids)}", attributes)

    # -- the end ---------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Flush what is left and stop exporting (blocking: call it from a thread)."""
        if self.provider is not None:
            self.provider.shutdown()
