"""HTTP plumbing shared by the providers: one aiohttp session, SSE parsing, error mapping.

aiohttp is used because it measured several times faster than httpx as a proxy client on this
workload (see docs/benchmarks.md). Client-side retries do not exist in aiohttp: the router's
loop is the only one.
"""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from ..errors import (
    ContextWindowExceededError,
    ProviderError,
    UpstreamAuthError,
    UpstreamBadRequestError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamRateLimitError,
    UpstreamServerError,
)

__all__ = [
    "HttpClient",
    "JsonBody",
    "iter_sse",
    "map_status_error",
    "open_stream",
    "parse_retry_after",
    "post",
    "read_json",
    "request",
    "scrub",
]

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "exceeds the maximum number of tokens",
)


class HttpClient:
    """Owns the one aiohttp session of a process; created lazily inside the running loop."""

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                json_serialize=lambda o: orjson.dumps(o).decode(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


#: The shortest run of a secret's characters that :func:`scrub` removes.
MIN_FRAGMENT = 6


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret, and every fragment of one, replaced by ``***``.

    Upstreams echo part of a bad key back ("Incorrect API key provided: sk-abc123************wxyz"),
    so replacing only the whole key is not enough. Every run of :data:`MIN_FRAGMENT` (6) or more
    consecutive characters of a secret is removed, wherever in the secret it comes from: its start
    and end (what masked echoes show) as well as its middle.

    What may remain is a run of at most 5 characters of a secret next to something else. That is
    safe: a provider key has 32 or more random characters (plus a public prefix such as ``sk-`` or
    ``AIza``), so even 5 characters known at each end leave over 20 unknown random characters, far
    beyond guessing; that is also why providers' own dashboards show the last 4. Going shorter would
    not help and would harm: 3- to 5-character runs of a key match ordinary words and numbers in an
    error message (``sk-``, ``key``, ``2024``) and would make the message unreadable. Over-removal is
    the safe side: a key's public prefix (``sk-proj``, ``AIzaSy``) may be starred out with it.

    Secrets shorter than 4 characters are not secrets (a header value such as ``1``) and are left
    alone; one of 4 or 5 characters is removed where it appears whole.
    """
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        if not secret or len(secret) < 4:
            continue
        size = min(MIN_FRAGMENT, len(secret))
        windows = {secret[i:i + size] for i in range(len(secret) - size + 1)}
        spans.extend((i, i + size) for i in range(len(text) - size + 1) if text[i:i + size] in windows)
    if not spans:
        return text
    merged: list[list[int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    out: list[str] = []
    pos = 0
    for start, stop in merged:
        out += [text[pos:start], "***"]
        pos = stop
    out.append(text[pos:])
    return "".join(out)


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def _error_message(body: bytes) -> str:
    """The human message from an error body in the OpenAI, Anthropic or Gemini shape."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("msg") or err.get("detail")
            if isinstance(msg, str):
                return msg
        if isinstance(err, str):
            return err
    return body[:300].decode("utf-8", "replace")


def map_status_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    deployment: str,
    secrets: Iterable[str | None],
    now: float,
) -> ProviderError:
    """The ProviderError for a non-2xx upstream answer."""
    message = scrub(_error_message(body), secrets)
    text = f"upstream {deployment} answered {status}: {message}"
    kw: dict[str, Any] = {"deployment": deployment, "upstream_status": status}
    lowered = message.lower() + body[:2000].decode("utf-8", "replace").lower()
    if status == 429:
        return UpstreamRateLimitError(text, retry_after=parse_retry_after(headers, now), **kw)
    if status >= 500 or status in {408, 409}:
        # 529 is Anthropic's "overloaded"; 408/409 are worth another try too.
        return UpstreamServerError(text, retry_after=parse_retry_after(headers, now), **kw)
    if status in (401, 403):
        return UpstreamAuthError(f"upstream {deployment} refused thinktank's credentials ({status})", **kw)
    if status in (400, 413, 422) and any(m in lowered for m in _CONTEXT_MARKERS):
        return ContextWindowExceededError(text, **kw)
    if status == 404:
        return UpstreamAuthError(f"upstream {deployment} answered 404: {message}", **kw)
    return UpstreamBadRequestError(text, **kw)


