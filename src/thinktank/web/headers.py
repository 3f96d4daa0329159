"""Security headers on every page and file the web app sends."""

from __future__ import annotations

from ..api.asgi import ASGIApp, Message, Receive, Scope, Send
from ..api.credentials import SESSION_COOKIE
from .session import STALE_SESSION

__all__ = ["CONTENT_SECURITY_POLICY", "secured"]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""No inline script or style, nothing from another origin, never framed."""

_COMMON = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
_PAGE_CACHE = (b"cache-control", b"no-store")
_SESSION_PREFIX = SESSION_COOKIE.encode() + b"="
_FORGET_SESSION = (b"set-cookie", _SESSION_PREFIX + b'""; Max-Age=0; Path=/; HttpOnly; SameSite=lax')
_STATIC_CACHE = (b"cache-control", b"public, max-age=3600")


def secured(app: ASGIApp) -> ASGIApp:
    """``app`` with the security headers added; pages are never cached (they hold private data), files an hour."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"cache-control"]
                headers.extend(_COMMON)
                headers.append(_STATIC_CACHE if static else _PAGE_CACHE)
                if scope.get(STALE_SESSION) and not any(
                        k.lower() == b"set-cookie" and v.startswith(_SESSION_PREFIX) for k, v in headers):
                    headers.append(_FORGET_SESSION)
                message["headers"] = headers
            await send(message)

        await app(scope, receive, with_headers)

    return wrapped
