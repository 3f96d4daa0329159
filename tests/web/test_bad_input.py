"""Client mistakes never get a 500: every page and every form of the web app (walked from the view modules'
route tables), and the API routes the pages' scripts call, with hostile path segments, query parameters,
form fields and bodies (huge and negative numbers, NaN and infinities, lone surrogates percent-encoded and as
raw invalid UTF-8, control characters, overlong values, odd content types and encodings), as an admin and as
a member. Each answer must be below 500 and the server must log no error."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import io
import json
import logging
import pkgutil
import re
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.routing import APIRoute

import thinktank.web.views as views_package
from thinktank.conversations.memory import Candidate

from .conftest import ADMIN_KEY, Browser, WebEnv

VIEWS = Path(views_package.__file__).parent

# -- hostile values -----------------------------------------------------------------------------------

PATH_VALUES = [
    "no-such-id", "0", "-1", "99999999999999999999999999", "%ED%A0%80", "%FF%FE", "a" * 5000, "..%2F..%2Fetc",
    "%00", "nan", "-inf", "%0D%0Aset-cookie:%20x=1", "%E2%80%AE", "%C2%B2", "%20", "~",
]
"""Path segments as sent (already percent-encoded)."""

QUERY_VALUES = [
    "", "0", "-1", "99999999999999999999999999", "-99999999999999999999999999", "1e309", "nan", "inf", "-inf",
    "1.5", "%ED%A0%80", "%FF%FE", "%00", "%0D%0A%1B", "%C2%B2", "%EF%BC%91%EF%BC%92", "a" * 2000, "true",
    "%2F%2Fevil.example", "..%2F..%2Fetc",
]
"""Query values as sent (already percent-encoded). ``%C2%B2`` is "²": ``str.isdigit`` says yes, ``int`` says no;
``%EF%BC%91%EF%BC%92`` is a full-width "12"."""

FORM_VALUES: list[bytes] = [
    b"", b"0", b"-1", b"99999999999999999999999999", b"-99999999999999999999999999", b"1e309", b"nan", b"inf",
    b"-inf", b"1.5", b"%ED%A0%80", b"\xed\xa0\x80", b"\xff\xfe", b"%00%01%1B%0D%0A", b"%C2%B2", b"%EF%BC%91",
    b"a" * 100_000, b"%3Cscript%3Ealert(1)%3C%2Fscript%3E", b"..%2F..%2Fetc%2Fpasswd", b"%2F%2Fevil.example",
    b"ensemble%2Fdemo-council", b"demo%2Fecho",
]
"""Form values as they go in an urlencoded body (percent-encoded, or raw bytes that are not UTF-8)."""

COMMON_FIELDS = [
    "title", "name", "message", "model", "kb", "question", "email", "password", "tier", "team", "team_id", "role",
    "budget", "budget_usd", "budget_period", "period", "days", "expires_days", "decision", "who", "kind", "access",
    "after", "before", "page", "rounds", "experts", "tags", "winner", "vote", "answer", "text", "content", "fact",
    "id", "ensemble", "debate", "arena", "plan", "follow_up", "enabled", "persona", "replaces", "back", "archived",
    "description", "next", "admin_key", "file", "url", "q", "mode",
]
COMMON_QUERY = ["page", "by", "window", "revoked", "done", "voted", "q", "archived", "before", "after", "mode",
                "tag", "next", "chunk", "at", "error", "id"]

SCRIPT_API_ROUTES = [
    ("GET", "/api/v1/runs/{id}"), ("GET", "/api/v1/runs/{id}/events"), ("POST", "/api/v1/runs/{id}/cancel"),
    ("GET", "/api/v1/threads/{id}"), ("PATCH", "/api/v1/threads/{id}"), ("GET", "/api/v1/threads/{id}/messages"),
    ("POST", "/api/v1/threads/{id}/messages"), ("GET", "/api/v1/threads/{id}/turn/events"),
    ("POST", "/api/v1/threads/{id}/turn/stop"), ("GET", "/api/v1/knowledge-bases/{id}/documents"),
    ("POST", "/api/v1/knowledge-bases/{id}/documents"), ("POST", "/api/v1/knowledge-bases/{id}/urls"),
]
"""What the pages' scripts call on the API (fetch and EventSource), with an id from the page."""


def _names(pattern: str) -> set[str]:
    text = "\n".join(p.read_text() for p in VIEWS.glob("*.py"))
    return set(re.findall(pattern, text))


FORM_FIELDS = sorted((set(COMMON_FIELDS) | _names(r'form(?:\.get|\.getlist)\("(\w+)"') | _names(
    r'_(?:field|text|number)\(\w+, "(\w+)"')) - {"csrf"})  # the right token goes with every form
