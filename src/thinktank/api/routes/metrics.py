"""``GET /metrics``: thinktank's metrics in Prometheus's text format, on the main port or on a port of their own.

Who may read them:

* ``THINKTANK_METRICS_TOKEN`` set: that bearer token, and nothing else, on either port (wrong tokens are
  throttled like failed logins);
* no token, main port (the default): admin credentials (the admin key, an admin's key or session). The
  metrics tell which models are used, how much is spent and how often limits refuse: the operator's
  business, not every key holder's;
* no token, metrics port (``THINKTANK_METRICS_PORT``): anyone who reaches the port, which binds
  ``THINKTANK_METRICS_HOST`` (default: the server's host): put it where only Prometheus reaches it.

With a metrics port the main port has no ``/metrics``. With several workers every worker listens on the
metrics port (``SO_REUSEPORT``: the kernel hands each connection to one of them) and whichever answers reads
the files of all (:mod:`thinktank.metrics.prometheus`), so the parent process serves nothing and a worker
that restarts takes its place again.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson

from ...accounts.principal import Principal
from ...errors import AuthenticationError, ClientError, NotFoundError, PermissionDeniedError, ThinktankError
from ...metrics.budgets import BudgetGauges
from ...metrics.multiproc import mark_dead_workers, mark_self_dead
from ...metrics.prometheus import PrometheusMetrics
from ..asgi import Receive, Scope, Send, header, send_error
from ..state import AppState

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["CONTENT_TYPE", "MetricsEndpoint"]

log = logging.getLogger("thinktank.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus's classic text format (every Prometheus reads it; OpenMetrics is not offered)."""
_CHALLENGE = (b"www-authenticate", b'Bearer realm="thinktank metrics"')


class _MethodNotAllowed(ClientError):
    status = 405


def _bearer(authorization: bytes | None) -> bytes | None:
    if authorization is None or authorization[:7].lower() != b"bearer ":
        return None
    return authorization[7:].strip()


class MetricsEndpoint:
    """Reads the metrics for a scrape and decides who may; serves the metrics port when there is one."""

    def __init__(self, state: AppState, metrics: PrometheusMetrics) -> None:
        self.state = state
        self.metrics = metrics
        token = state.settings.metrics_token
        self._token = token.get_secret_value().encode("utf-8") if token is not None else None
        self.budgets: BudgetGauges | None = None
        if not state.settings.redis_url:  # budgets in Redis: not cheap to add up (see metrics.budgets)
            self.budgets = BudgetGauges(state.db, state.clock)
            metrics.add_collector(self.budgets)
        self._runner: web.AppRunner | None = None

    # -- reading ---------------------------------------------------------------------------------
    async def scrape(self) -> bytes:
        """The text of every metric (with files: every worker's, live or gone)."""
        from prometheus_client import generate_latest

        if self.budgets is not None:
            await self.budgets.refresh()
        self.metrics.flush()  # this process's counts, up to now
        registry = self.metrics.scrape_registry()
        directory = self.metrics.directory
        if directory is None:
            return generate_latest(registry)

        def read() -> bytes:
            mark_dead_workers(directory)
            return generate_latest(registry)

        return await asyncio.to_thread(read)  # files of every worker: kept off the event loop

    async def authorize(
        self, authorization: bytes | None, ip: str, admin: Callable[[], Awaitable[Principal]] | None,
    ) -> None:
        """Raise unless the caller may read: the token when one is set; else admin credentials (``admin``
        finds who the caller is) on the main port, nothing on the metrics port (``admin`` None)."""
        if self._token is not None:
            given = _bearer(authorization)
            if given is not None and hmac.compare_digest(given, self._token):
                return
            await self.state.check_auth_allowed(ip)  # 429 after too many wrong tokens from this address
            if given is not None:
                await self.state.record_auth_failure(ip)
            raise AuthenticationError("The metrics need the scrape token: send 'Authorization: Bearer "
                                      "<THINKTANK_METRICS_TOKEN>'.")
        if admin is None:
            return
        principal = await admin()
        if not principal.is_admin:
            raise PermissionDeniedError("Only admins may read the metrics (or set THINKTANK_METRICS_TOKEN and give "
                                        "that token to Prometheus).")

    # -- the main port ---------------------------------------------------------------------------
    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET`` / ``HEAD /metrics`` on the main port."""
        from .openai import OpenAIHandlers

        client = scope.get("client")
        try:
            await self.authorize(header(scope, b"authorization"), str(client[0]) if client else "unknown",
                                 lambda: OpenAIHandlers(self.state).principal(scope))
            body = await self.scrape()
        except ThinktankError as exc:
            await send_error(send, exc, [_CHALLENGE] if exc.status == 401 else None)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    # -- the metrics port ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the metrics' background work; open the metrics port, if one is set."""
        await self.metrics.start()
        port = self.state.settings.metrics_port
        if port is None:
            return
        from aiohttp import web

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._on_port)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        host = self.state.settings.metrics_host or self.state.settings.host
        # Workers share the port (each answers for all); one process alone binds it like any server.
        site = web.TCPSite(runner, host, port, reuse_port=self.metrics.multiprocess or None)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def _on_port(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        def error(exc: ThinktankError, extra: dict[str, str] | None = None) -> web.Response:
            return web.Response(status=exc.status, body=orjson.dumps(exc.to_body()),
                                headers={"content-type": "application/json", **exc.headers(), **(extra or {})})

        if request.path.rstrip("/") != "/metrics":
            return error(NotFoundError("Only /metrics is served on this port."))
        if request.method not in ("GET", "HEAD"):
            return error(_MethodNotAllowed("Method not allowed; use GET."), {"allow": "GET, HEAD"})
        authorization = next((v for k, v in request.raw_headers if k.lower() == b"authorization"), None)
        try:
            await self.authorize(authorization, request.remote or "unknown", None)
            body = await self.scrape()
        except ThinktankError as exc:
            return error(exc, {"www-authenticate": _CHALLENGE[1].decode()} if exc.status == 401 else None)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE, "cache-control": "no-store"})

    async def close(self) -> None:
        """Close the metrics port; a worker's live gauges go with it."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.metrics.close()  # what this process still holds goes into its counters (its files)
        if self.metrics.directory is not None:
            mark_self_dead(self.metrics.directory)
