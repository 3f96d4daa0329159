"""Who a request says it is: a bearer key, an API-key header, or the web app's session cookie.

A browser sends the session cookie with every request to this origin, a cross-site form post included,
so a request authenticated by the cookie alone must also prove it came from one of our pages when it
changes anything: the ``X-CSRF-Token`` header (or the ``csrf`` form field, for the pages' own forms)
holds a value derived from the session token, which only our pages know (the cookie is ``HttpOnly``),
and an ``Origin`` header, when sent, must be this host. A bearer key is never sent by a browser on its
own, so requests carrying one need neither.
"""

from __future__ import annotations

import hashlib
import hmac

from ..errors import PermissionDeniedError

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SAFE_METHODS",
    "SESSION_COOKIE",
    "cookie_value",
    "credential",
    "csrf_token",
    "same_origin",
]

SESSION_COOKIE = "tt_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: a keyed hash of its secret token (nothing stored, nothing to leak)."""
    return hmac.new(session_token.encode("utf-8", "surrogatepass"), b"thinktank-csrf", hashlib.sha256).hexdigest()[:40]


def cookie_value(cookie_header: str | None, name: str) -> str | None:
    """One cookie's value from a ``Cookie`` header: the first of that name (browsers send the one with the
    longest path first; ours is set for ``/``)."""
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether an ``Origin`` header names this host (no Origin: not a cross-site browser request)."""
    if origin is None:
        return True
    if origin == "null" or not host:
        return False
    _scheme, sep, rest = origin.partition("://")
    return bool(sep) and rest.rstrip("/").lower() == host.lower()


def credential(
    authorization: str | None, api_key: str | None, cookie_header: str | None, method: str,
    csrf: str | None, origin: str | None, host: str | None,
) -> str:
    """The token a request authenticates with; 403 for a cookie-authenticated change without its CSRF proof."""
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    if api_key:
        return api_key.strip()
    session = cookie_value(cookie_header, SESSION_COOKIE)
    if not session:
        return ""
    if method.upper() not in SAFE_METHODS:
        if not same_origin(origin, host):
            raise PermissionDeniedError("Cross-site request refused.", code="csrf_failed")
        if csrf is None or not hmac.compare_digest(csrf.encode("utf-8", "replace"),
                                                   csrf_token(session).encode()):
            raise PermissionDeniedError(
                "This change needs the page's CSRF token (X-CSRF-Token); reload the page and try again.",
                code="csrf_failed",
            )
    return session
