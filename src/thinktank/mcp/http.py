"""``/mcp``: MCP over streamable HTTP, stateless, each request authenticated by the caller's key.

Stateless, because it can be: every tool answers within its own request (a run's progress rides that
request's event stream) and the server never asks the client anything (no sampling, no elicitation), so
there is nothing a session would hold. Every POST carries its key (``Authorization: Bearer`` or
``X-Api-Key``), is authenticated like any API request and is answered by a server built for that caller
(:func:`.server.build_server`, microseconds), then forgotten: no session id, nothing kept in memory between
requests, so any worker of any process can answer any request. ``GET`` (a stream for messages the server
would start) and ``DELETE`` (ending a session) have nothing to do: 405, as the transport allows.

The session cookie of the web pages is not accepted here: a browser sends it on its own, to any page's
request; a key must be given on purpose. (So DNS-rebinding protection, which guards servers that trust
whoever reaches them, has nothing to add and is off: the host may be any name the server is reached by.)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from ..api.asgi import Receive, Scope, Send, send_error, send_json
from ..api.credentials import credential
from ..errors import ThinktankError
from .caller import Caller
from .server import build_server

if TYPE_CHECKING:
    from ..accounts.principal import Principal
    from ..api.state import AppState

__all__ = ["McpHttp"]

_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"api-key"})
_PER_REQUEST_LOGGERS = ("mcp.server.streamable_http_manager", "mcp.server.streamable_http")
"""The SDK's transport loggers: at INFO they tell a session manager's start and stop and a session's end, which
here (a manager per request, no sessions) is three lines for every request."""
_CHALLENGE = (b"www-authenticate", b'Bearer realm="thinktank"')


class McpHttp:
    """The ASGI handler of ``/mcp`` (``ThinktankApp`` builds it on the first request there)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        for name in _PER_REQUEST_LOGGERS:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:  # a level configured on purpose stays
                logger.setLevel(logging.WARNING)

    async def _principal(self, scope: Scope) -> Principal:
        h: dict[bytes, str] = {}
        for k, v in scope["headers"]:
            if k in _CREDENTIAL_HEADERS and k not in h:
                h[k] = v.decode("latin-1")
        token = credential(h.get(b"authorization"), h.get(b"x-api-key") or h.get(b"api-key"), None,
                           scope["method"], None, None, None)
        return await self.state.authenticate(token, _ip(scope) or "unknown")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            principal = await self._principal(scope)
        except ThinktankError as exc:
            await send_error(send, exc, [_CHALLENGE] if exc.status == 401 else None)
            return
        if scope["method"] != "POST":
            await send_json(send, 405, {"error": {
                "message": "This MCP endpoint is stateless: POST each JSON-RPC message (there is no stream to GET "
                           "and no session to DELETE).", "type": "invalid_request_error", "param": None,
                "code": None}}, [(b"allow", b"POST")])
            return
        server = build_server(Caller.of(self.state, principal, _ip(scope)))
        manager = StreamableHTTPSessionManager(
            server, stateless=True, security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=self.state.settings.max_body_bytes)
        async with manager.run():
            await manager.handle_request(scope, receive, send)


def _ip(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None