QUERY_FIELDS = sorted(set(COMMON_QUERY) | _names(r'query_params\.get\("(\w+)"'))


@dataclass(frozen=True)
class Route:
    path: str
    method: str
    query: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    reads: tuple[str, ...] = field(default=())
    """The form fields the view names (each is also sent alone: a field that fails first hides the others)."""


def web_routes() -> list[Route]:
    """Every route of every view module (a module that includes another's router lists it too: once here)."""
    found: dict[tuple[str, str], Route] = {}
    for info in pkgutil.iter_modules([str(VIEWS)]):
        module = importlib.import_module(f"thinktank.web.views.{info.name}")
        router = getattr(module, "router", None)
        for route in getattr(router, "routes", []):
            if not isinstance(route, APIRoute):
                continue
            for method in route.methods or ():
                query = tuple(p.name for p in route.dependant.query_params)
                params = tuple(p.name for p in route.dependant.path_params)
                words = set(re.findall(r'"(\w+)"', inspect.getsource(route.endpoint)))
                reads = tuple(sorted(words & set(FORM_FIELDS)))
                found[(route.path, method)] = Route(route.path, method, query, params, reads)
    return sorted(found.values(), key=_order)


def _order(route: Route) -> tuple[str, int, int, str]:
    """Forms that end what they act on come last, inner objects before what holds them (a document's before
    its knowledge base's), so every form is reached while the real objects still exist."""
    path = route.path
    rank = 2 if path.endswith(("/delete", "/revoke", "/clear")) else 1 if path.endswith(("/rotate", "/cancel")) else 0
    return route.method, rank, -path.count("/"), path


def fill(path: str, value: str, ids: dict[str, str] | None = None) -> str:
    """``path`` with each ``{param}`` replaced by the known id of that name, else ``value``."""
    return re.sub(r"\{(\w+)\}", lambda m: (ids or {}).get(m.group(1), value), path)


# -- requests ------------------------------------------------------------------------------------------


class Failures:
    """Every answer at 500 or above, with what was sent (the test fails listing them all)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.count = 0

    def check(self, response: httpx.Response, what: str, *, page: bool = False) -> None:
        self.count += 1
        status = response.status_code
        if status >= 500:
            self.items.append(f"{status} {what[:300]}")
        elif (page and not 300 <= status < 400 and status != 413
              and not response.headers.get("content-type", "").startswith("text/html")):
            self.items.append(f"{status} not an HTML page or a redirect: {what[:300]}")

    def raw(self, status: int, what: str) -> None:
        self.count += 1
        if status >= 500 or status == 0:
            self.items.append(f"{status} {what[:300]}")


async def send(b: Browser, method: str, url: str, *, content: bytes | None = None,
               content_type: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """One request as sent: the URL is not re-encoded (httpx keeps valid %-escapes as they are)."""
    h = {"origin": b.url, **(headers or {})}
    if content_type is not None:
        h["content-type"] = content_type
    if method == "GET":
        request = b.http.build_request("GET", url, headers=h)
        if url.endswith("/events"):  # a stream the id was not found for answers at once; a found one is cut short
            response = await b.http.send(request, stream=True)
            await response.aclose()
            return response
        return await b.http.send(request)
    return await b.http.request(method, url, content=content, headers=h)


async def raw_request(url: str, head: bytes, body: bytes = b"") -> int:
    """A request written byte by byte (raw non-UTF-8 bytes in the request line); its status, 0 if none."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head + b"\r\nhost: " + parts.netloc.encode() + b"\r\nconnection: close\r\n"
                     + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        line = await reader.readline()
        match = re.match(rb"HTTP/1\.[01] (\d{3})", line)
        return int(match.group(1)) if match else 0
    finally:
        writer.close()


