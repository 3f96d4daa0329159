"""The app factory.

``create_app(settings)`` returns an ASGI app: the OpenAI endpoints are raw ASGI handlers (the
hot path), everything else is a FastAPI app behind them. No global state: the one AppState is
built here and handed to whoever needs it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..accounts.admin_key import AdminKey, AdminKeyStatus
from ..clock import Clock, SystemClock
from ..config import GatewayConfig, Settings, load_config
from ..discovery import NO_MODELS_HELP, demo_config, discover, merge
from ..errors import ConfigError, ConflictError, PayloadTooLargeError, ThinktankError, retry_after_header
from ..gateway.router import Router
from ..mcp import is_mcp
from ..observability import request_ids
from ..outages import OutageLog, outage_exception_types, unavailable
from ..providers._http import HttpClient
from ..providers.base import ProviderContext
from ..providers.registry import ProviderRegistry
from ..web import is_page
from .asgi import Receive, Scope, Send, header, read_body, send_error, send_json
from .assembly import build_state, start, stop
from .routes.openai import OpenAIHandlers
from .routing import unencodable_text
from .state import AppState

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from ..knowledge.embeddings import LocalEmbedder
    from ..observability.tracing import Tracing

__all__ = ["ThinktankApp", "app_from_env", "build_config", "create_app", "worker_app"]

log = logging.getLogger("thinktank")

Handler = Callable[[Scope, Receive, Send], Any]


def build_config(settings: Settings, environ: Mapping[str, str]) -> GatewayConfig:
    """The config file if one is given, else models found from the environment; plus demo models."""
    config = load_config(settings.config) if settings.config else discover(environ)
    if settings.demo:
        config = merge(config, demo_config())
    return config


def _announce_key(status: AdminKeyStatus) -> None:
    print(status.describe(), file=sys.stderr, flush=True)


def create_app(
    settings: Settings | None = None,
    config: GatewayConfig | None = None,
    *,
    clock: Clock | None = None,
    registry: ProviderRegistry | None = None,
    announce_key: Callable[[AdminKeyStatus], None] = _announce_key,
    admin_key: AdminKey | None = None,
    quiet: bool = False,
    local_embedder: LocalEmbedder | None = None,
    tracer_provider: TracerProvider | None = None,
) -> ThinktankApp:
    """``announce_key`` is told which admin key is in force (a generated one included, to show once).
    ``admin_key``: a key for this app alone, neither stored nor announced (``thinktank --local``).
    ``quiet``: no notices at start (the hint when no model is configured, the admin key in force) but a
    freshly generated key; for the workers ``thinktank serve`` starts, whose parent said it all.
    ``local_embedder``: share one already-built local model (tests); by default one is made, loaded on
    first use, with its cache under the data directory.
    ``tracer_provider``: trace with this provider (tests; the caller shuts it down) rather than the one
    ``THINKTANK_OTEL_ENDPOINT`` asks for."""
    settings = settings or Settings()
    if config is None:
        config = build_config(settings, os.environ)
    clock = clock or SystemClock()
    http = HttpClient(settings.upstream_connections)
    try:
        router = Router(config, ProviderContext(http, clock), registry)
    except ConfigError as exc:
        if settings.config is not None:
            raise ConfigError(f"{settings.config}: {exc.message}") from None
        raise
    if not router.deployments and not quiet:
        log.warning(NO_MODELS_HELP)
    if admin_key is None:
        admin_key, status = AdminKey.from_settings(settings)
        if status.key is not None or not quiet:
            announce_key(status)
    tracing = _tracing(settings, tracer_provider) if tracer_provider is not None or settings.otel_endpoint else None
    state = build_state(settings, router, admin_key, http, clock, local_embedder)
    if tracing is not None:  # everything that starts spans gets the tracer
        state.tracing = state.router.tracing = state.deliberation.tracing = state.knowledge.tracing = tracing
    outages = OutageLog(clock)
    return ThinktankApp(state, _fastapi_app(state, outages), outages)


def _tracing(settings: Settings, provider: TracerProvider | None) -> Tracing | None:
    """Only when tracing is on: the import is here."""
    from ..observability.otel import build_tracing, from_provider

    if provider is not None:
        return from_provider(provider, content=settings.otel_content)
    return build_tracing(settings)


def app_from_env() -> ThinktankApp:
    """Factory for ``uvicorn --factory``: the settings from the environment."""
    return create_app(Settings())


def worker_app() -> ThinktankApp:
    """Factory for each worker process of ``thinktank serve --workers``: the parent has already said what
    a start says (the admin key in force, the hint when no model is configured)."""
    return create_app(Settings(), quiet=True)


def _error_body(message: str, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}


def _fastapi_app(state: AppState, outages: OutageLog) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.started_at = state.clock.time()
        await start(state)
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            await stop(state)
            await state.http.close()

    app = FastAPI(title="thinktank", version=__version__, lifespan=lifespan, redoc_url=None)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with the OpenAI endpoints (served by raw handlers) added."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            from .routes.openai import openapi_paths

            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            paths, schemas = openapi_paths()
            schema["paths"] = {**paths, **schema.get("paths", {})}
            components = schema.setdefault("components", {})
            components["schemas"] = {**schemas, **components.get("schemas", {})}
            components.setdefault("securitySchemes", {})["HTTPBearer"] = {"type": "http", "scheme": "bearer"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.thinktank = state
    from .routes import accounts, admin, agents, evals, keys, knowledge, knowledge_jobs, memory, runs, threads, usage

    for module in (accounts, keys, usage, admin, runs, agents, knowledge, knowledge_jobs, threads, memory, evals):
        app.include_router(module.router)
    from sqlalchemy.exc import DBAPIError, IntegrityError

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 429 and not any(k.lower() == "retry-after" for k in headers):
            headers["Retry-After"] = retry_after_header(None)  # every 429 says when to try again
        return JSONResponse(_error_body(str(exc.detail)), exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = tuple(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            ctx = first.get("ctx")
            why = (ctx.get("error") if isinstance(ctx, dict) else None) or "malformed"
            at = f" at position {loc[1]}" if len(loc) > 1 else ""
            return JSONResponse(_error_body(f"The request body is not valid JSON ({why}{at})."), 422)
        where = ".".join(str(x) for x in loc)
        return JSONResponse(_error_body(f"{where}: {first.get('msg')}"), 422)

    @app.exception_handler(ThinktankError)
    async def thinktank_error(_request: Request, exc: ThinktankError) -> JSONResponse:
        return JSONResponse(exc.to_body(), exc.status, headers=exc.headers())

    async def unencodable(request: Request, exc: Exception) -> JSONResponse:
        """A lone surrogate that reached a write or a query despite the strict JSON parsing (the database
        driver cannot encode it): the client's 400, not a 500. The database or Redis unreachable: a 503 naming
        it (``api/outages.py``). Anything else is the server's error."""
        error = unencodable_text(exc)
        if error is None:
            down = unavailable(exc)
            if down is None:
                raise exc
            outages.failed(down, f"{request.method} {request.url.path}")
            return JSONResponse(down.to_body(), down.status, headers=down.headers())
        log.warning("%s %s: text that cannot be encoded reached the database", request.method, request.url.path)
        return JSONResponse(error.to_body(), error.status)

    app.add_exception_handler(UnicodeEncodeError, unencodable)
    app.add_exception_handler(DBAPIError, unencodable)  # asyncpg's, with the UnicodeEncodeError as its cause
    for kind in outage_exception_types(state.db.dialect == "postgresql", bool(state.settings.redis_url)):
        app.add_exception_handler(kind, unencodable)

    @app.exception_handler(IntegrityError)
    async def integrity_error(request: Request, _exc: IntegrityError) -> JSONResponse:
        # A uniqueness check that a concurrent request passed too (two creates of one name at once):
        # nothing was written (the transaction rolled back); the client may try again.
        log.warning("%s %s: a concurrent write conflicted", request.method, request.url.path)
        error = ConflictError("This conflicts with a change made at the same time; nothing was written, try again.",
                              code="concurrent_change")
        return JSONResponse(error.to_body(), error.status)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    async def ready() -> JSONResponse:
        """Readiness: started, and each dependency checked (the database, Redis when configured, every
        upstream); 503 when a required one is down (see ``api/readiness.py`` for which are)."""
        if not state.ready or state.readiness is None:
            return JSONResponse({"status": "starting"}, 503)
        ok, checks = await state.readiness.check()
        body: dict[str, Any] = {"status": "ready" if ok else "not_ready", "models": len(state.catalog.configured()),
                                "checks": checks}
        if not state.router.deployments:
            body["hint"] = NO_MODELS_HELP
        return JSONResponse(body, 200 if ok else 503)

    return app


