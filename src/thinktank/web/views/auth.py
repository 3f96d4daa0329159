"""Signing in and out, and the first-run page (no account exists yet)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from ...accounts.schemas import UserCreate
from ...api.credentials import CSRF_FIELD
from ...api.deps import StateDep, client_ip
from ...errors import AuthenticationError, RateLimitError, ThinktankError
from ..session import (
    MaybeUser,
    check_form_csrf,
    check_login_csrf,
    clear_session_cookie,
    is_secure,
    new_login_csrf,
    safe_next,
    set_login_csrf,
    set_session_cookie,
)
from .common import pages
from .forms import first_error

__all__ = ["router"]

router = APIRouter()


@router.get("/")
async def home(user: MaybeUser) -> Response:
    return RedirectResponse("/chat" if user else "/login", status_code=303)


@router.get("/favicon.ico")
async def favicon() -> Response:
    return RedirectResponse("/static/favicon.svg", status_code=301)


def _signed_out_page(request: Request, template: str, title: str, *, status: int = 200, **context: object) -> Response:
    """A form shown before there is a session, with a fresh CSRF value in the form and in a cookie."""
    value = new_login_csrf()
    response = pages(request).render(request, template, None, status=status, title=title, login_csrf=value,
                                     **context)
    set_login_csrf(response, value, is_secure(request))
    return response


def _login_form(request: Request, *, error: str = "", email: str = "", next_: str | None = None,
                status: int = 200) -> Response:
    return _signed_out_page(request, "login.html", "Sign in", status=status, error=error, email=email,
                            next=safe_next(next_ if next_ is not None else request.query_params.get("next")))


@router.get("/login")
async def login_page(request: Request, user: MaybeUser, state: StateDep) -> Response:
    if user is not None:
        return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    if not await state.users.has_users():
        return RedirectResponse("/setup", status_code=303)
    return _login_form(request)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


@router.post("/login")
async def login(request: Request, state: StateDep) -> Response:
    form = await _form(request)
    check_login_csrf(request, form.get(CSRF_FIELD))
    email, password = form.get("email", "").strip(), form.get("password", "")
    ip, account = client_ip(request), email.lower()
    await state.check_auth_allowed(ip)
    await state.check_auth_allowed(ip, account)
    try:
        if not email or not password:
            raise AuthenticationError("Enter your email and password.")
        token, session, _user = await state.users.login(email, password)
    except AuthenticationError as exc:
        await state.record_auth_failure(ip)
        await state.record_auth_failure(ip, account)
        return _login_form(request, error=exc.message, email=email, next_=form.get("next"), status=401)
    response = RedirectResponse(safe_next(form.get("next")), status_code=303)
    set_session_cookie(response, token, int(session.expires_at - state.clock.time()), is_secure(request))
    return response


@router.post("/logout")
async def logout(request: Request, user: MaybeUser, state: StateDep) -> Response:
    response = RedirectResponse("/login", status_code=303)
    if user is not None:
        check_form_csrf(request, user, (await _form(request)).get(CSRF_FIELD))
        if user.principal.session_id:
            await state.users.logout(user.principal.session_id)
    clear_session_cookie(response, is_secure(request))
    return response


@router.get("/setup")
async def setup_page(request: Request, state: StateDep) -> Response:
    if await state.users.has_users():
        return RedirectResponse("/login", status_code=303)
    return _signed_out_page(request, "setup.html", "Welcome to thinktank", error="", email="")


@router.post("/setup")
async def setup(request: Request, state: StateDep) -> Response:
    """The first admin, made with the server's admin key (which only the person who started it has)."""
    form = await _form(request)
    check_login_csrf(request, form.get(CSRF_FIELD))
    if await state.users.has_users():
        return RedirectResponse("/login", status_code=303)
    ip = client_ip(request)
    try:
        await state.check_auth_allowed(ip)
        try:
            principal = await state.authenticate(form.get("admin_key", "").strip(), ip)
        except AuthenticationError:
            principal = None
        if principal is None or not principal.is_admin_key:
            await state.record_auth_failure(ip)
            raise AuthenticationError("That is not this server's admin key (it was printed when the server started).")
        email, password = form.get("email", "").strip(), form.get("password", "")
        await state.users.create_user(UserCreate.model_validate({"email": email, "password": password,
                                                                 "role": "admin"}))
        token, session, _user = await state.users.login(email, password)
    except (ThinktankError, ValueError) as exc:
        if isinstance(exc, ThinktankError):
            error = exc.message
        else:
            error = first_error(exc) if isinstance(exc, ValidationError) else str(exc)
        response = _signed_out_page(request, "setup.html", "Welcome to thinktank",
                                    status=exc.status if isinstance(exc, RateLimitError) else 400, error=error,
                                    email=form.get("email", ""))
        if isinstance(exc, RateLimitError):
            response.headers.update(exc.headers())  # Retry-After
        return response
    response = RedirectResponse("/chat", status_code=303)
    set_session_cookie(response, token, int(session.expires_at - state.clock.time()), is_secure(request))
    return response