def form_bodies(csrf: str) -> Iterator[tuple[str, bytes, str]]:
    """(what, body, content type): every field with each hostile value, then the odd encodings."""
    token = csrf.encode()
    urlencoded = "application/x-www-form-urlencoded"
    for value in FORM_VALUES:
        fields = b"&".join(n.encode() + b"=" + value for n in FORM_FIELDS)
        yield f"fields={value[:40]!r}", b"csrf=" + token + b"&" + fields, urlencoded
    repeated = b"&".join(n.encode() + b"=1&" + n.encode() + b"=2" for n in FORM_FIELDS)
    yield "repeated fields", b"csrf=" + token + b"&" + repeated, urlencoded
    latin1 = b"&".join(n.encode() + b"=caf\xe9+na\xefve" for n in FORM_FIELDS)
    yield "latin-1 body", b"csrf=" + token + b"&" + latin1, urlencoded + "; charset=latin-1"
    yield "bad charset", b"csrf=" + token + b"&title=x", urlencoded + "; charset=no-such-charset"
    yield "empty body", b"", urlencoded
    yield "no csrf", b"title=x", urlencoded
    yield "many fields", b"csrf=" + token + b"".join(b"&f%d=1" % i for i in range(3000)), urlencoded
    yield "hostile csrf", b"csrf=%ED%A0%80&title=x", urlencoded
    yield "raw csrf", b"csrf=\xed\xa0\x80&title=x", urlencoded
    yield "broken pairs", b"csrf=" + token + b"&&=&==&title&%&%zz=%zz&a=%", urlencoded
    yield "json", b'{"csrf": "' + token + b'", "title": 1e999}', "application/json"
    yield "text", b"csrf=" + token, "text/plain"
    yield "no content type", b"csrf=" + token + b"&title=x", ""
    boundary = b"XyZ"
    parts = [b"--XyZ\r\ncontent-disposition: form-data; name=\"csrf\"\r\n\r\n" + token + b"\r\n"]
    for n in FORM_FIELDS:  # every field a file where text is expected, and once more as text that is not UTF-8
        parts.append(b"--XyZ\r\ncontent-disposition: form-data; name=\"" + n.encode()
                     + b"\"; filename=\"../../x\xed\xa0\x80.txt\"\r\ncontent-type: text/plain\r\n\r\n\xff\xfe\x00\r\n")
        parts.append(b"--XyZ\r\ncontent-disposition: form-data; name=\"" + n.encode() + b"\"\r\n\r\n\xed\xa0\x80\r\n")
    multipart = "multipart/form-data; boundary=XyZ"
    yield "multipart files", b"".join(parts) + b"--XyZ--\r\n", multipart
    yield "multipart broken boundary", b"--Other\r\ncontent-disposition: form-data; name=\"csrf\"\r\n\r\n" + token, \
        multipart
    yield "multipart truncated", b"".join(parts[:2])[:-7], multipart
    yield "multipart no boundary", b"".join(parts), "multipart/form-data"
    yield "multipart bad header", b"--XyZ\r\nno-colon-here\r\n\r\nx\r\n--XyZ--\r\n", multipart
    yield "multipart empty", b"", multipart
    assert boundary


BIG = b"a" * 10_000_000
NEAR_LIMIT = 1024 * 1024 - 4096
"""A field this long is within the body limit (4 MiB) and the form parser's limit for a field (1 MiB)."""

HOSTILE_JSON: list[object] = [None, -1, 0, 2**63 - 1, -(2**63), 1e308, -1e308, 1.5, "", "\x00\x1b\r\n", "a" * 100_000,
                              [], {}, [{"a": 1}], True, "../../etc/passwd", "<script>alert(1)</script>"]
"""What each value of an imported export becomes (JSON has no NaN or lone surrogates: those are sent as text)."""