_UPLOAD_PATH = re.compile(r"^/api/v1/(knowledge-bases/[^/]+/documents|eval/datasets)/?$")
"""Document and dataset uploads: limited by ``max_upload_bytes`` rather than ``max_body_bytes``."""


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` refusing (413) once more than ``limit`` bytes have come: a body without a length is
    read as it streams, never held whole here."""
    size = 0

    async def limited() -> Any:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise PayloadTooLargeError(f"The upload is larger than the {limit} byte limit.")
        return message

    return limited


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class ThinktankApp:
    """Dispatches the OpenAI endpoints to raw handlers and the rest to FastAPI."""

    def __init__(self, state: AppState, fastapi: FastAPI, outages: OutageLog) -> None:
        self.state = state
        self.fastapi = fastapi
        self._outages = outages
        self._web: Handler | None = None
        self._mcp: Handler | None = None
        h = OpenAIHandlers(state)
        self._ids = request_ids.RequestIds()
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": h.chat_completions},
            "/chat/completions": {"POST": h.chat_completions},
            "/v1/embeddings": {"POST": h.embeddings},
            "/embeddings": {"POST": h.embeddings},
            "/v1/models": {"GET": h.models},
            "/models": {"GET": h.models},
        }
        metrics = state.metrics_endpoint
        if metrics is not None and state.settings.metrics_port is None:
            self._routes["/metrics"] = {"GET": metrics.asgi, "HEAD": metrics.asgi}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fastapi(scope, receive, send)  # the lifespan
            return
        # Every response carries the request's id, and every log line written meanwhile (a context variable).
        rid = self._ids.for_headers(scope["headers"])
        request_ids.CURRENT.set(rid)  # each request runs in a task (a context) of its own
        rid_header = (request_ids.HEADER, rid.value.encode())

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        tracing = self.state.tracing
        if tracing is None:
            await self._dispatch(scope, receive, send_with_id)
        else:
            await tracing.serve_http(self._dispatch, scope, receive, send_with_id, self._route_of(scope["path"]))

    def _route_of(self, path: str) -> str | None:
        """The route of a raw handler's path (the span's ``http.route``); None for FastAPI's (known later)."""
        if path in self._routes:
            return path
        if path.startswith(("/v1/models/", "/models/")):
            return "/v1/models/{model}"
        return None

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            methods = self._routes.get(path) or (self._routes.get(path.rstrip("/")) if len(path) > 1 else None)
            if methods is None and path.startswith(("/v1/models/", "/models/")):
                methods = self._routes["/v1/models"]
            if methods is not None:
                handler = methods.get(scope["method"])
                if handler is None:
                    allow = ", ".join(methods)
                    await send_json(
                        send, 405, _error_body(f"Method not allowed; use {allow}."),
                        [(b"allow", allow.encode())],
                    )
                    return
                await self._guarded(handler, scope, receive, send)
                return
            upload = scope["method"] == "POST" and _UPLOAD_PATH.match(path) is not None
            settings = self.state.settings
            limit = settings.max_upload_bytes if upload else settings.max_body_bytes
            length = header(scope, b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                await send_error(send, PayloadTooLargeError(f"The request body is larger than the {limit} byte limit."))
                return
            if upload:
                receive = _limited(receive, limit)  # the route reads the body as it comes, within the limit
            elif length is None and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
                # A body without a length: read it here, within the limit, and hand it on whole.
                try:
                    body = await read_body(scope, receive, limit)
                except PayloadTooLargeError as exc:
                    await send_error(send, exc)
                    return
                receive = _replay(body, receive)
            if is_page(path):
                await self.web(scope, receive, send)
                return
            if is_mcp(path):
                await self._guarded(self.mcp, scope, receive, send)
                return
        await self.fastapi(scope, receive, send)

    @property
    def web(self) -> Handler:
        """The web app, built on the first page asked for (the API alone never imports it)."""
        if self._web is None:
            from ..web.app import build_web

            self._web = build_web(self.state)
        return self._web

    @property
    def mcp(self) -> Handler:
        """``/mcp``, built on the first request there (the API alone never imports the MCP SDK)."""
        if self._mcp is None:
            from ..mcp.http import McpHttp

            self._mcp = McpHttp(self.state)
        return self._mcp

    async def _guarded(self, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await handler(scope, receive, tracking_send)
        except Exception as exc:
            client = unencodable_text(exc)
            down = unavailable(exc) if client is None else None  # the database or Redis is down: 503, not 500
            if client is not None:
                log.warning("%s: text that cannot be encoded reached the database", scope["path"])
            elif down is not None:
                self._outages.failed(down, scope["path"])
            else:
                log.exception("unhandled error in %s", scope["path"])
            if not started:
                await send_error(send, client or down or ThinktankError("Internal server error; see the server log."))
