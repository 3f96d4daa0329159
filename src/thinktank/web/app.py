"""The web app's factory: the page routers, the static files, HTML error pages and the security headers."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..api.asgi import ASGIApp, Receive, Scope, Send
from ..api.routing import unencodable_text
from ..api.state import AppState
from ..errors import ThinktankError
from ..outages import outage_exception_types, unavailable
from .headers import secured
from .render import Pages
from .session import LoginRequired, maybe_user

__all__ = ["build_web"]

log = logging.getLogger("thinktank.web")

STATIC = Path(__file__).parent / "static"


def render_css() -> str:
    from .charts import CHART_CSS
    from .markdown import MARKDOWN_CSS, pygments_css

    return "\n".join((pygments_css(), MARKDOWN_CSS, CHART_CSS))


def build_web(state: AppState) -> ASGIApp:
    """The pages, as an ASGI app sharing ``state`` with the API (its lifespan is the API's)."""
    from .views import admin, agents, auth, chat, compare, debate, evals, knowledge, me, runs

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, redirect_slashes=False)
    app.state.thinktank = state
    pages = Pages()
    app.state.pages = pages
    for module in (auth, chat, compare, runs, agents, debate, evals, knowledge, me, admin):
        app.include_router(module.router)
    rendered_css = Response(render_css(), media_type="text/css")

    @app.get("/static/render.css", include_in_schema=False)
    async def render_css_file() -> Response:
        """The styles of what the server renders (highlighted code, Markdown tables, charts), made from code."""
        return rendered_css

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    async def error_page(request: Request, status: int, message: str,
                         headers: dict[str, str] | None = None) -> Response:
        try:
            user = await maybe_user(request, state)
        except ThinktankError:  # a client refused for too many failed sign-ins (429) still gets its page
            user = None
        response = pages.render(request, "error.html", user, status=status, title=f"Error {status}",
                                status_code=status, message=message)
        response.headers.update(headers or {})  # e.g. a 429's Retry-After
        return response

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _exc: LoginRequired) -> Response:
        if request.method != "GET" or request.headers.get("x-requested-with") == "fetch":
            return await error_page(request, 401, "Sign in first.")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)

    @app.exception_handler(ThinktankError)
    async def thinktank_error(request: Request, exc: ThinktankError) -> Response:
        return await error_page(request, exc.status, exc.message, exc.headers())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = "There is no such page." if exc.status_code == 404 else str(exc.detail)
        return await error_page(request, exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("query", "path", "body"))
        return await error_page(request, 400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @app.exception_handler(UnicodeEncodeError)
    async def unencodable(request: Request, exc: UnicodeEncodeError) -> Response:
        error = unencodable_text(exc)
        if error is None:
            raise exc
        return await error_page(request, error.status, error.message)

    async def outage(request: Request, exc: Exception) -> Response:
        """The database or Redis down: a 503 page saying so (rendered without looking the user up)."""
        client = unencodable_text(exc)
        if client is not None:
            return await error_page(request, client.status, client.message)
        down = unavailable(exc)
        if down is None:
            raise exc
        log.warning("%s %s: the %s is unavailable", request.method, request.url.path, down.dependency)
        response = pages.render(request, "error.html", None, status=down.status, title=f"Error {down.status}",
                                status_code=down.status, message=down.message)
        response.headers.update(down.headers())
        return response

    for kind in outage_exception_types(state.db.dialect == "postgresql", bool(state.settings.redis_url)):
        app.add_exception_handler(kind, outage)

    return secured(_without_trailing_slash(app))


def _without_trailing_slash(app: ASGIApp) -> ASGIApp:
    """``/chat/`` is ``/chat``: a redirect to the path alone, relative (Starlette's own is absolute, built
    from the Host header, which a proxy may pass through as the client sent it)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/") and not path.startswith("/static/"):
            target = "/" + path.strip("/")  # one leading slash: never //host
            query = scope.get("query_string", b"")
            location = quote(target, safe="/%:@!$&'()*+,;=-._~") + ("?" + query.decode("latin-1") if query else "")
            await send({"type": "http.response.start", "status": 308, "headers": [(b"location", location.encode())]})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    return wrapped
