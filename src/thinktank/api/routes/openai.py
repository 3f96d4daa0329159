"""``/v1/chat/completions``, ``/v1/embeddings`` and ``/v1/models`` as raw ASGI handlers.

A chat completion is: admit (who, which model, rate limits, budgets) -> resolve the name in the catalog
-> complete or stream -> send. The handler knows nothing of kinds of model: a deployment, a group, an
ensemble, a debate and a grounded model all answer the same way; what the response says beyond
OpenAI's fields (cost, deployment, run, citations) it carries as typed fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ...accounts.governance import Admission
from ...accounts.principal import Principal
from ...cache.service import CachePlan
from ...errors import InvalidRequestError, ModelNotFoundError, ThinktankError
from ...gateway.tokens import estimate_request_tokens
from ...outages import unavailable
from ...providers.base import ChatModel
from ...types import ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest
from .. import sse
from ..asgi import Receive, Scope, Send, read_body, send_bytes, send_error, send_json
from ..credentials import credential
from ..state import AppState

__all__ = ["FORBIDDEN_KEYS", "OpenAIHandlers", "parse_body"]

log = logging.getLogger("thinktank.api")

#: Keys that would let a caller choose the upstream or its credentials. Never honoured.
FORBIDDEN_KEYS = frozenset({"api_base", "base_url", "api_key", "azure_endpoint", "api_url", "azure_ad_token"})
#: Subtrees that are JSON schemas describing the caller's data, not settings.
_SCHEMA_PATHS = (("tools", "*", "function", "parameters"), ("response_format", "json_schema", "schema"))

M = TypeVar("M", bound=BaseModel)


def _find_forbidden(node: Any, path: tuple[str, ...]) -> str | None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in FORBIDDEN_KEYS:
                return ".".join((*path, key))
            if isinstance(value, dict | list):
                sub = (*path, str(key))
                if _is_schema(sub):
                    continue
                found = _find_forbidden(value, sub)
                if found:
                    return found
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, dict | list):
                found = _find_forbidden(item, (*path, str(i)))
                if found:
                    return found
    return None


def _is_schema(path: tuple[str, ...]) -> bool:
    for pattern in _SCHEMA_PATHS:
        if len(path) == len(pattern) and all(p in ("*", q) for p, q in zip(pattern, path, strict=True)):
            return True
    return False


def parse_body(body: bytes, model: type[M]) -> M:
    """Validate a JSON body: 400 with a precise message for every kind of malformed input."""
    if not body:
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON ({exc.msg} at position {exc.pos}).") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    found = _find_forbidden(data, ())
    if found:
        raise InvalidRequestError(
            f"'{found}' is not accepted in a request body: thinktank takes upstream URLs and keys only from "
            "its own configuration.",
            param=found,
            code="forbidden_parameter",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(x) for x in err["loc"])
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise InvalidRequestError(f"{where}: {err['msg']}{more}", param=where or None) from None


def _chat_estimate(request: ChatRequest) -> int:
    return estimate_request_tokens(request) + (request.output_limit() or 0)


_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"api-key", b"cookie", b"x-csrf-token", b"origin",
                                 b"host"})


class OpenAIHandlers:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self._log_content = state.settings.log_content
        """Prompts and answers logged at debug level (``THINKTANK_LOG_CONTENT``); never otherwise."""

    async def principal(self, scope: Scope) -> Principal:
        h: dict[bytes, str] = {}
        for k, v in scope["headers"]:
            if k in _CREDENTIAL_HEADERS and k not in h:
                h[k] = v.decode("latin-1")
        token = credential(h.get(b"authorization"), h.get(b"x-api-key") or h.get(b"api-key"), h.get(b"cookie"),
                           scope["method"], h.get(b"x-csrf-token"), h.get(b"origin"), h.get(b"host"))
        return await self.state.authenticate(token, _ip(scope) or "unknown")

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        admitted: Admission | None = None
        try:
            principal = await self.principal(scope)
            asked = parse_body(await read_body(scope, receive, self.state.settings.max_body_bytes), ChatRequest)
            model, request = self.state.catalog.for_request(asked, principal)
            tracing = self.state.tracing
            if tracing is not None:
                tracing.describe_chat(request)
            if self._log_content:
                log.debug("chat request for %s: %s", request.model, orjson.dumps(
                    [m.model_dump(mode="json", exclude_none=True) for m in request.messages]).decode())
            cache = self.state.response_cache
            plan = cache.plan(asked, principal, scope["headers"])  # the request as asked: knowledge fields too
            async with self.state.gate.admitted(principal, _ip(scope), request.model,
                                                _chat_estimate(request)) as admission:
                admitted = admission
                admission.stream = request.stream
                if plan is None:
                    await self._answer(model, request, admission, receive, send)
                    return
                admission.ctx.cache_allowed = plan.earlier
                hit = await cache.lookup(plan)
                if hit is None:
                    await self._answer(model, request, admission, receive, send, plan)
                    return
                admission.cache_hit = True  # no upstream call, no budget hold; the rate limits applied
                run_id = None
                record: Any = getattr(model, "served_from_cache", None)  # a run model records a run for it
                if hit.answer.run_id and record is not None:
                    run_id = await record(request, admission.ctx, hit.answer.run_id)
                if request.stream:
                    admission.status = await self._stream(cache.replay(hit), request, admission, receive, send,
                                                          hit.headers(run_id))
                else:
                    _record_before_send(admission)
                    await send_bytes(send, 200, hit.answer.body, [(b"x-thinktank-cost-usd", b"0.0000000000"),
                                                                  *hit.headers(run_id)])
        except ThinktankError as exc:
            run_id = admitted.ctx.run_id if admitted is not None else None
            await send_error(send, exc, [(b"x-thinktank-run-id", run_id.encode())] if run_id else None)

    async def _answer(self, model: ChatModel, request: ChatRequest, admission: Admission, receive: Receive,
                      send: Send, plan: CachePlan | None = None) -> None:
        """The model answers (and the cache keeps the answer when ``plan`` says so)."""
        headers = [(b"x-thinktank-cache", plan.status)] if plan is not None else []
        tracing = self.state.tracing
        if request.stream:
            chunks: AsyncIterator[ChatChunk] = model.stream(request, admission.ctx)
            if plan is not None and plan.write:
                chunks = self.state.response_cache.recording(plan, chunks)
            try:
                admission.status = await self._stream(chunks, request, admission, receive, send, headers)
            finally:
                if tracing is not None:
                    tracing.describe_usage(admission.ctx.records)
            return
        response = await model.complete(request, admission.ctx)
        if tracing is not None:
            tracing.describe_usage(admission.ctx.records, response.served_by)
        if self._log_content:
            log.debug("chat answer from %s: %s", response.served_by or request.model, orjson.dumps(
                [c.message.model_dump(mode="json", exclude_none=True) for c in response.choices]).decode())
        if plan is not None:
            await self.state.response_cache.store_response(plan, response)
        _record_before_send(admission)
        await self._send_response(response, admission, send, headers)

    async def _send_response(self, response: ChatResponse, admission: Admission, send: Send,
                             extra: list[tuple[bytes, bytes]] | None = None) -> None:
        ctx = admission.ctx
        # Everything the request paid for (a query's embedding, a rerank, every step of a run), not only
        # the answer's last call.
        headers = [(b"x-thinktank-cost-usd", f"{ctx.cost():.10f}".encode()), *(extra or [])]
        if response.served_by:
            headers.append((b"x-thinktank-deployment", response.served_by.encode()))
        run_id = response.run_id or ctx.run_id
        if run_id:
            headers.append((b"x-thinktank-run-id", run_id.encode()))
        await send_bytes(send, 200, response.__pydantic_serializer__.to_json(response), headers)

    async def _stream(
        self, stream: AsyncIterator[ChatChunk], request: ChatRequest, admission: Admission, receive: Receive,
        send: Send, headers: list[tuple[bytes, bytes]],
    ) -> int:
        """Stream the answer; the status to record (499 when the client went away). Errors before the first
        chunk propagate: the client gets a plain JSON error."""
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        chunks: AsyncIterator[ChatChunk] = aiter(stream)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await _close(chunks)
            raise
        if first is not None:
            admission.first_chunk()
        pump = asyncio.ensure_future(self._pump(first, chunks, include_usage, admission, send, headers))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        status = 200
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not pump.done():
                pump.cancel()  # the client went away: cancel the upstream request
                status = 499
                log.info("client disconnected mid-stream; upstream request cancelled")
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            with contextlib.suppress(asyncio.CancelledError):
                failed = await pump
                if failed is not None:
                    status = failed
        return status

    async def _pump(
        self, first: ChatChunk | None, chunks: AsyncIterator[ChatChunk], include_usage: bool, admission: Admission,
        send: Send, headers: list[tuple[bytes, bytes]],
    ) -> int | None:
        """Send the stream; the status of a failure midway, else None."""
        failed: int | None = None
        run_id = (first.run_id if first is not None else None) or admission.ctx.run_id
        if run_id and not any(name == b"x-thinktank-run-id" for name, _ in headers):
            headers = [*headers, (b"x-thinktank-run-id", run_id.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": [*sse.HEADERS_RAW, *headers]})
        try:
            chunk = first
            while chunk is not None:
                if chunk.note is not None:
                    body = sse.comment(chunk.note)
                else:
                    if chunk.usage is not None and not include_usage:
                        if not chunk.choices and chunk.citations is None:
                            chunk = await anext(chunks, None)
                            continue
                        chunk.usage = None
                    body = sse.event(chunk.__pydantic_serializer__.to_json(chunk, exclude_none=True))
                await send({"type": "http.response.body", "body": body, "more_body": True})
                chunk = await anext(chunks, None)
        except Exception as exc:
            # An upstream's error, or the database or Redis lost midway (a run's save): an error event, then the end.
            error = exc if isinstance(exc, ThinktankError) else unavailable(exc)
            if error is None:
                raise
            if error is not exc:
                log.warning("a stream ended early: %s", error.message)
            failed = error.status
            await send({"type": "http.response.body", "body": sse.event(orjson.dumps(error.to_body())),
                        "more_body": True})
        finally:
            await _close(chunks)
        if failed is None:
            _record_before_send(admission)
        await send({"type": "http.response.body", "body": sse.DONE, "more_body": False})
        return failed

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            principal = await self.principal(scope)
            request = parse_body(await read_body(scope, receive, self.state.settings.max_body_bytes),
                                 EmbeddingRequest)
            self.state.catalog.permit(principal, request.model)
            ids = request.token_ids()
            estimate = sum(map(len, ids)) if ids is not None else sum(len(t) for t in request.texts()) // 4 + 1
            tracing = self.state.tracing
            if tracing is not None:
                tracing.describe({"gen_ai.operation.name": "embeddings", "gen_ai.request.model": request.model})
            async with self.state.gate.admitted(principal, _ip(scope), request.model, estimate) as admission:
                response = await self.state.router.embed(request, admission.ctx)
                if tracing is not None:
                    tracing.describe_usage(admission.ctx.records)
                cost = response.usage.cost or 0.0
                _record_before_send(admission)
                await send_bytes(send, 200, response.__pydantic_serializer__.to_json(response),
                                 [(b"x-thinktank-cost-usd", f"{cost:.10f}".encode())])
        except ThinktankError as exc:
            await send_error(send, exc)

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1/models`` and ``GET /v1/models/{id}`` (ids may contain slashes)."""
        try:
            principal = await self.principal(scope)
            path: str = scope["path"]
            wanted = path.split("/models/", 1)[1] if "/models/" in path else ""
            entries = await self.state.catalog.models(
                principal, knowledge_bases=not wanted or wanted.startswith("kb/"))
            created = int(self.state.started_at)
            objects = [
                {"id": m.id, "object": "model", "created": created, "owned_by": m.owned_by, "thinktank_kind": m.kind,
                 **({"description": m.description} if m.description else {})}
                for m in entries
            ]
            if not wanted:
                await send_json(send, 200, {"object": "list", "data": objects})
                return
            found = next((o for o in objects if o["id"] == wanted), None)
            if found is None:
                raise ModelNotFoundError(f"The model '{wanted}' does not exist here.", param="model")
            await send_json(send, 200, found)
        except ThinktankError as exc:
            await send_error(send, exc)