def import_files(export: dict[str, object]) -> Iterator[tuple[str, bytes]]:
    """(what, file): ``export`` with each of its values (in the thread, the first message, the top) hostile,
    then files that are not JSON or not an export."""
    def leaves(value: object, where: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from leaves(v, (*where, k))
        elif isinstance(value, list) and value:
            yield from leaves(value[0], (*where, 0))
        yield where

    def replaced(value: object, where: tuple[str | int, ...], new: object) -> object:
        if not where:
            return new
        head, rest = where[0], where[1:]
        if isinstance(value, dict):
            return {**value, str(head): replaced(value.get(str(head)), rest, new)}
        if isinstance(value, list) and isinstance(head, int):
            return [replaced(value[0], rest, new), *value[1:]]
        return value

    for where in leaves(export, ()):
        if not where:
            continue
        for new in HOSTILE_JSON:
            yield f"{'.'.join(map(str, where))}={str(new)[:30]!r}", json.dumps(replaced(export, where, new)).encode()
    text = json.dumps(export)
    for what, data in (("NaN", text.replace('"version": 1', '"version": NaN')),
                       ("Infinity", text.replace('"exported_at": ', '"exported_at": Infinity, "x": ')),
                       ("big integer", text.replace('"version": 1', '"version": 99999999999999999999999999')),
                       ("lone surrogate", text.replace('"format": "', '"format": "\\ud800')),
                       ("deep", "[" * 100_000 + "]" * 100_000), ("not JSON", "\xff\xfe\x00"), ("empty", ""),
                       ("a list", "[]"), ("latin-1", text.encode().decode("latin-1"))):
        yield what, data.encode("utf-8", "surrogatepass")


# -- the walk ------------------------------------------------------------------------------------------


async def objects(env: WebEnv, b: Browser) -> dict[str, str]:
    """Real ids this user owns (a thread and its message, a run, a debate, a knowledge base and a document
    in it, a memory, an API key; for an admin, another user), so the pages and forms behind them are reached
    with hostile query parameters and bodies, not only turned away as 404s."""
    ids: dict[str, str] = {}
    origin = {"origin": b.url}
    r = await b.http.post("/chat/new", data={"csrf": b.csrf, "model": "demo/echo", "message": "hello"},
                          headers=origin)
    assert r.status_code == 303, r.text
    ids["thread_id"] = r.headers["location"].rsplit("/", 1)[-1]
    r = await b.api("GET", f"/api/v1/threads/{ids['thread_id']}/messages")
    assert r.status_code == 200, r.text
    ids["message_id"] = r.json()["data"][0]["id"]
    r = await b.http.post("/knowledge", data={"csrf": b.csrf, "name": "fuzz-kb"}, headers=origin)
    assert r.status_code == 303, r.text
    ids["kb"] = r.headers["location"].rsplit("/", 1)[-1]
    r = await b.api("POST", f"/api/v1/knowledge-bases/{ids['kb']}/documents",
                    files={"files": ("notes.md", b"# Herons\n\nHerons wade in shallow water.\n", "text/markdown")})
    assert r.status_code == 201, r.text
    ids["doc_id"] = r.json()["data"][0]["document_id"]
    r = await b.http.post("/runs", data={"csrf": b.csrf, "ensemble": "demo-council", "question": "why?"},
                          headers=origin)
    assert r.status_code == 303, r.text
    ids["run_id"] = r.headers["location"].rsplit("/", 1)[-1]
    r = await b.http.post("/debate", data={"csrf": b.csrf, "debate": "demo-panel", "question": "why?",
                                           "rounds": "1"}, headers=origin)
    assert r.status_code == 303, r.text
    ids["debate_id"] = r.headers["location"].rsplit("/", 1)[-1]
    me = (await b.api("GET", "/api/v1/me")).json()
    facts = await env.app.state.conversations.memory.remember(
        me["user_id"], [Candidate("fact", "I keep herons")], source_message_id=None, source_thread_id=None)
    ids["memory_id"] = facts[0].id
    r = await b.api("POST", "/api/v1/keys", json={"name": "fuzz"})
    assert r.status_code == 201, r.text
    ids["key_id"] = r.json()["id"]
    if me.get("role") == "admin":
        other = await env.member("other@example.com")
        ids["user_id"] = (await other.api("GET", "/api/v1/me")).json()["user_id"]
    return ids


def _ids_for(path: str, ids: dict[str, str]) -> dict[str, str]:
    own = dict(ids)
    if path.startswith("/debate/"):
        own["run_id"] = ids["debate_id"]
    return own


async def walk(env: WebEnv, b: Browser, failures: Failures) -> None:
    ids = await objects(env, b)
    r = await b.api("GET", f"/api/v1/threads/{ids['thread_id']}/export?format=json")
    assert r.status_code == 200, r.text
    export = r.json()
    routes = [r for r in web_routes() if r.path not in ("/logout",)]
    # Pages: hostile path segments, then each page reached with every query parameter hostile.
    for route in (r for r in routes if r.method == "GET"):
        if route.params:
            for value in PATH_VALUES:
                url = fill(route.path, value)
                failures.check(await send(b, "GET", url), f"GET {url}", page=True)
        base = fill(route.path, "x", _ids_for(route.path, ids))
        names = sorted(set(route.query) | set(QUERY_FIELDS))
        for value in QUERY_VALUES:
            url = base + "?" + "&".join(f"{n}={value}" for n in names)
            response = await send(b, "GET", url)
            failures.check(response, f"GET {url}", page=True)
            for name in route.query:  # a declared parameter that fails validation would hide the others
                url = f"{base}?{name}={value}"
                failures.check(await send(b, "GET", url), f"GET {url}", page=True)
        url = base + "?" + "&".join(f"{n}=1&{n}=2" for n in names) + "&%ED%A0%80=%FF&%zz&=&&"
        failures.check(await send(b, "GET", url), f"GET {url}", page=True)
    # Forms: hostile path segments with a plain body, then every body at the real objects' forms.
    for route in (r for r in routes if r.method == "POST"):
        if route.params:
            for value in PATH_VALUES:
                url = fill(route.path, value)
                body = b"csrf=" + b.csrf.encode() + b"&title=x&tier=&text=x"
                failures.check(await send(b, "POST", url, content=body,
                                          content_type="application/x-www-form-urlencoded",
                                          headers={"x-csrf-token": b.csrf}), f"POST {url}", page=True)
        url = fill(route.path, "no-such-id", _ids_for(route.path, ids))
        for what, body, content_type in form_bodies(b.csrf):
            response = await send(b, "POST", url, content=body, content_type=content_type or None,
                                  headers={"x-csrf-token": b.csrf})
            failures.check(response, f"POST {url} {what}", page=True)
        for name in route.reads:
            for field_value in FORM_VALUES:
                one = b"csrf=" + b.csrf.encode() + b"&" + name.encode() + b"=" + field_value
                failures.check(await send(b, "POST", url, content=one,
                                          content_type="application/x-www-form-urlencoded"),
                               f"POST {url} {name}={field_value[:40]!r}", page=True)
        for name in route.reads[:1] or ("title",):  # a field just within the body limit reaches the view
            big = b"csrf=" + b.csrf.encode() + b"&" + name.encode() + b"=" + BIG[:NEAR_LIMIT]
            failures.check(await send(b, "POST", url, content=big, content_type="application/x-www-form-urlencoded",
                                      headers={"x-csrf-token": b.csrf}), f"POST {url} 1 MB {name}", page=True)
    # A 10 MB field: over the body limit, with its length said and without (sent in chunks).
    big = b"csrf=" + b.csrf.encode() + b"&message=" + BIG

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 1 << 20):
            yield big[start:start + (1 << 20)]

    for content in (big, chunks()):
        r = await b.http.post("/chat/new", content=content, headers={
            "origin": b.url, "content-type": "application/x-www-form-urlencoded"})
        failures.check(r, "POST /chat/new 10 MB field", page=True)
    # A thread's JSON export, imported with each of its values hostile.
    for what, data in import_files(export):
        files = {"file": ("thread.json", data, "application/json")}
        failures.check(await b.http.post("/chat/import", data={"csrf": b.csrf}, files=files,
                                         headers={"origin": b.url}), f"POST /chat/import {what}")
    # What the pages' scripts call on the API.
    for method, path in SCRIPT_API_ROUTES:
        for value in PATH_VALUES:
            url = fill(path, value)
            failures.check(await send(b, method, url, content=b'{"content": "\\ud800", "title": 1e999}',
                                      content_type="application/json", headers={"x-csrf-token": b.csrf}),
                           f"{method} {url}")
    # The streams the pages follow, of this user's own run, debate and thread, resumed from hostile places.
    for path in (f"/api/v1/runs/{ids['run_id']}/events", f"/api/v1/runs/{ids['debate_id']}/events",
                 f"/api/v1/threads/{ids['thread_id']}/turn/events"):
        for resume in RESUME_VALUES:
            await follow(b, f"{path}?after={resume.decode('latin-1')}&format=json", failures)
            await follow(b, path, failures, {b"last-event-id": resume})
    # The static files: hostile names, traversal, overlong names; and methods no route has.
    for value in (*PATH_VALUES, "app.css%00.js", "js%2F..%2F..%2F..%2Fapi%2Fapp.py", "%2E%2E/%2E%2E/etc/passwd",
                  "a" * 255 + ".css", ("a" * 200 + "/") * 10 + "x.css", "app.css/", "js/", "?v=%ED%A0%80"):
        url = f"/static/{value}"
        failures.check(await send(b, "GET", url), f"GET {url}")
    for route in routes[::3]:
        for method in ("PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"):
            url = fill(route.path, "no-such-id")
            failures.check(await b.http.request(method, url, headers={"origin": b.url}), f"{method} {url}")
    # Raw bytes that are not UTF-8 in the path and the query.
    for head in (b"GET /chat/\xed\xa0\x80 HTTP/1.1", b"GET /knowledge/\xff\xfe HTTP/1.1",
                 b"GET /chat?q=\xed\xa0\x80&before=\xff HTTP/1.1", b"GET /admin/users?page=\xc2\xb2 HTTP/1.1",
                 b"GET /runs/%ED%A0%80/fragment HTTP/1.1", b"GET /\xc0\xaf HTTP/1.1"):
        status = await raw_request(b.url, head + b"\r\ncookie: " + _cookie(b).encode())
        failures.raw(status, head.decode("latin-1"))
    # Hostile headers: the session cookie, the origin, the CSRF header, the host.
    for extra in (b"cookie: tt_session=\xed\xa0\x80", b"cookie: tt_session=%ED%A0%80; tt_session=" + b"a" * 5000,
                  b"cookie: " + _cookie(b).encode() + b"\r\norigin: \xff\xfe",
                  b"cookie: " + _cookie(b).encode() + b"\r\norigin: " + b.url.encode()
                  + b"\r\nx-csrf-token: \xed\xa0\x80\r\ncontent-type: application/x-www-form-urlencoded",
                  b"cookie: " + _cookie(b).encode() + b"\r\nx-requested-with: \xff",
                  b"authorization: Bearer \xed\xa0\x80\r\nx-api-key: " + b"\xff" * 5000,
                  b"cookie: " + _cookie(b).encode() + b"\r\norigin: null\r\ncontent-type: multipart/form-data; "
                  b"boundary=" + b"\xff" * 100):
        for head in (b"GET /chat HTTP/1.1", b"POST /chat/new HTTP/1.1", b"POST /compare/render HTTP/1.1",
                     b"GET /api/v1/threads HTTP/1.1", b"POST /api/v1/threads HTTP/1.1"):
            status = await raw_request(b.url, head + b"\r\n" + extra, b"csrf=\xed\xa0\x80&title=\xff")
            failures.raw(status, (head + b" " + extra).decode("latin-1"))
    # Signing out last: the session ends.
    failures.check(await send(b, "POST", "/logout", content=b"csrf=\xed\xa0\x80",
                              content_type="application/x-www-form-urlencoded"), "POST /logout hostile csrf")


