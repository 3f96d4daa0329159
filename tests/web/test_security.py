"""The web app as an attacker sees it: another member's ids on every page, fragment, form and download;
CSRF on every form and on the API with the cookie; redirects built from input; download names; the page
that shows a key's secret; session fixation, sign-out and sign-in throttling; active content in what the
pages show; the status of error pages."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from thinktank.api.app import create_app
from thinktank.config import Settings, TierConfig
from thinktank.conversations.memory import Candidate
from thinktank.discovery import demo_config
from thinktank.knowledge.embeddings import LocalEmbedder
from thinktank.web.views import (
    admin,
    admin_ops,
    agents,
    auth,
    chat,
    compare,
    debate,
    knowledge,
    knowledge_docs,
    me,
    me_keys,
    runs,
)

from ..fakes.server import serving
from .conftest import ADMIN_EMAIL, ADMIN_KEY, PASSWORD, Browser, Page, WebEnv

HOSTILE = '</script><script>alert(1)</script>"\'><img src=x onerror=alert(2)><svg onload=alert(3)>'


async def _post(b: Browser, path: str, data: dict[str, str] | None = None, *, csrf: str | None = None,
                **kw: Any) -> httpx.Response:
    return await b.http.post(path, data={"csrf": b.csrf if csrf is None else csrf, **(data or {})}, **kw)


def _no_active_content(page: Page) -> None:
    """Nothing in the page runs: no script but the page's own module files, no inline handlers, no
    javascript: URLs."""
    for s in page.all("script"):
        assert (s.attributes.get("src") or "").startswith("/static/"), s.html
        assert not (s.text() or "").strip()
    for node in page.all("*"):
        for name, value in node.attributes.items():
            assert not name.lower().startswith("on"), node.html
            assert not (value or "").strip().lower().startswith("javascript:"), node.html


@dataclass
class Owned:
    """What member A owns, and the ids B will try."""

    thread: str
    message: str
    kb: str
    doc: str
    chunk: int
    run: str
    debate: str
    fact: str
    key: str
    session: str
    share: int


async def _finish(b: Browser, run_id: str) -> None:
    async with b.http.stream("GET", f"/api/v1/runs/{run_id}/events") as r:
        assert r.status_code == 200
        async for _ in r.aiter_lines():
            pass


async def _owned(web: WebEnv, a: Browser) -> Owned:
    r = await a.api("POST", "/api/v1/threads", json={"model": "demo/echo", "title": "alice's secret plans"})
    assert r.status_code == 201, r.text
    thread = r.json()["id"]
    r = await a.api("POST", f"/api/v1/threads/{thread}/messages", json={"content": "my secret"})
    assert r.status_code == 200, r.text
    messages = (await a.api("GET", f"/api/v1/threads/{thread}/messages")).json()["data"]
    message = messages[0]["id"]
    kb = (await a.api("POST", "/api/v1/knowledge-bases", json={"name": "alice-kb"})).json()["id"]
    r = await a.api("POST", f"/api/v1/knowledge-bases/{kb}/documents",
                    files={"files": ("diary.md", b"# Diary\n\nThe vault code is 4711.", "text/markdown")})
    assert r.status_code in (200, 201), r.text
    doc = r.json()["data"][0].get("document_id") or r.json()["data"][0]["id"]
    page = await a.get(f"/knowledge/{kb}/documents/{doc}")
    assert page.status == 200, page.response.text
    chunk = int(page.all('[id^="chunk-"]')[0].attributes["id"].removeprefix("chunk-"))  # type: ignore[union-attr]
    # A share to the admin (so there is a share id to try).
    r = await a.api("POST", f"/api/v1/knowledge-bases/{kb}/shares", json={"user": ADMIN_EMAIL, "access": "read"})
    assert r.status_code == 201, r.text
    share = int(r.json()["id"])
    page = await a.get("/compare")
    r = await a.http.post("/runs", data={"csrf": page.csrf, "ensemble": "ensemble/demo-council", "question": "q?"})
    assert r.status_code == 303, r.text
    run = r.headers["location"].removeprefix("/runs/")
    await _finish(a, run)
    page = await a.get("/debate")
    r = await a.http.post("/debate", data={"csrf": page.csrf, "debate": "demo-panel", "question": "secret plan?",
                                           "rounds": "2", "plan": "1"})
    assert r.status_code == 303, r.text
    debate_id = r.headers["location"].removeprefix("/debate/")
    await _finish(a, debate_id)
    me_page = await a.get("/me")
    memory = web.app.state.conversations.memory
    await memory.remember(await _user_id(web, "alice@example.com"), [Candidate("fact", "Alice's PIN is 1234")],
                          source_message_id=None, source_thread_id=None)
    fact = (await a.api("GET", "/api/v1/me/memory")).json()["data"][0]["id"]
    r = await a.api("POST", "/api/v1/keys", json={"name": "alice-key"})
    assert r.status_code == 201, r.text
    key = r.json()["id"]
    session = next(f.attributes["action"] for f in me_page.all("form")
                   if "/me/sessions/" in (f.attributes.get("action") or ""))
    session = (session or "").removeprefix("/me/sessions/").removesuffix("/revoke")
    return Owned(thread, message, kb, doc, chunk, run, debate_id, fact, key, session, share)


async def _user_id(web: WebEnv, email: str) -> str:
    users = await web.app.state.users.list_users()
    return next(u.id for u in users if u.email == email)


# -- IDOR ----------------------------------------------------------------------------------------------


async def test_another_members_ids_are_404_on_every_page_fragment_and_download(web: WebEnv) -> None:
    a = await web.member("alice@example.com")
    b = await web.member("bob@example.com")
    o = await _owned(web, a)
    paths = [
        f"/chat/{o.thread}", f"/chat/{o.thread}/messages/{o.message}", f"/runs/{o.run}", f"/runs/{o.run}/fragment",
        f"/debate/{o.debate}", f"/debate/{o.debate}/timeline", f"/knowledge/{o.kb}",
        f"/knowledge/{o.kb}?q=vault", f"/knowledge/{o.kb}/documents/{o.doc}",
        f"/knowledge/{o.kb}/documents/{o.doc}?chunk={o.chunk}", f"/knowledge/{o.kb}/documents/{o.doc}?at=0",
        f"/api/v1/threads/{o.thread}/export?format=json", f"/api/v1/threads/{o.thread}/export?format=markdown",
        f"/api/v1/threads/{o.thread}/messages", f"/api/v1/runs/{o.debate}/documents/plan.md",
        f"/api/v1/runs/{o.run}", f"/api/v1/runs/{o.run}/events",
    ]
    for path in paths:
        r = await b.http.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "4711" not in r.text and "secret" not in r.text.lower().replace("secret plans", ""), path
    # Bob's own thread cannot be made to read Alice's message through its id.
    mine = (await b.api("POST", "/api/v1/threads", json={"model": "demo/echo"})).json()["id"]
    assert (await b.http.get(f"/chat/{mine}/messages/{o.message}")).status_code == 404
    # Bob's own document cannot show Alice's passage through ?chunk= / ?at=.
    bkb = (await b.api("POST", "/api/v1/knowledge-bases", json={"name": "bob-kb"})).json()["id"]
    r = await b.api("POST", f"/api/v1/knowledge-bases/{bkb}/documents",
                    files={"files": ("b.md", b"# B\n\nbob's text", "text/markdown")})
    bdoc = r.json()["data"][0].get("document_id") or r.json()["data"][0]["id"]
    for q in (f"?chunk={o.chunk}", "?at=0", f"?chunk={o.chunk}&at=0"):
        page = await b.get(f"/knowledge/{bkb}/documents/{bdoc}{q}")
        assert page.status == 200
        assert "4711" not in page.response.text
        # Alice's document through Bob's knowledge base id: not found.
        assert (await b.http.get(f"/knowledge/{bkb}/documents/{o.doc}{q}")).status_code == 404
    # ?after= on the document list only pages Bob's own documents.
    page = await b.get(f"/knowledge/{bkb}?after=")
    assert "diary.md" not in page.response.text
    # Lists and their paging and search parameters only ever show Bob's own rows.
    for path in ("/chat?before=4000000000", "/chat?q=secret", "/chat?archived=1&before=4000000000",
                 "/debate?before=4000000000", "/compare", "/knowledge", "/me", "/me/usage"):
        page = await b.get(path)
        assert page.status == 200, path
        theirs = (o.thread, o.run, o.debate, o.kb, o.key, o.fact, "secret plan", "PIN")
        assert not [x for x in theirs if x in page.response.text], path
    # A member on admin pages: 403.
    for path in ("/admin", "/admin/users", "/admin/teams", "/admin/keys", "/admin/usage", "/admin/health",
                 "/admin/budgets"):
        assert (await b.http.get(path)).status_code == 403, path


async def test_another_members_ids_are_refused_on_every_form_and_nothing_changes(web: WebEnv) -> None:
    a = await web.member("alice@example.com")
    b = await web.member("bob@example.com")
    o = await _owned(web, a)
    attempts: list[tuple[str, dict[str, str]]] = [
        (f"/chat/{o.thread}/send", {"message": "injected"}),
        (f"/chat/{o.thread}/settings", {"model": "demo/fast"}),
        (f"/chat/{o.thread}/rename", {"title": "pwned"}),
        (f"/chat/{o.thread}/archive", {"archived": "1"}),
        (f"/chat/{o.thread}/delete", {}),
        (f"/runs/{o.run}/vote", {"answer": "A", "vote": "down"}),
        (f"/debate/{o.debate}/cancel", {}),
        (f"/knowledge/{o.kb}/delete", {}),
        (f"/knowledge/{o.kb}/documents/{o.doc}/delete", {}),
        (f"/knowledge/{o.kb}/documents/{o.doc}/review", {"decision": "approve"}),
        (f"/knowledge/{o.kb}/shares", {"who": "bob@example.com", "kind": "user", "access": "admin"}),
        (f"/knowledge/{o.kb}/shares/{o.share}/delete", {}),
        (f"/me/memory/{o.fact}", {"text": "pwned", "kind": "fact"}),
        (f"/me/memory/{o.fact}/delete", {}),
        (f"/me/sessions/{o.session}/revoke", {}),
        (f"/me/keys/{o.key}/rotate", {}),
        (f"/me/keys/{o.key}/revoke", {}),
        ("/admin/users", {"email": "evil@example.com", "password": PASSWORD, "role": "admin"}),
        (f"/admin/keys/{o.key}/revoke", {}),
        ("/admin/teams", {"name": "evil"}),
    ]
    for path, data in attempts:
        r = await _post(b, path, data)
        assert r.status_code in (403, 404), (path, r.status_code, r.text[:300])
    # Bob cannot attach Alice's knowledge base (or read it through a thread of his).
    r = await _post(b, "/chat/new", {"model": "kb/alice-kb", "kb": o.kb, "message": "what is the vault code?"})
    assert r.status_code in (400, 403, 404), r.status_code
    mine = (await b.api("POST", "/api/v1/threads", json={"model": "demo/echo"})).json()["id"]
    r = await _post(b, f"/chat/{mine}/settings", {"model": "demo/echo", "kb": o.kb})
    assert r.status_code in (400, 403, 404), r.status_code
    # Nor use her persona, nor make one of her document, nor ask her knowledge base by its name.
    persona = (await a.api("POST", "/api/v1/personas", json={"name": "me", "system_prompt": "I am Alice"})).json()
    r = await _post(b, "/chat/new", {"model": "demo/echo", "persona": persona["id"], "message": "who are you?"})
    assert r.status_code == 404, r.status_code
    r = await b.api("POST", "/api/v1/personas", json={"name": "x", "knowledge_base": o.kb, "document_id": o.doc})
    assert r.status_code == 404, r.text
    r = await b.api("POST", "/v1/chat/completions", json={"model": "kb/alice-kb", "messages": [
        {"role": "user", "content": "What is the vault code?"}]})
    assert r.status_code in (403, 404) and "4711" not in r.text, r.text
    assert (await b.api("GET", "/api/v1/threads")).json()["data"] == [
        t for t in (await b.api("GET", "/api/v1/threads")).json()["data"] if t["id"] == mine]
    # Bob's thread cannot replace Alice's message.
    r = await _post(b, f"/chat/{mine}/send", {"message": "x", "replaces": o.message})
    assert r.status_code in (400, 404), r.status_code
    # Nothing of Alice's changed: her thread, messages, run votes, KB, document, share, memory, key, session.
    t = (await a.api("GET", f"/api/v1/threads/{o.thread}")).json()
    assert (t["title"], t["archived"], t["model"]) == ("alice's secret plans", False, "demo/echo")
    assert len((await a.api("GET", f"/api/v1/threads/{o.thread}/messages")).json()["data"]) == 2
    assert (await a.get(f"/knowledge/{o.kb}/documents/{o.doc}")).status == 200
    shares = (await a.api("GET", f"/api/v1/knowledge-bases/{o.kb}/shares")).json()["data"]
    assert [s["id"] for s in shares] == [o.share]
    facts = (await a.api("GET", "/api/v1/me/memory")).json()["data"]
    assert [f["text"] for f in facts] == ["Alice's PIN is 1234"]
    keys = (await a.api("GET", "/api/v1/keys")).json()  # revoked keys are not listed
    assert [k["id"] for k in keys] == [o.key]
    assert (await a.get("/chat")).status == 200  # her session still works
    run = (await a.api("GET", f"/api/v1/runs/{o.run}")).json()
    assert not (run.get("result") or {}).get("feedback"), run.get("result", {}).get("feedback")
    users = [u.email for u in await web.app.state.users.list_users()]
    assert "evil@example.com" not in users


async def test_a_reader_of_a_shared_knowledge_base_cannot_do_what_its_owner_does(web: WebEnv) -> None:
    a = await web.member("alice@example.com")
    b = await web.member("bob@example.com")
    o = await _owned(web, a)
    r = await a.api("POST", f"/api/v1/knowledge-bases/{o.kb}/shares", json={"user": "bob@example.com",
                                                                             "access": "read"})
    assert r.status_code == 201, r.text
    page = await b.get(f"/knowledge/{o.kb}")
    assert page.status == 200
    assert not page.all("#sharing form") and not page.all("#review form")
    for path, data in [
        (f"/knowledge/{o.kb}/delete", {}),
        (f"/knowledge/{o.kb}/documents/{o.doc}/delete", {}),
        (f"/knowledge/{o.kb}/documents/{o.doc}/review", {"decision": "reject"}),
        (f"/knowledge/{o.kb}/shares", {"who": "bob@example.com", "kind": "user", "access": "admin"}),
        (f"/knowledge/{o.kb}/shares/{o.share}/delete", {}),
    ]:
        r = await _post(b, path, data)
        assert r.status_code == 403, (path, r.status_code)
    for method, path in [("DELETE", f"/api/v1/knowledge-bases/{o.kb}"),
                         ("DELETE", f"/api/v1/knowledge-bases/{o.kb}/documents/{o.doc}"),
                         ("DELETE", f"/api/v1/knowledge-bases/{o.kb}/shares/{o.share}")]:
        assert (await b.api(method, path)).status_code == 403, path
    assert (await a.get(f"/knowledge/{o.kb}/documents/{o.doc}")).status == 200
    shares = (await a.api("GET", f"/api/v1/knowledge-bases/{o.kb}/shares")).json()["data"]
    assert sorted(s["access"] for s in shares) == ["read", "read"]


# -- CSRF ----------------------------------------------------------------------------------------------


def _post_routes() -> set[str]:
    found: set[str] = set()
    for module in (auth, chat, compare, runs, agents, debate, knowledge, knowledge_docs, me, me_keys, admin,
                   admin_ops):
        for route in module.router.routes:
            if "POST" in (getattr(route, "methods", None) or set()):
                found.add(route.path)
    return found


async def test_every_form_refuses_a_missing_or_foreign_token_and_a_cross_site_origin(web: WebEnv) -> None:
    a = await web.member("alice@example.com")
    other = await web.member("mallory@example.com")
    o = await _owned(web, a)
    # Every POST route of the web app, with a real object of Alice's where it takes an id.
    routes = {
        "/login": {"email": "alice@example.com", "password": PASSWORD}, "/logout": {}, "/setup": {},
        "/chat/new": {"model": "demo/echo", "message": "hi"}, "/chat/import": {},
        "/chat/{thread_id}/send": {"message": "x"}, "/chat/{thread_id}/settings": {"model": "demo/fast"},
        "/chat/{thread_id}/rename": {"title": "pwned"}, "/chat/{thread_id}/archive": {"archived": "1"},
        "/chat/{thread_id}/delete": {}, "/compare/render": {}, "/runs": {"ensemble": "demo-council", "question": "q"},
        "/runs/{run_id}/vote": {"answer": "A", "vote": "down"}, "/runs/{run_id}/decide": {"decision": "deny"},
        "/debate": {"debate": "demo-panel", "question": "q"},
        "/debate/{run_id}/cancel": {}, "/knowledge": {"name": "evil-kb"}, "/knowledge/{kb}/delete": {},
        "/knowledge/{kb}/documents/{doc_id}/delete": {}, "/knowledge/{kb}/documents/{doc_id}/review": {},
        "/knowledge/{kb}/shares": {"who": "mallory@example.com", "access": "admin"},
        "/knowledge/{kb}/shares/{share_id}/delete": {}, "/me/memory/settings": {"enabled": "off"},
        "/me/memory/clear": {}, "/me/memory/{memory_id}": {"text": "pwned"}, "/me/memory/{memory_id}/delete": {},
        "/me/sessions/{session_id}/revoke": {}, "/me/keys": {"name": "evil"}, "/me/keys/{key_id}/rotate": {},
        "/me/keys/{key_id}/revoke": {}, "/admin/users": {"email": "evil@example.com", "password": PASSWORD},
        "/admin/users/{user_id}/tier": {}, "/admin/users/{user_id}/tools": {"tools": ""},
        "/admin/users/{user_id}/revoke": {}, "/admin/teams": {"name": "evil"},
        "/admin/keys/{key_id}/revoke": {},
    }
    assert set(routes) == _post_routes()  # a new form must be added here
    alice_id = await _user_id(web, "alice@example.com")
    ids = {"thread_id": o.thread, "run_id": o.run, "kb": o.kb, "doc_id": o.doc, "share_id": str(o.share),
           "memory_id": o.fact, "session_id": o.session, "key_id": o.key, "user_id": alice_id}
    threads_before = len((await a.api("GET", "/api/v1/threads")).json()["data"])
    for template, data in routes.items():
        path = f"/debate/{o.debate}/cancel" if template == "/debate/{run_id}/cancel" else template.format(**ids)
        b = web.admin if template.startswith("/admin") else a
        mine, foreign = b.csrf, other.csrf
        if template in ("/login", "/setup"):  # before a session: the token is the sign-in form's
            b = await web.browser()
            mine = (await b.get("/login")).form_value("csrf")
            foreign = (await (await web.browser()).get("/login")).form_value("csrf")
        tries = [("missing", {}, None), ("foreign", {}, foreign), ("cross-site", {"origin": "https://evil.example"},
                                                                     mine), ("null origin", {"origin": "null"}, mine)]
        for name, headers, token in tries:
            if template == "/compare/render":  # the page script's header, not a form field
                r = await b.http.post(path, content=b"**hi**",
                                      headers={**headers, **({"x-csrf-token": token} if token else {})})
            else:
                r = await b.http.post(path, data={**data, **({"csrf": token} if token else {})}, headers=headers)
            assert r.status_code == 403, (template, name, r.status_code, r.text[:200])
            assert "tt_session" not in r.cookies, (template, name)
    # Nothing changed: the thread, its title, its messages, the key, the session, memory, shares, the KB.
    t = (await a.api("GET", f"/api/v1/threads/{o.thread}")).json()
    assert (t["title"], t["archived"], t["model"]) == ("alice's secret plans", False, "demo/echo")
    assert len((await a.api("GET", "/api/v1/threads")).json()["data"]) == threads_before
    assert len((await a.api("GET", f"/api/v1/threads/{o.thread}/messages")).json()["data"]) == 2
    memory = (await a.api("GET", "/api/v1/me/memory")).json()
    assert memory["enabled"] and [f["text"] for f in memory["data"]] == ["Alice's PIN is 1234"]
    keys = (await a.api("GET", "/api/v1/keys")).json()  # revoked keys are not listed
    assert [(k["id"], k["name"]) for k in keys] == [(o.key, "alice-key")]
    assert len((await a.api("GET", f"/api/v1/knowledge-bases/{o.kb}/shares")).json()["data"]) == 1
    assert [k["name"] for k in (await a.api("GET", "/api/v1/knowledge-bases")).json()["data"]] == ["alice-kb"]
    assert (await a.get(f"/knowledge/{o.kb}/documents/{o.doc}")).status == 200
    users = {u.email: u for u in await web.app.state.users.list_users()}
    assert "evil@example.com" not in users and users["alice@example.com"].revoked_at is None
    assert users["alice@example.com"].allowed_tools is None
    assert (await a.get("/chat")).status == 200


async def test_the_api_with_the_cookie_needs_the_token_for_every_change(web: WebEnv) -> None:
    a = await web.member("alice@example.com")
    other = await web.member("mallory@example.com")
    o = await _owned(web, a)
    changes: list[tuple[str, str, dict[str, Any]]] = [
        ("PATCH", f"/api/v1/threads/{o.thread}", {"json": {"title": "pwned"}}),
        ("DELETE", f"/api/v1/threads/{o.thread}", {}),
        ("POST", f"/api/v1/threads/{o.thread}/messages", {"json": {"content": "x"}}),
        ("POST", f"/api/v1/knowledge-bases/{o.kb}/documents",
         {"files": {"files": ("evil.md", b"# evil", "text/markdown")}}),
        ("DELETE", f"/api/v1/knowledge-bases/{o.kb}/documents/{o.doc}", {}),
        ("PATCH", f"/api/v1/me/memory/{o.fact}", {"json": {"text": "pwned"}}),
        ("PUT", "/api/v1/me/memory/settings", {"json": {"enabled": False}}),
        ("DELETE", f"/api/v1/keys/{o.key}", {}),
        ("POST", "/v1/chat/completions", {"json": {"model": "demo/echo", "messages": [{"role": "user",
                                                                                      "content": "x"}]}}),
    ]
    for method, path, kw in changes:
        for name, headers in [("missing", {"x-csrf-token": ""}), ("foreign", {"x-csrf-token": other.csrf}),
                              ("cross-site", {"origin": "https://evil.example"})]:
            r = await a.api(method, path, headers=headers, **kw)
            assert r.status_code == 403, (method, path, name, r.status_code, r.text[:200])
    t = (await a.api("GET", f"/api/v1/threads/{o.thread}")).json()
    assert t["title"] == "alice's secret plans"
    assert len((await a.api("GET", f"/api/v1/threads/{o.thread}/messages")).json()["data"]) == 2
    docs = (await a.api("GET", f"/api/v1/knowledge-bases/{o.kb}/documents")).json()["data"]
    assert [d["source"] for d in docs] == ["diary.md"]
    memory = (await a.api("GET", "/api/v1/me/memory")).json()
    assert memory["enabled"] and memory["data"][0]["text"] == "Alice's PIN is 1234"


# -- redirects, headers, secrets ------------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "//evil.example/x", "///evil.example", "/\\evil.example", "\\\\evil.example", "https://evil.example",
    "javascript:alert(1)", "/\t/evil.example", "/\r\nSet-Cookie: x=1", "%2F%2Fevil.example", " //evil.example",
    "/%0d%0aSet-Cookie:x=1", "/\u3000/evil.example",
])
async def test_sign_in_never_sends_the_browser_off_site(web: WebEnv, target: str) -> None:
    b = await web.browser()
    page = await b.get("/login", params={"next": target})
    r = await b.http.post("/login", data={"csrf": page.form_value("csrf"), "email": ADMIN_EMAIL,
                                          "password": PASSWORD, "next": target})
    assert r.status_code == 303
    for location in (r.headers["location"], (await b.http.get("/login", params={"next": target})).headers["location"]):
        assert location.startswith("/") and location[1:2] not in ("/", "\\"), location
        assert "\r" not in location and "\n" not in location
    assert "x" not in {c.name for c in b.http.cookies.jar}


async def test_download_names_are_ours_whatever_the_title(web: WebEnv) -> None:
    b = web.admin
    title = 'a"; filename*=UTF-8\'\'evil.exe\r\nX-Evil: 1 ünï'
    r = await b.api("POST", "/api/v1/threads", json={"model": "demo/echo", "title": title})
    thread = r.json()["id"]
    for fmt, ext in (("json", "json"), ("markdown", "md")):
        r = await b.http.get(f"/api/v1/threads/{thread}/export?format={fmt}")
        assert r.status_code == 200
        assert r.headers["content-disposition"] == f'attachment; filename="{thread}.{ext}"'
        assert "x-evil" not in r.headers
    r = await b.http.get("/api/v1/runs/run_x/documents/..%2F..%2Fetc%2Fpasswd")
    assert r.status_code == 404


async def test_the_key_secret_page_is_never_cached_and_the_secret_never_logged(
        web: WebEnv, caplog: pytest.LogCaptureFixture) -> None:
    b = await web.member("alice@example.com")
    caplog.set_level(logging.DEBUG)
    me_page = await b.get("/me")
    r = await _post(b, "/me/keys", {"name": "laptop"}, csrf=me_page.csrf)
    assert r.status_code == 201
    secret = Page(r).one("#secret").attributes.get("value") or Page(r).one("#secret").text(strip=True)
    assert secret.startswith("sk-") or len(secret) > 20
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "same-origin"
    key_id = next(k["id"] for k in (await b.api("GET", "/api/v1/keys")).json())
    r2 = await _post(b, f"/me/keys/{key_id}/rotate", csrf=me_page.csrf)
    assert r2.status_code == 200 and r2.headers["cache-control"] == "no-store"
    rotated = Page(r2).one("#secret").attributes.get("value") or Page(r2).one("#secret").text(strip=True)
    assert secret not in (await b.get("/me")).response.text
    assert rotated not in (await b.get("/me")).response.text
    logged = "\n".join(f"{rec.getMessage()} {rec.args!r} {rec.__dict__!r}" for rec in caplog.records)
    assert secret not in logged and rotated not in logged
    assert secret[:12] not in logged


async def test_a_cookie_set_before_sign_in_is_replaced_and_worthless(web: WebEnv) -> None:
    attacker = await web.member("mallory@example.com")
    planted_valid = attacker.http.cookies.get("tt_session")
    assert planted_valid
    for planted in ("attacker-chosen-value", planted_valid):
        victim = await web.browser()
        victim.http.cookies.set("tt_session", planted)
        page = Page(await victim.http.get("/login", follow_redirects=False))
        if page.status == 303:  # the planted session is a real one: the form is still reachable by posting
            page = Page(await httpx.AsyncClient(base_url=web.url).get("/login"))
            victim.http.cookies.set("tt_login_csrf", page.response.cookies["tt_login_csrf"])
        r = await victim.http.post("/login", data={"csrf": page.form_value("csrf"), "email": ADMIN_EMAIL,
                                                   "password": PASSWORD, "next": "/chat"})
        assert r.status_code == 303
        new = r.cookies.get("tt_session")
        assert new and new != planted
        # The planted value never became the victim's session.
        async with httpx.AsyncClient(base_url=web.url) as probe:
            probe.cookies.set("tt_session", planted)
            r = await probe.get("/admin")
            assert r.status_code in (303, 403)


async def test_sign_out_ends_the_session_for_the_api_too(web: WebEnv) -> None:
    b = await web.member("alice@example.com")
    cookie = b.http.cookies.get("tt_session")
    chat_page = await b.get("/chat")
    r = await b.http.post("/logout", data={"csrf": chat_page.csrf})
    assert r.status_code == 303
    async with httpx.AsyncClient(base_url=web.url) as old:
        old.cookies.set("tt_session", cookie or "")
        assert (await old.get("/chat")).status_code == 303
        assert (await old.get("/api/v1/threads")).status_code == 401
        assert (await old.get("/v1/models", headers={"authorization": f"Bearer {cookie}"})).status_code == 401


async def test_too_many_wrong_passwords_is_a_429_page_with_retry_after(web: WebEnv) -> None:
    b = await web.browser()
    statuses = []
    for _ in range(14):
        page = await b.get("/login")
        r = await b.http.post("/login", data={"csrf": page.form_value("csrf"), "email": ADMIN_EMAIL,
                                              "password": "wrong"})
        statuses.append(r.status_code)
    assert statuses[0] == 401 and statuses[-1] == 429, statuses
    assert 500 not in statuses
    page = Page(r)
    assert r.headers["content-type"].startswith("text/html")
    assert "Too many" in page.one("main").text()
    assert int(r.headers["retry-after"]) > 0
    # Even the right password waits now.
    page = await b.get("/login")
    r = await b.http.post("/login", data={"csrf": page.form_value("csrf"), "email": ADMIN_EMAIL,
                                          "password": PASSWORD})
    assert r.status_code == 429 and "tt_session" not in r.cookies


# -- active content ------------------------------------------------------------------------------------


async def test_hostile_names_are_text_on_every_page_and_chart(web: WebEnv) -> None:
    b = await web.member("alice@example.com")
    r = await b.api("POST", "/api/v1/keys", json={"name": HOSTILE[:60]})
    assert r.status_code == 201, r.text
    secret = r.json()["key"]
    async with httpx.AsyncClient(base_url=web.url) as api:
        r = await api.post("/v1/chat/completions", headers={"authorization": f"Bearer {secret}"},
                           json={"model": "demo/echo", "messages": [{"role": "user", "content": HOSTILE}]})
        assert r.status_code == 200, r.text
    r = await b.api("POST", "/api/v1/threads", json={"model": "demo/echo", "title": HOSTILE})
    thread = r.json()["id"]
    await b.api("POST", f"/api/v1/threads/{thread}/messages", json={"content": HOSTILE})
    kb = (await b.api("POST", "/api/v1/knowledge-bases", json={"name": "hostile", "description": HOSTILE})).json()
    await b.api("POST", f"/api/v1/knowledge-bases/{kb['id']}/documents",
                files={"files": (HOSTILE[:40] + ".md", HOSTILE.encode(), "text/markdown")})
    for path in ("/chat", f"/chat/{thread}", "/knowledge", f"/knowledge/{kb['id']}", "/me", "/me/usage"):
        page = await b.get(path)
        assert page.status == 200, path
        _no_active_content(page)
    chart = await web.admin.get("/admin/usage?by=key&window=24h")
    assert any(HOSTILE[:60] in t for t in chart.texts("svg text, svg title, table td"))  # shown, as text
    for path in ("/admin/usage?by=key&window=24h", "/admin/usage?by=user", "/admin/keys", "/admin"):
        page = await web.admin.get(path)
        assert page.status == 200, path
        _no_active_content(page)
        assert not page.all("svg script") and not page.all("svg [onload]")
    r = await b.http.post("/compare/render", content=HOSTILE.encode(), headers={"x-csrf-token": b.csrf})
    assert r.status_code == 200
    frag = Page(r)
    assert not frag.all("script") and not frag.all("img") and not frag.all("svg")


# -- error pages ---------------------------------------------------------------------------------------


async def test_conflicts_from_the_services_keep_their_status_on_the_page(web: WebEnv) -> None:
    b = web.admin
    page = await b.get("/admin/teams")
    r = await _post(b, "/admin/teams", {"name": "red"}, csrf=page.csrf)
    assert r.status_code == 303
    r = await _post(b, "/admin/teams", {"name": "red"}, csrf=page.csrf)
    assert r.status_code == 409, r.status_code
    assert Page(r).one('[role="alert"]').text(strip=True)
    r = await _post(b, "/knowledge", {"name": "same"})
    assert r.status_code == 303
    r = await _post(b, "/knowledge", {"name": "same"})
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("text/html")


async def test_no_page_names_an_arenas_models_before_the_vote(web: WebEnv) -> None:
    b = await web.member("alice@example.com")
    members = web.app.state.deliberation.ensembles["demo-council"].members
    assert members
    page = await b.get("/arena")
    r = await b.http.post("/runs", data={"csrf": page.csrf, "ensemble": "ensemble/demo-council",
                                         "question": "Which database?", "arena": "1"})
    assert r.status_code == 303
    run = r.headers["location"].removeprefix("/runs/")
    await _finish(b, run)
    texts: dict[str, str] = {}
    for path in (f"/runs/{run}", f"/runs/{run}/fragment", f"/runs/{run}?voted=A", "/me/usage", "/me",
                 "/leaderboard", "/debate"):
        r = await b.http.get(path)
        assert r.status_code == 200, path
        texts[path] = r.text
    texts["/compare#recent-runs"] = (await b.get("/compare")).one("#recent-runs").html or ""
    for path, text in texts.items():
        assert not [m for m in members if m in text], path
    assert (await b.http.get(f"/debate/{run}")).status_code == 404
    assert (await b.http.get(f"/debate/{run}/timeline")).status_code == 404


async def test_an_imported_thread_cannot_bring_active_content_or_links_off_the_knowledge_pages(web: WebEnv) -> None:
    b = await web.member("alice@example.com")
    a_kb = (await web.admin.api("POST", "/api/v1/knowledge-bases", json={"name": "admins"})).json()["id"]
    citation = {"index": 1, "title": HOSTILE, "source": "javascript:alert(1)", "snippet": HOSTILE,
                "context": HOSTILE, "kb_name": HOSTILE, "kb_id": "../../../logout?x=", "document_id": "//evil.example",
                "position": 0}
    export = {"format": "thinktank.thread", "version": 1,
              "thread": {"title": HOSTILE, "model": "demo/echo", "knowledge_bases": [a_kb], "persona_id": "per_x"},
              "messages": [{"role": "user", "content": HOSTILE},
                           {"role": "assistant", "content": f"See [1]. {HOSTILE} [x](javascript:alert(4))",
                            "context": {"citations": [citation]}}]}
    page = await b.get("/chat")
    r = await b.http.post("/chat/import", data={"csrf": page.csrf},
                          files={"file": ("t.json", json.dumps(export).encode(), "application/json")})
    assert r.status_code == 303, r.text
    thread_id = r.headers["location"].removeprefix("/chat/")
    assert (await b.api("GET", f"/api/v1/threads/{thread_id}")).json()["knowledge_bases"] == []  # not hers
    page = await b.get(r.headers["location"])
    assert page.status == 200
    _no_active_content(page)
    for a in page.all("main a[href]"):
        href = a.attributes.get("href") or ""
        resolved = httpx.URL(web.url + f"/chat/{thread_id}").join(href)
        assert resolved.host == httpx.URL(web.url).host, href
        if "open-passage" in (a.attributes.get("class") or ""):
            assert resolved.path.startswith("/knowledge/"), href


async def test_input_echoed_on_error_pages_is_text(web: WebEnv) -> None:
    b = await web.member("alice@example.com")
    thread = (await b.api("POST", "/api/v1/threads", json={"model": "demo/echo"})).json()["id"]
    hostile = httpx.URL("/x").copy_with(path="/" + HOSTILE).raw_path.decode()[1:]
    for path, status in [(f"/chat/{hostile}", 404), (f"/chat/{thread}/messages/{hostile}", 404),
                         (f"/knowledge/{hostile}", 404), (f"/runs/{hostile}", 404), (f"/debate/{hostile}", 404),
                         (f"/chat?before={hostile}", 400)]:
        page = await b.get(path)
        assert page.status == status, (path, page.status)
        assert page.response.headers["content-type"].startswith("text/html"), path
        _no_active_content(page)
        assert not page.all("main img") and not page.all("main svg"), path


async def test_too_many_wrong_admin_keys_on_the_first_run_page_is_a_429(fresh: tuple[str, Browser]) -> None:
    _url, b = fresh
    statuses = []
    for _ in range(14):
        page = await b.get("/setup")
        r = await b.http.post("/setup", data={"csrf": page.form_value("csrf"), "admin_key": "sk-guess",
                                              "email": "a@example.com", "password": PASSWORD})
        statuses.append(r.status_code)
    assert statuses[0] == 400 and statuses[-1] == 429, statuses
    assert int(r.headers["retry-after"]) > 0
    assert "Too many" in Page(r).one('[role="alert"]').text()


async def test_a_rate_limited_member_gets_429_pages_with_retry_after(tmp_path: Path,
                                                                    local_embedder: LocalEmbedder) -> None:
    config = demo_config()
    config = config.model_copy(update={"tiers": {"tiny": TierConfig(requests_per_minute=1)}})
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN_KEY, admin_email=ADMIN_EMAIL,
                        admin_password=PASSWORD)
    app = create_app(settings, config, local_embedder=local_embedder, quiet=True)
    async with serving(app) as url:
        env = WebEnv(url, app, Browser(url))
        try:
            b = await env.member("slow@example.com", tier="tiny")
            page = await b.get("/debate")
            form = {"csrf": page.csrf, "debate": "demo-panel", "question": "q?", "rounds": "1"}
            first = await b.http.post("/debate", data=form)
            assert first.status_code == 303, first.text
            second = await b.http.post("/debate", data=form)
            assert second.status_code == 429
            assert int(second.headers["retry-after"]) > 0
            assert Page(second).one('[role="alert"]').text(strip=True)
            chat_page = await b.get("/chat")
            r = await b.http.post("/chat/new", data={"csrf": chat_page.csrf, "model": "demo/echo", "message": "hi"})
            assert r.status_code == 429
            assert int(r.headers["retry-after"]) > 0
            assert r.headers["content-type"].startswith("text/html")
        finally:
            for br in [env.admin, *env._browsers]:
                await br.close()


async def test_a_hostile_tag_is_text_in_the_leaderboard_and_its_chart(web: WebEnv) -> None:
    b = await web.member("alice@example.com")
    tag = '"><svg/onload=alert(1)></title><script>x</script>'
    page = await b.get("/arena")
    r = await b.http.post("/runs", data={"csrf": page.csrf, "ensemble": "ensemble/demo-council",
                                         "question": "Which database?", "arena": "1", "tags": tag})
    assert r.status_code == 303, r.text
    run = r.headers["location"].removeprefix("/runs/")
    await _finish(b, run)
    r = await _post(b, f"/runs/{run}/vote", {"winner": "A"}, csrf=page.csrf)
    assert r.status_code == 303, r.text
    board = await b.get("/leaderboard", params={"tag": tag})
    assert board.status == 200
    assert board.all("main svg"), "the chart is drawn for the tag"
    assert any(tag in t for t in board.texts("main svg title, main svg text, main h2, main p, main caption"))
    _no_active_content(board)
    assert not board.all("main svg svg") and not board.all("main script")


async def test_trailing_slash_redirects_stay_on_this_site(web: WebEnv) -> None:
    """Starlette's slash redirect is absolute, built from the Host header: a browser always sends ours, so a
    link can never make it point elsewhere (a forged Host is the sender's own problem; pages are no-store)."""
    ours = httpx.URL(web.url)
    for path in ("/chat/", "/knowledge/", "/me/", "//evil.example/chat/", "/chat/%2F%2Fevil.example/",
                 "/\\evil.example/chat/"):
        r = await web.admin.http.get(path)
        if r.is_redirect:
            target = ours.join(r.headers["location"])
            assert (target.host, target.port) == (ours.host, ours.port), (path, r.headers["location"])