def _record_before_send(admission: Admission) -> None:
    """The answer is complete and about to leave: its usage row is recorded (journaled) first, so that a process
    killed right after sending it loses nothing (the admission's end then only counts its tokens). Not while work
    under it goes on in the background (its cost is not all known yet)."""
    background = admission.ctx.background
    if not background or all(t.done() for t in background):
        admission.record(admission.status, stream=admission.stream, cache_hit=admission.cache_hit)


async def _close(chunks: AsyncIterator[ChatChunk]) -> None:
    aclose: Callable[[], Any] | None = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def _ip(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _json_body(schema: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


_ERROR = {"description": "An error in OpenAI's shape: {\"error\": {\"message\", \"type\", \"param\", \"code\"}}"}


def openapi_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenAI endpoints (served by the raw handlers above, not by FastAPI) for ``/docs``: their paths
    and the schemas they use."""
    from pydantic.json_schema import models_json_schema

    from ...types import EmbeddingResponse

    _, top = models_json_schema(
        [(m, "validation") for m in (ChatRequest, ChatResponse, ChatChunk, EmbeddingRequest, EmbeddingResponse)],
        ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    security: list[dict[str, list[str]]] = [{"HTTPBearer": []}]
    errors = {"400": _ERROR, "401": _ERROR, "404": _ERROR, "429": _ERROR, "502": _ERROR}
    chat = {
        "post": {
            "tags": ["openai"], "summary": "Chat completions (any model name: a deployment, a group, "
            "ensemble/…, debate/…, kb/…)", "operationId": "chat_completions", "security": security,
            "description": "OpenAI's chat completions. `stream: true` answers with server-sent events "
            "(`data: {chunk}` … `data: [DONE]`; comments `: …` show an ensemble's progress). Beyond OpenAI's "
            "fields: `knowledge_bases` and `knowledge` ground any model in your knowledge bases (the answer "
            "carries `citations`); a run model takes `cache`, `tags` and `max_cost_usd`. Response cache (any model "
            "but agents): `x-thinktank-cache: allow|exact|deny`, `x-thinktank-cache-ttl: <seconds>`, `Cache-Control: "
            "no-cache|no-store|max-age=<seconds>`. Headers: `x-thinktank-cost-usd`, `x-thinktank-deployment`, "
            "`x-thinktank-run-id`, `x-thinktank-cache: hit|miss|bypass` (with a hit: `x-thinktank-cache-match: "
            "exact|semantic` and `age`).",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}}},
            "responses": {"200": {"description": "The answer, or with stream=true its chunks (ChatChunk) as SSE",
                                  "content": {
                                      "application/json": {"schema": {"$ref": "#/components/schemas/ChatResponse"}},
                                      "text/event-stream": {"schema": {"$ref": "#/components/schemas/ChatChunk"}}}},
                          **errors},
        }
    }
    embeddings = {
        "post": {
            "tags": ["openai"], "summary": "Embeddings", "operationId": "embeddings", "security": security,
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingRequest"}}}},
            "responses": {"200": _json_body("EmbeddingResponse", "One embedding per input, in order"), **errors},
        }
    }
    listing = {"type": "object", "properties": {"object": {"const": "list"}, "data": {
        "type": "array", "items": {"$ref": "#/components/schemas/ModelObject"}}}}
    schemas["ModelObject"] = {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
        "id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
        "owned_by": {"type": "string"}, "description": {"type": "string"},
        "thinktank_kind": {"enum": ["model", "group", "alias", "ensemble", "debate", "knowledge_base"]}}}
    models = {"get": {"tags": ["openai"], "summary": "The model names you may use", "operationId": "list_models",
                      "security": security, "responses": {"200": {"description": "Every name", "content": {
                          "application/json": {"schema": listing}}}, "401": _ERROR}}}
    one = {"get": {"tags": ["openai"], "summary": "One model name", "operationId": "get_model",
                   "security": security, "parameters": [{"name": "model", "in": "path", "required": True,
                                                         "schema": {"type": "string"}}],
                   "responses": {"200": _json_body("ModelObject", "The model"), "404": _ERROR}}}
    paths = {"/v1/chat/completions": chat, "/v1/embeddings": embeddings, "/v1/models": models,
             "/v1/models/{model}": one}
    return paths, schemas
