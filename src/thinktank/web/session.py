"""Who is looking at a page: the session cookie, the CSRF checks of the pages' own forms, the cookie itself."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response

from ..accounts.principal import Principal
from ..api.credentials import SESSION_COOKIE, cookie_value, csrf_token, same_origin
from ..api.deps import StateDep, client_ip
from ..errors import AuthenticationError, PermissionDeniedError

__all__ = [
    "LOGIN_CSRF_COOKIE",
    "STALE_SESSION",
    "AdminPage",
    "LoginRequired",
    "MaybeUser",
    "UserPage",
    "WebUser",
    "check_form_csrf",
    "check_login_csrf",
    "clear_session_cookie",
    "new_login_csrf",
    "safe_next",
    "set_login_csrf",
    "set_session_cookie",
]

STALE_SESSION = "thinktank.stale_session"
"""Set in the request's scope when its session cookie is no longer a session (``web.headers`` clears it)."""

LOGIN_CSRF_COOKIE = "tt_login_csrf"
"""Before a session exists (the sign-in and first-run forms): a random value the form must repeat."""


class LoginRequired(Exception):
    """The page needs a signed-in user: the app sends the browser to the sign-in page."""


@dataclass(frozen=True)
class WebUser:
    principal: Principal
    csrf: str
    """The token every state-changing request from this session's pages carries."""

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    @property
    def id(self) -> str:
        return self.principal.user_id

    @property
    def email(self) -> str:
        return self.principal.email or ""


async def maybe_user(request: Request, state: StateDep) -> WebUser | None:
    """The signed-in user, or None (no cookie, an expired or revoked session, or a token that is not a session)."""
    token = cookie_value(request.headers.get("cookie"), SESSION_COOKIE)
    if not token:
        return None
    try:
        principal = await state.authenticate(token, client_ip(request))
    except AuthenticationError:
        # An expired or revoked session: the response tells the browser to forget the cookie, so it is not
        # looked up (and counted as a failed sign-in) again on every page.
        request.scope[STALE_SESSION] = True
        return None
    if principal.session_id is None:  # an API key pasted into the cookie: pages are for people's sessions
        return None
    return WebUser(principal, csrf_token(token))


MaybeUser = Annotated[WebUser | None, Depends(maybe_user)]


async def require_user(user: MaybeUser) -> WebUser:
    if user is None:
        raise LoginRequired
    return user


UserPage = Annotated[WebUser, Depends(require_user)]


async def require_admin(user: UserPage) -> WebUser:
    if not user.is_admin:
        raise PermissionDeniedError("Only admins may open this page.")
    return user


AdminPage = Annotated[WebUser, Depends(require_admin)]


def _check_origin(request: Request) -> None:
    if not same_origin(request.headers.get("origin"), request.headers.get("host")):
        raise PermissionDeniedError("Cross-site request refused.", code="csrf_failed")


def check_form_csrf(request: Request, user: WebUser, form_value: object) -> None:
    """A page's own form posted by a signed-in user: the same origin, and the session's CSRF token."""
    _check_origin(request)
    if not isinstance(form_value, str) or not hmac.compare_digest(form_value.encode("utf-8", "replace"),
                                                                  user.csrf.encode()):
        raise PermissionDeniedError("The form's CSRF token is missing or stale; reload the page and try again.",
                                    code="csrf_failed")


def check_login_csrf(request: Request, form_value: object) -> None:
    """The sign-in and first-run forms: the value in the form equals the one in this browser's cookie."""
    _check_origin(request)
    cookie = cookie_value(request.headers.get("cookie"), LOGIN_CSRF_COOKIE)
    if (not cookie or not isinstance(form_value, str)
            or not hmac.compare_digest(form_value.encode("utf-8", "replace"), cookie.encode("utf-8", "replace"))):
        raise PermissionDeniedError("The form expired; reload the page and try again.", code="csrf_failed")


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def set_login_csrf(response: Response, value: str, secure: bool) -> None:
    response.set_cookie(LOGIN_CSRF_COOKIE, value, max_age=3600, httponly=True, samesite="strict", secure=secure,
                        path="/")


def set_session_cookie(response: Response, token: str, max_age: int, secure: bool) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=max(0, max_age), httponly=True, samesite="lax",
                        secure=secure, path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")


def clear_session_cookie(response: Response, secure: bool) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=secure)


def is_secure(request: Request) -> bool:
    """Behind HTTPS (directly, or as the proxy in front says when uvicorn trusts it): cookies get ``Secure``."""
    return request.url.scheme == "https"


def safe_next(value: str | None, default: str = "/chat") -> str:
    """Where to go after signing in: a path on this site only (no ``//host``, no scheme, no backslash)."""
    if (not value or not value.startswith("/") or value.startswith("//") or "\\" in value
            or any(ord(c) < 32 for c in value) or len(value) > 2000):
        return default
    return value
