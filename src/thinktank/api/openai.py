"""``/v1/chat/completions``, ``/v1/embeddings`` and ``/v1/models`` as raw ASGI handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ..accounts.gate import Admission
from ..accounts.principal import Principal
from ..deliberation.runs import LiveRun
from ..deliberation.service import RunOptions
from ..errors import (
    ConflictError,
    InvalidRequestError,
    ModelNotFoundError,
    ProviderError,
    RateLimitError,
    RunFailedError,
    ThinktankError,
)
from ..gateway.tokens import estimate_request_tokens
from ..types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    Delta,
    EmbeddingRequest,
    ResponseMessage,
    Usage,
)
from .asgi import Receive, Scope, Send, bearer_token, header, read_body, send_bytes, send_error, send_json
from .state import AppState

if TYPE_CHECKING:
    from ..knowledge.grounding import Grounding
    from .grounded import GroundedChat

__all__ = ["FORBIDDEN_KEYS", "OpenAIHandlers", "parse_body"]

log = logging.getLogger("thinktank.api")

#: Keys that would let a caller choose the upstream or its credentials. Never honoured.
FORBIDDEN_KEYS = frozenset({"api_base", "base_url", "api_key", "azure_endpoint", "api_url", "azure_ad_token"})
#: Subtrees that are JSON schemas describing the caller's data, not settings.
_SCHEMA_PATHS = (("tools", "*", "function", "parameters"), ("response_format", "json_schema", "schema"))

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", ChatRequest, EmbeddingRequest)


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


class OpenAIHandlers:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self._grounded: GroundedChat | None = None

    def grounded(self) -> GroundedChat:
        """Grounded chat, made on first use (no knowledge imports for gateways that never ground)."""
        if self._grounded is None:
            from .grounded import GroundedChat

            self._grounded = GroundedChat(self.state)
        return self._grounded

    async def principal(self, scope: Scope) -> Principal:
        raw = header(scope, b"authorization")
        alt = header(scope, b"x-api-key") or header(scope, b"api-key")
        token = bearer_token(raw.decode("latin-1") if raw is not None else None,
                             alt.decode("latin-1") if alt is not None else None)
        return await self.state.authenticate(token, _ip(scope) or "unknown")

    async def _admit(
        self, scope: Scope, receive: Receive, model: type[R], estimate: Callable[[R], int]
    ) -> tuple[R, Admission]:
        """Authenticate, read and validate the body, check the model, pass the rate limits."""
        principal = await self.principal(scope)
        request = parse_body(await read_body(scope, receive, self.state.settings.max_body_bytes), model)
        principal.check_model(request.model)
        return request, await self.state.gate.admit(principal, _ip(scope), request.model, estimate(request))

    @staticmethod
    async def _refuse(send: Send, exc: ThinktankError, admission: Admission | None) -> None:
        if admission is not None:
            await admission.finish(exc.status)
        await send_error(send, exc)

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission: Admission | None = None
        grounding: Grounding | None = None
        try:
            request, admission = await self._admit(
                scope, receive, ChatRequest, lambda r: estimate_request_tokens(r) + (r.output_limit() or 0)
            )
            extra = request.model_extra
            if request.model.startswith("kb/") or (extra and ("knowledge_bases" in extra or "knowledge" in extra)):
                request, grounding = await self.grounded().prepare(request, admission.principal, admission.ctx)
            elif request.model.startswith(("ensemble/", "debate/")):
                owned, admission = admission, None  # _deliberate records it, now or when the run ends
                run = await self._deliberate(scope, request, owned)
                await self._send_run(run, request, send)
                return
            if request.stream:
                await self._stream(request, admission, receive, send, grounding)
                return
            response = await self.state.router.complete(request, admission.ctx)
        except ThinktankError as exc:
            await self._refuse(send, exc, admission)
            return
        await admission.finish(200)
        cost = response.usage.cost if response.usage is not None and response.usage.cost is not None else 0.0
        if grounding is not None:
            # The query's embedding and a rerank are paid for too: the cost is the request's, not the answer's.
            cost = sum(r.cost for r in admission.ctx.records)
            answer = (response.choices[0].message.content or "") if response.choices else ""
            # An extra field of the (open) response model: serialised with it, at the top level.
            setattr(response, "citations", [c.to_dict() for c in grounding.cited(answer)])  # noqa: B010
        headers = [(b"x-thinktank-cost-usd", f"{cost:.10f}".encode())]
        if response.served_by:
            headers.append((b"x-thinktank-deployment", response.served_by.encode()))
        await send_bytes(send, 200, response.__pydantic_serializer__.to_json(response), headers)

    async def _deliberate(self, scope: Scope, request: ChatRequest, admission: Admission) -> LiveRun:
        service = self.state.deliberation
        kind, name = request.model.split("/", 1)
        try:
            cfg = service.resolve("ensemble" if kind == "ensemble" else "debate", name, {})
            service.check_access(admission.principal, cfg)
        except ThinktankError as exc:
            await admission.finish(exc.status)
            raise
        allow = header(scope, b"x-thinktank-cache")
        cache = (request.model_extra or {}).get("cache") is True or (allow is not None and allow.lower() in
                                                                     (b"allow", b"true", b"1"))
        return await service.start(
            "ensemble" if kind == "ensemble" else "debate", cfg, principal=admission.principal, admission=admission,
            messages=request.messages, options=RunOptions(
                cache=cache, max_tokens=request.output_limit(), temperature=request.temperature),
        )

    async def _send_run(self, run: LiveRun, request: ChatRequest, send: Send) -> None:
        """The run's final answer in OpenAI shape; streamed, the synthesis as it is written."""
        headers = [(b"x-thinktank-run-id", run.id.encode())]
        cid, created = f"chatcmpl-{run.id}", int(run.created_at)
        if not request.stream:
            await self.state.deliberation.wait(run)
            if run.status != "completed":
                await send_error(send, _run_error(run), headers)
                return
            answer = (run.result or {}).get("answer") or ""
            body = ChatResponse(
                id=cid, created=created, model=request.model,
                choices=[Choice(index=0, message=ResponseMessage(content=answer), finish_reason="stop")],
                usage=_run_usage(run),
            )
            headers.append((b"x-thinktank-cost-usd", f"{run.cost:.10f}".encode()))
            await send_bytes(send, 200, body.__pydantic_serializer__.to_json(body, exclude_none=True), headers)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"), *headers,
        ]})
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        first = True
        async for event in run.follow(0):
            if event.type == "synthesis_token" and event.data.get("replace") and not first:
                # The synthesis broke off and the run answered with the best member's answer instead:
                # streamed text cannot be taken back, so this stream ends with an error saying so.
                err = RunFailedError(f"The synthesis broke off; the run's answer is in GET /api/v1/runs/{run.id}.")
                await _send_event(send, orjson.dumps(err.to_body()))
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
                return
            if event.type == "synthesis_token" and event.data.get("text"):
                delta = Delta(role="assistant", content=event.data["text"]) if first else Delta(
                    content=event.data["text"])
                first = False
                chunk = ChatChunk(id=cid, created=created, model=request.model, choices=[ChunkChoice(delta=delta)])
                await _send_event(send, chunk.__pydantic_serializer__.to_json(chunk, exclude_none=True))
            elif event.type == "stage_started":
                # Progress while members and judges work (comments: OpenAI clients skip them).
                await send({"type": "http.response.body", "body": b": stage " + str(event.data.get("stage", ""))
                            .encode() + b"\n\n", "more_body": True})
        if run.status == "completed":
            end = ChatChunk(id=cid, created=created, model=request.model,
                            choices=[ChunkChoice(delta=Delta(), finish_reason="stop")])
            await _send_event(send, end.__pydantic_serializer__.to_json(end, exclude_none=True))
            if include_usage:
                use = ChatChunk(id=cid, created=created, model=request.model, choices=[], usage=_run_usage(run))
                await _send_event(send, use.__pydantic_serializer__.to_json(use, exclude_none=True))
        else:
            await _send_event(send, orjson.dumps(_run_error(run).to_body()))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _stream(
        self, request: ChatRequest, admission: Admission, receive: Receive, send: Send,
        grounding: Grounding | None = None,
    ) -> None:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        chunks: AsyncIterator[ChatChunk] = aiter(self.state.router.stream(request, admission.ctx))
        tail: Callable[[], bytes] | None = None
        if grounding is not None:
            chunks = collected = _Collecting(chunks)
            tail = lambda: collected.citations_event(grounding)  # noqa: E731
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = None
        # Errors before the first chunk propagate to the caller: a normal JSON error response.
        pump = asyncio.ensure_future(self._pump(first, chunks, include_usage, send, tail))
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
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    failed = await pump
                    if failed is not None:
                        status = failed
            except Exception:
                status = 500
                raise
            finally:
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                await admission.finish(status, stream=True)  # recorded whatever happened

    async def _pump(
        self, first: ChatChunk | None, chunks: AsyncIterator[ChatChunk], include_usage: bool, send: Send,
        tail: Callable[[], bytes] | None = None,
    ) -> int | None:
        """Send the stream (and ``tail()``'s event after it, if given); the status of an upstream failure
        midway, else None."""
        failed: int | None = None
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
            ],
        })
        try:
            chunk = first
            while chunk is not None:
                if chunk.usage is not None and not include_usage:
                    if not chunk.choices:
                        chunk = await anext(chunks, None)
                        continue
                    chunk.usage = None
                data = chunk.__pydantic_serializer__.to_json(chunk, exclude_none=True)
                await send({"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True})
                chunk = await anext(chunks, None)
            if tail is not None:
                await _send_event(send, tail())
        except ProviderError as exc:
            failed = exc.status
            event = b"data: " + orjson.dumps(exc.to_body()) + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        return failed

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission: Admission | None = None
        try:
            request, admission = await self._admit(
                scope, receive, EmbeddingRequest, lambda r: sum(len(t) for t in r.texts()) // 4 + 1
            )
            response = await self.state.router.embed(request, admission.ctx)
        except ThinktankError as exc:
            await self._refuse(send, exc, admission)
            return
        await admission.finish(200)
        cost = response.usage.cost or 0.0
        await send_bytes(
            send, 200, response.__pydantic_serializer__.to_json(response),
            [(b"x-thinktank-cost-usd", f"{cost:.10f}".encode())],
        )

    def _model_objects(self, principal: Principal) -> list[dict[str, Any]]:
        created = int(self.state.started_at)
        return [
            {"id": m.id, "object": "model", "created": created, "owned_by": m.owned_by, "thinktank_kind": m.kind,
             **({"description": m.description} if m.description else {})}
            for m in self.state.router.models()
            if principal.may_use(m.id)
        ] + [
            {"id": mid, "object": "model", "created": created, "owned_by": "thinktank", "thinktank_kind": kind,
             **({"description": d} if d else {})}
            for mid, kind, d in self.state.deliberation.models()
            if principal.may_use(mid)
        ]

    async def _kb_model_objects(self, principal: Principal) -> list[dict[str, Any]]:
        """The knowledge bases the caller can read, as ``kb/<name>`` models (one query)."""
        answering = self.grounded().answering_model()
        if answering is None or not principal.may_use(answering):
            return []
        from ..knowledge.grounding import knowledge_base_models

        created = int(self.state.started_at)
        return [
            {"id": m.id, "object": "model", "created": created, "owned_by": "thinktank",
             "thinktank_kind": "knowledge_base", "description": m.description or f"answers from knowledge base "
             f"{m.id[3:]} with {answering}"}
            for m in await knowledge_base_models(self.state.db, principal)
            if principal.may_use(m.id)
        ]

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1/models`` and ``GET /v1/models/{id}`` (ids may contain slashes)."""
        try:
            principal = await self.principal(scope)
            objects = self._model_objects(principal)
            path: str = scope["path"]
            wanted = path.split("/models/", 1)[1] if "/models/" in path else ""
            if not wanted or wanted.startswith("kb/"):
                objects += await self._kb_model_objects(principal)
            if not wanted:
                await send_json(send, 200, {"object": "list", "data": objects})
                return
            found = next((o for o in objects if o["id"] == wanted), None)
            if found is None:
                raise ModelNotFoundError(f"The model '{wanted}' does not exist here.", param="model")
            await send_json(send, 200, found)
        except ThinktankError as exc:
            await send_error(send, exc)


class _Collecting:
    """A chunk stream passed through, keeping the answer's text (choice 0) and the last chunk."""

    def __init__(self, chunks: AsyncIterator[ChatChunk]) -> None:
        self._chunks = chunks
        self._parts: list[str] = []
        self._last: ChatChunk | None = None

    def __aiter__(self) -> _Collecting:
        return self

    async def __anext__(self) -> ChatChunk:
        chunk = await anext(self._chunks)
        self._last = chunk
        for choice in chunk.choices:
            if choice.index == 0 and choice.delta.content:
                self._parts.append(choice.delta.content)
        return chunk

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()

    def citations_event(self, grounding: Grounding) -> bytes:
        """The last chunk of a grounded stream: no choices, the cited passages."""
        last = self._last
        return orjson.dumps({
            "id": last.id if last else "chatcmpl-thinktank", "object": "chat.completion.chunk",
            "created": last.created if last else 0, "model": last.model if last else "", "choices": [],
            "citations": [c.to_dict() for c in grounding.cited("".join(self._parts))],
        })


def _run_error(run: LiveRun) -> ThinktankError:
    if run.status == "budget_exceeded":
        return RateLimitError(run.error or "Budget exceeded.", retry_after=0.0, code="budget_exceeded")
    if run.status == "cancelled":
        return ConflictError(run.error or "The run was cancelled.", code="run_cancelled")
    return RunFailedError(f"{run.error or 'The run failed.'} (run {run.id})")


def _run_usage(run: LiveRun) -> Usage:
    return Usage(prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens,
                 total_tokens=run.prompt_tokens + run.completion_tokens, cost=round(run.cost, 10))


async def _send_event(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True})


def _ip(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
