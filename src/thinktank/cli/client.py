"""The CLI as a client of the server: one small HTTP client every command that uses models shares.

A command talks to ``--url`` (``$THINKTANK_URL``, default http://127.0.0.1:8000) with ``--api-key``
(``$THINKTANK_API_KEY``) as a Bearer token, over the server's public API. With ``--local`` (implied
by ``--config`` and ``--demo``) the real app is started in this process on a loopback port, with an
admin key made for the occasion, and the very same client code talks to it. An error the server
sends (``{"error": {"message": ...}}``) is printed as ``error: <message>`` and exits 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import fail

if TYPE_CHECKING:
    import httpx

    from .local import LocalServer

__all__ = [
    "DEFAULT_URL", "ApiError", "Client", "ConfigOpt", "DemoOpt", "KeyOpt", "LocalOpt", "SseMessage", "Target",
    "UrlOpt", "connect",
]

DEFAULT_URL = "http://127.0.0.1:8000"

UrlOpt = Annotated[str, typer.Option(
    "--url", envvar="THINKTANK_URL", help="The thinktank server to talk to.", show_envvar=True)]
KeyOpt = Annotated[str | None, typer.Option(
    "--api-key", envvar="THINKTANK_API_KEY", show_envvar=True, show_default=False,
    help="An API key (the admin key, or one from `thinktank keys create`) or a session token.")]
LocalOpt = Annotated[bool, typer.Option(
    "--local", help="Start the server in this process for this command alone (this machine's config and data "
                    "directory) instead of talking to --url.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="The YAML config of the server started here (implies --local; default: "
                           "$THINKTANK_CONFIG).", show_default=False)]
DemoOpt = Annotated[bool, typer.Option(
    "--demo", help="Add the clearly labelled offline mock models to the server started here (implies --local).")]


@dataclass(frozen=True)
class Target:
    """Where a command sends its requests: the server at ``url``, or one started here."""

    url: str = DEFAULT_URL
    api_key: str | None = None
    local: bool = False
    config: Path | None = None
    demo: bool = False

    @property
    def in_process(self) -> bool:
        return self.local or self.demo or self.config is not None


class ApiError(Exception):
    """A failed request, with the server's message."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body
        """The error's whole JSON body (a refused batch's per-item results, a failed run's record)."""


@dataclass(frozen=True, slots=True)
class SseMessage:
    event: str
    """The ``event:`` field; ``message`` when the server sent none (OpenAI chunks)."""
    data: str
    id: str | None = None


def _error_of(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        text = response.text[:200].strip() or response.reason_phrase
        return ApiError(f"HTTP {response.status_code}: {text}", response.status_code)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return ApiError(str(error["message"]), response.status_code, body)
    return ApiError(f"HTTP {response.status_code}", response.status_code, body)


class Client:
    """The server's HTTP API (``/v1`` and ``/api/v1``); any failure is an :class:`ApiError`."""

    def __init__(self, url: str, api_key: str | None, local: LocalServer | None = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.local = local
        """The server started in this process, with ``--local``."""
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(30.0, read=900.0))

    def close(self) -> None:
        self.http.close()

    def _unreachable(self, exc: httpx.HTTPError) -> ApiError:
        import httpx

        if isinstance(exc, httpx.ConnectError):
            return ApiError(
                f"cannot reach a thinktank server at {self.url} ({exc}): start one with `thinktank serve`, point "
                "THINKTANK_URL (or --url) at one, or add --local to run this command in this process")
        return ApiError(f"{self.url}: {type(exc).__name__}: {exc}")

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer to one request (None when it has no body)."""
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise _error_of(response)
        return response.json() if response.content else None

    def text(self, path: str) -> str:
        """A text document (``GET``)."""
        import httpx

        try:
            response = self.http.get(path)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise _error_of(response)
        return response.text

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[EventStream]:
        """A request answered with server-sent events, read as they come."""
        import httpx

        try:
            with self.http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_of(response)
                yield EventStream(response)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None


class EventStream:
    """The events of a ``text/event-stream`` answer, and its headers."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.headers = response.headers

    def __iter__(self) -> Iterator[SseMessage]:
        event, data, last_id = "message", list[str](), None
        for line in self.response.iter_lines():
            if not line:
                if data:
                    yield SseMessage(event, "\n".join(data), last_id)
                event, data = "message", []
                continue
            if line.startswith(":"):
                continue  # a comment (keep-alive, progress)
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                last_id = value
        if data:
            yield SseMessage(event, "\n".join(data), last_id)


_NO_KEY = (
    "no API key: set THINKTANK_API_KEY (export THINKTANK_API_KEY=...; the admin key `thinktank serve` printed "
    "at its first start, or a key from `thinktank keys create`) or pass --api-key; or add --local to run this "
    "command in this process"
)


@contextmanager
def connect(target: Target) -> Iterator[Client]:
    """A client of the server ``target`` names (started here with ``--local``), closed afterwards; an
    :class:`ApiError` or a ThinktankError (a local config error) is printed and exits 2."""
    from ..errors import ThinktankError

    try:
        if target.in_process:
            from .common import settings
            from .local import LocalServer

            with LocalServer(settings(target.config, target.demo)) as server:
                client = Client(server.url, server.key, server)
                try:
                    yield client
                finally:
                    client.close()
            return
        client = Client(target.url, target.api_key)
        try:
            if not target.api_key:
                client.call("GET", "/health")  # no server there: say how to start one first
                raise ApiError(_NO_KEY)
            yield client
        finally:
            client.close()
    except ApiError as exc:
        fail(exc.message)
    except ThinktankError as exc:
        fail(exc.message)