RESUME_VALUES = [b"-1", b"0", b"99999999999999999999999999", b"1e309", b"nan", b"1.5", b"0x10", b"\xff\xfe", b"",
                 b"a" * 2000, b"%ED%A0%80"]
"""Where a stream is resumed from (``Last-Event-ID``, ``?after=``)."""


async def follow(b: Browser, url: str, failures: Failures, headers: dict[bytes, bytes] | None = None) -> None:
    """Read a stream to its end (the runs have ended, so it ends: an error inside it is logged, and fails the
    test); one still going after a few seconds is left."""
    request = b.http.build_request("GET", url, headers=headers)
    response = await b.http.send(request, stream=True)
    try:
        failures.check(response, f"GET {url} {headers or ''}")
        async with asyncio.timeout(5):
            async for _chunk in response.aiter_bytes():
                pass
    except TimeoutError:
        pass
    finally:
        await response.aclose()


def _cookie(b: Browser) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in b.http.cookies.jar)


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Errors the server logs (ours, and uvicorn's "Exception in ASGI application", which does not propagate)."""
    loggers = [logging.getLogger(name) for name in ("thinktank", "uvicorn", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.ERROR)
    try:
        yield caplog
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)


def _report(failures: Failures, records: list[logging.LogRecord]) -> str:
    logged = [f"{r.name}: {r.getMessage()[:200]}" for r in records if r.levelno >= logging.ERROR]
    return "\n".join([f"{len(failures.items)} of {failures.count} requests failed:", *failures.items[:60], *logged])


async def test_admin_never_gets_a_500(web: WebEnv, server_errors: pytest.LogCaptureFixture) -> None:
    failures = Failures()
    await walk(web, web.admin, failures)
    errors = [r for r in server_errors.records if r.levelno >= logging.ERROR]
    assert not failures.items and not errors, _report(failures, errors)
    assert failures.count > 1000  # the walk reached every route


async def test_member_never_gets_a_500(web: WebEnv, server_errors: pytest.LogCaptureFixture) -> None:
    failures = Failures()
    await walk(web, await web.member("fuzz@example.com"), failures)
    errors = [r for r in server_errors.records if r.levelno >= logging.ERROR]
    assert not failures.items and not errors, _report(failures, errors)
    assert failures.count > 1000


async def signed_out_form(b: Browser, path: str, fields: dict[str, bytes], failures: Failures) -> None:
    """The sign-in or first-run form, fetched for its CSRF value and cookie, then posted with each of
    ``fields`` in turn hostile (the others as given)."""
    for name in fields:
        for value in FORM_VALUES:
            page = await b.get(path)
            if page.status != 200:  # signed in, or set up: the rest is the other page's
                return
            body = {"csrf": page.form_value("csrf").encode(), **fields, name: value}
            content = b"&".join(k.encode() + b"=" + v for k, v in body.items())
            failures.check(await send(b, "POST", path, content=content,
                                      content_type="application/x-www-form-urlencoded"),
                           f"POST {path} {name}={value[:40]!r}")


async def test_signed_out_never_gets_a_500(web: WebEnv, server_errors: pytest.LogCaptureFixture) -> None:
    """Before signing in: every page and form with hostile ids and bodies, and the sign-in form's fields."""
    b = await web.browser()
    failures = Failures()
    for route in web_routes():
        for value in ("no-such-id", "%ED%A0%80", "a" * 5000):
            url = fill(route.path, value) + "?next=%ED%A0%80&page=%C2%B2"
            if route.method == "GET":
                failures.check(await send(b, "GET", url), f"GET {url}")
            elif value == "no-such-id":  # a form without a session is turned away before its body is read
                for what, body, content_type in form_bodies("no-session"):
                    failures.check(await send(b, "POST", url, content=body, content_type=content_type or None),
                                   f"POST {url} {what}")
    await signed_out_form(b, "/login", {"email": b"admin%40example.com", "password": b"wrong", "next": b"%2Fchat"},
                          failures)
    errors = [r for r in server_errors.records if r.levelno >= logging.ERROR]
    assert not failures.items and not errors, _report(failures, errors)
    assert failures.count > 500


async def test_first_run_form_never_gets_a_500(fresh: tuple[str, Browser],
                                               server_errors: pytest.LogCaptureFixture) -> None:
    """The first-run form, with the server's admin key and each field in turn hostile."""
    _url, b = fresh
    failures = Failures()
    await signed_out_form(b, "/setup", {"admin_key": ADMIN_KEY.encode(), "email": b"first%40example.com",
                                        "password": b"correct+horse+battery+staple"}, failures)
    errors = [r for r in server_errors.records if r.levelno >= logging.ERROR]
    assert not failures.items and not errors, _report(failures, errors)
    assert failures.count > 30


def docx(style: str) -> bytes:
    """A one-paragraph-and-a-heading DOCX whose heading has the paragraph style ``style``."""
    xml = ('<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
           f'<w:body><w:p><w:pPr><w:pStyle w:val="{style}"/></w:pPr><w:r><w:t>Head</w:t></w:r></w:p>'
           '<w:p><w:r><w:t>Herons wade in shallow water.</w:t></w:r></w:p></w:body></w:document>')
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("word/document.xml", xml)
    return data.getvalue()


DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HOSTILE_DOCUMENTS: list[tuple[str, bytes, str]] = [
    ("h.docx", docx("Heading\u00b2"), DOCX),  # "²": isdigit, but not int's (a 500 once)
    ("h.docx", docx("Heading" + "9" * 5000), DOCX),  # more digits than int() reads
    ("h.docx", docx("Heading99999999999999999999999"), DOCX),
    ("h.docx", b"PK\x03\x04 not a zip", DOCX),
    ("h.html", b"<h\xc2\xb2>x</h\xc2\xb2><h1>\xed\xa0\x80</h1><h99999999999>y</h99999999999><p>body</p>", "text/html"),
    ("h.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>", "application/pdf"),
    ("h.json", b"[" * 100_000 + b"]" * 100_000, "application/json"),
    ("h.json", b'{"a": NaN, "b": 1e999, "c": "\\ud800"}', "application/json"),
    ("h.csv", b"a,b\n\"," + b"x" * 200_000 + b"\n\xff\xfe,\n", "text/csv"),
    ("h.md", b"", "text/markdown"),
    ("h.md", b"\xff\xfe\x00\xd8", "text/markdown"),  # UTF-16 with a lone surrogate
    ("../../\xed\xa0\x80" + "a" * 5000 + ".md", b"# x\n\nHerons.", "text/markdown"),  # raw bytes in the name
    ("..%2F..%2F\u202e\x1b\x7f" + "a" * 300 + ".md", b"# x\n\nHerons.", "text/markdown"),
]


async def test_hostile_documents_never_get_a_500(web: WebEnv, server_errors: pytest.LogCaptureFixture) -> None:
    """Documents uploaded as the knowledge page's script does (one file a request), each made to trip a parser;
    then the knowledge base's page and each document's page."""
    b = web.admin
    r = await b.http.post("/knowledge", data={"csrf": b.csrf, "name": "hostile"}, headers={"origin": b.url})
    assert r.status_code == 303, r.text
    kb = r.headers["location"].rsplit("/", 1)[-1]
    failures = Failures()
    docs: list[str] = []
    for i, (name, data, content_type) in enumerate(HOSTILE_DOCUMENTS):
        raw_name = f"{i}-{name}".encode("latin-1") if name.isascii() or "\xed" in name else f"{i}-{name}".encode()
        body = (b"--XyZ\r\ncontent-disposition: form-data; name=\"files\"; filename=\"" + raw_name
                + b"\"\r\ncontent-type: " + content_type.encode() + b"\r\n\r\n" + data + b"\r\n--XyZ--\r\n")
        r = await send(b, "POST", f"/api/v1/knowledge-bases/{kb}/documents", content=body,
                       content_type="multipart/form-data; boundary=XyZ", headers={"x-csrf-token": b.csrf})
        failures.check(r, f"upload {name[:40]!r} {data[:40]!r}")
        if r.status_code < 300:
            docs += [d["document_id"] for d in r.json()["data"] if d.get("document_id")]
    for path in (f"/knowledge/{kb}", *(f"/knowledge/{kb}/documents/{d}" for d in docs)):
        failures.check(await send(b, "GET", path), f"GET {path}", page=True)
    errors = [r for r in server_errors.records if r.levelno >= logging.ERROR]
    assert not failures.items and not errors, _report(failures, errors)
    assert docs  # some were indexed, and their pages shown


HOSTILE_URLS = [
    "http://" + "a" * 64 + ".invalid/", "http://xn--zz.invalid/", "http://xn--/", "http://[::1", "http://[::1]:99999/",
    "http://127.0.0.1:-1/", "http://127.0.0.1:0/", "http://%ED%A0%80/", "http://exa mple.invalid/", "http:///x",
    "ftp://127.0.0.1/", "javascript:alert(1)", "file:///etc/passwd", "http://ex\x00ample.invalid/",
    "http://a\u3002invalid/", "http://" + "a." * 120 + "invalid/", "http://\u00e9\u00e9.invalid/",
    "http://\u0130\u0131.invalid/", "http://\ufb03.invalid/", "http://\u200d.invalid/", "http://..invalid/",
    "http://0x7f.1/", "http://2130706433/", "http://[::ffff:127.0.0.1]/", "http://user:pw@127.0.0.1/",
    "//127.0.0.1/", "http://-.invalid/", "http://a_b.invalid/", "http://1.2.3.4.5/", "\t\r\n", " ",
    "http://169.254.169.254/latest/meta-data/", "http://example.invalid:8080\\@127.0.0.1/",
]
"""URLs to add to a knowledge base, as the page's script sends them: ill-formed hosts and ports that must be
refused as the client's mistake, none fetched (loopback and private addresses are refused, the rest are
names under .invalid, which never resolve)."""


async def test_hostile_urls_never_get_a_500(web: WebEnv, server_errors: pytest.LogCaptureFixture) -> None:
    b = web.admin
    r = await b.http.post("/knowledge", data={"csrf": b.csrf, "name": "urls"}, headers={"origin": b.url})
    assert r.status_code == 303, r.text
    kb = r.headers["location"].rsplit("/", 1)[-1]
    failures = Failures()
    for url in HOSTILE_URLS:
        for stream in ("", "?stream=true"):
            r = await b.api("POST", f"/api/v1/knowledge-bases/{kb}/urls{stream}", json={"urls": [url]})
            failures.check(r, f"add URL {url[:80]!r} {stream}")
            if r.status_code < 300:
                assert "refused" in r.text or "failed" in r.text, r.text  # nothing was fetched and added
    errors = [r for r in server_errors.records if r.levelno >= logging.ERROR]
    assert not failures.items and not errors, _report(failures, errors)


async def test_too_many_bad_session_cookies_get_a_429_page(web: WebEnv,
                                                            server_errors: pytest.LogCaptureFixture) -> None:
    """Bad session cookies count as failed sign-ins; past the limit every page and form answers 429 as an HTML
    page (the error page once looked the user up again, was refused again, and made it a 500)."""
    b = await web.browser()
    failures = Failures()
    statuses: list[int] = []
    for i in range(60):
        cookie = {"cookie": f"tt_session=forged-{i}"}
        for method, path in (("GET", "/chat"), ("POST", "/chat/new"), ("GET", "/runs/x/fragment")):
            r = await send(b, method, path, content=b"csrf=x" if method == "POST" else None,
                           content_type="application/x-www-form-urlencoded", headers=cookie)
            failures.check(r, f"{method} {path} forged cookie {i}", page=True)
            statuses.append(r.status_code)
        if statuses[-3:] == [429, 429, 429]:
            break
    errors = [r for r in server_errors.records if r.levelno >= logging.ERROR]
    assert not failures.items and not errors, _report(failures, errors)
    assert statuses[-3:] == [429, 429, 429]


async def test_a_500_is_caught(web: WebEnv, server_errors: pytest.LogCaptureFixture,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above do fail on a 500: a view that raises is reported, and the server logs it."""
    from thinktank.web.views import auth

    def broken(*_args: object, **_kw: object) -> None:
        raise RuntimeError("a view that fails")

    monkeypatch.setattr(auth, "RedirectResponse", broken)  # what GET /favicon.ico answers with
    failures = Failures()
    failures.check(await send(web.admin, "GET", "/favicon.ico"), "GET /favicon.ico")
    assert [i.split()[0] for i in failures.items] == ["500"]
    assert any(r.levelno >= logging.ERROR for r in server_errors.records)