@asynccontextmanager
async def request(
    http: HttpClient, method: str, url: str, headers: Mapping[str, str], *, deployment: str, data: bytes | None = None
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Send a request; a connection that fails or breaks off becomes UpstreamConnectionError."""
    try:
        async with http.session.request(method, url, data=data, headers=headers) as resp:
            yield resp
    except aiohttp.ClientConnectionError as exc:
        raise UpstreamConnectionError(
            f"cannot reach upstream {deployment}: {type(exc).__name__}", deployment=deployment
        ) from None
    except aiohttp.ClientPayloadError:
        raise UpstreamConnectionError(
            f"upstream {deployment} broke off its answer", deployment=deployment
        ) from None


def post(
    http: HttpClient, url: str, payload: Any, headers: Mapping[str, str], *, deployment: str
) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
    """POST ``payload`` as JSON (see :func:`request`)."""
    return request(http, "POST", url, headers, deployment=deployment, data=orjson.dumps(payload))


def get(
    http: HttpClient, url: str, headers: Mapping[str, str], *, deployment: str
) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
    return request(http, "GET", url, headers, deployment=deployment)


async def read_json(resp: aiohttp.ClientResponse, *, deployment: str) -> Any:
    """The body as JSON, or UpstreamBadResponseError for anything else."""
    body = await resp.read()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponseError(
            f"upstream {deployment} answered something that is not JSON", deployment=deployment
        ) from None


def _parse_event(block: bytes) -> tuple[str | None, str] | None:
    event: str | None = None
    data: list[str] = []
    for raw in block.split(b"\n"):
        if not raw or raw.startswith(b":"):
            continue
        line = raw.decode("utf-8", "replace")
        fieldname, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if fieldname == "data":
            data.append(value)
        elif fieldname == "event":
            event = value
    return (event, "\n".join(data)) if data else None


async def iter_sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str | None, str]]:
    """Server-sent events as ``(event, data)`` pairs, yielded as soon as each is complete.

    Reads whatever bytes have arrived (not line by line), so a burst of events costs one wait.
    """
    buf = b""
    async for data in resp.content.iter_any():
        buf = (buf + data).replace(b"\r\n", b"\n") if buf or b"\r" in data else data
        *blocks, buf = buf.split(b"\n\n")
        for block in blocks:
            parsed = _parse_event(block)
            if parsed is not None:
                yield parsed
    if buf.strip():
        parsed = _parse_event(buf)
        if parsed is not None:
            yield parsed


@dataclass(frozen=True)
class JsonBody:
    """A stream request answered with one plain JSON body instead of an event stream."""

    value: Any


_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")


async def _replay(events: list[tuple[str | None, str]]) -> AsyncIterator[tuple[str | None, str]]:
    for event in events:
        yield event


async def open_stream(
    resp: aiohttp.ClientResponse, *, deployment: str
) -> AsyncIterator[tuple[str | None, str]] | JsonBody:
    """The events of an answer to a stream request, or the JSON the upstream sent instead.

    Some servers that speak a provider's format ignore the stream flag and answer with the whole
    JSON body (``application/json``); the provider then turns that body into chunks itself. A body
    not labelled ``text/event-stream`` is read whole: JSON becomes :class:`JsonBody`, server-sent
    events sent under another label are replayed, and anything else is UpstreamBadResponseError,
    never an empty stream.
    """
    if resp.content_type == "text/event-stream":
        return iter_sse(resp)
    body = await resp.read()
    try:
        return JsonBody(orjson.loads(body))
    except orjson.JSONDecodeError:
        pass
    text = body.replace(b"\r\n", b"\n").strip()
    if text.startswith(_SSE_FIELDS):
        events = [e for block in text.split(b"\n\n") if (e := _parse_event(block)) is not None]
        if events:
            return _replay(events)
    raise UpstreamBadResponseError(
        f"upstream {deployment} answered a stream request with {resp.content_type or 'a body'} that is "
        "neither an event stream nor JSON",
        deployment=deployment,
    )


def loads_event(data: str, *, deployment: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponseError(
            f"upstream {deployment} sent a stream event that is not JSON", deployment=deployment
        ) from None


async def raise_for_status(
    resp: aiohttp.ClientResponse, *, deployment: str, secrets: Iterable[str | None], now: Callable[[], float]
) -> None:
    if resp.status < 300:
        return
    try:
        body = await resp.read()
    except (TimeoutError, aiohttp.ClientError):
        body = b""
    raise map_status_error(
        resp.status, resp.headers, body, deployment=deployment, secrets=secrets, now=now()
    )
