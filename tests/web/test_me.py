"""The Me page: memory (edit, delete, delete all, switch off/on), sessions (revoke, the current one signs me out),
API keys (the secret shown once, rotate, revoke), usage and spend; each user sees only their own."""

from __future__ import annotations

import httpx

from thinktank.accounts.secrets import KEY_PREFIX
from thinktank.conversations.memory import Candidate

from .conftest import ADMIN_EMAIL, Browser, Page, WebEnv

XSS = '<script>alert(1)</script><img src=x onerror="alert(2)">'


async def _remember(web: WebEnv, user_id: str, *texts: str, kind: str = "fact") -> None:
    memory = web.app.state.conversations.memory
    await memory.remember(user_id, [Candidate(kind, t) for t in texts], source_message_id=None,
                          source_thread_id=None)


async def _user_id(b: Browser) -> str:
    r = await b.api("GET", "/api/v1/me")
    assert r.status_code == 200, r.text
    return str(r.json()["user_id"])


async def _post(b: Browser, path: str, **data: str) -> httpx.Response:
    return await b.http.post(path, data={"csrf": b.csrf, **data})


async def test_me_page_has_every_section_and_marks_the_current_session(web: WebEnv) -> None:
    page = await web.admin.get("/me")
    assert page.status == 200
    assert page.one("h1").text() == "Me"
    assert page.one('nav a[aria-current="page"]').text() == "Me"
    assert [page.one(f"#{s} h2").text(strip=True) for s in ("memory", "sessions", "keys")] == [
        "What thinktank learned about me", "My sessions", "My API keys"]
    assert page.one('a[href="/me/usage"]').text() == "Usage and spend"
    assert page.one("#no-memories")
    assert len(page.all("table.sessions tbody tr")) == 1
    assert page.one("table.sessions tr.current .badge").text() == "this session"
    assert page.one('script[type="module"][src^="/static/js/me.js"]')
    assert page.response.headers["cache-control"] == "no-store"


async def test_memory_is_listed_escaped_edited_deleted_and_cleared(web: WebEnv) -> None:
    alice = await web.member("alice@example.com")
    uid = await _user_id(alice)
    await _remember(web, uid, "Alice likes " + XSS, "Alice lives in Lyon", "Alice writes Rust")
    page = await alice.get("/me")
    texts = page.texts("#memory .fact-text")
    assert texts == ["Alice likes " + XSS, "Alice lives in Lyon", "Alice writes Rust"]
    assert not page.all("#memory script") and not page.all("#memory img")  # shown as text, not markup
    facts = (await alice.api("GET", "/api/v1/me/memory")).json()["data"]
    lyon = next(f for f in facts if "Lyon" in f["text"])
    rust = next(f for f in facts if "Rust" in f["text"])

    r = await _post(alice, f"/me/memory/{lyon['id']}", text="Alice lives in Paris", kind="preference")
    assert (r.status_code, r.headers["location"]) == (303, "/me?done=memory_saved#memory")
    page = await alice.get("/me?done=memory_saved")
    assert "Alice lives in Paris" in page.texts("#memory .fact-text")
    assert page.one(f"#fact-{lyon['id']} .badge").text() == "preference"
    assert page.one('[role="status"]').text() == "The memory was saved."

    r = await _post(alice, f"/me/memory/{lyon['id']}", text="   ")  # no words: refused, shown on the page
    assert r.status_code == 400
    assert "needs some words" in Page(r).one('[role="alert"]').text()

    r = await _post(alice, f"/me/memory/{rust['id']}/delete")
    assert r.status_code == 303
    assert "Alice writes Rust" not in (await alice.get("/me")).texts("#memory .fact-text")

    r = await _post(alice, "/me/memory/clear")
    assert r.status_code == 303
    assert (await alice.api("GET", "/api/v1/me/memory")).json()["data"] == []
    assert (await alice.get("/me")).one("#no-memories")


async def test_memory_switch_off_and_on(web: WebEnv) -> None:
    alice = await web.member("alice@example.com")
    page = await alice.get("/me")
    assert page.one('[data-testid="memory-off"]')
    r = await _post(alice, "/me/memory/settings", enabled="off")
    assert r.status_code == 303
    assert (await alice.api("GET", "/api/v1/me/memory/settings")).json() == {"enabled": False}
    page = await alice.get("/me")
    assert page.one('[data-testid="memory-on"]') and not page.all('[data-testid="memory-off"]')
    await _post(alice, "/me/memory/settings", enabled="on")
    assert (await alice.api("GET", "/api/v1/me/memory/settings")).json() == {"enabled": True}


async def test_a_member_never_sees_or_changes_anothers_memory_sessions_or_keys(web: WebEnv) -> None:
    alice = await web.member("alice@example.com")
    bob = await web.member("bob@example.com")
    await _remember(web, await _user_id(alice), "Alice has a secret garden")
    fact = (await alice.api("GET", "/api/v1/me/memory")).json()["data"][0]
    key = (await alice.api("POST", "/api/v1/keys", json={"name": "alice-key"})).json()
    alice_sessions = (await alice.api("GET", "/api/v1/sessions")).json()

    page = await bob.get("/me")
    assert page.status == 200
    assert "secret garden" not in page.one("main").text()
    assert "alice-key" not in page.one("main").text() and not page.all("table.keys")
    assert len(page.all("table.sessions tbody tr")) == 1
    for path in (f"/me/memory/{fact['id']}", f"/me/memory/{fact['id']}/delete", f"/me/keys/{key['id']}/rotate",
                 f"/me/keys/{key['id']}/revoke", f"/me/sessions/{alice_sessions[0]['id']}/revoke"):
        r = await _post(bob, path, text="mine now")
        assert r.status_code == 404, path
    # ... and nothing changed
    assert (await alice.api("GET", f"/api/v1/me/memory/{fact['id']}")).json()["text"] == "Alice has a secret garden"
    assert (await alice.api("GET", f"/api/v1/keys/{key['id']}")).json()["revoked_at"] is None
    assert (await alice.get("/me")).status == 200  # still signed in
    # An admin's own Me page shows only their own keys; another's key is not theirs to rotate here.
    admin_page = await web.admin.get("/me")
    assert "alice-key" not in admin_page.one("main").text()
    assert (await _post(web.admin, f"/me/keys/{key['id']}/rotate")).status_code == 404


async def test_a_created_key_is_shown_once_and_works(web: WebEnv) -> None:
    alice = await web.member("alice@example.com")
    r = await _post(alice, "/me/keys", name="scripts " + XSS, budget_usd="5", budget_period="day")
    assert r.status_code == 201
    reveal = Page(r)
    secret = reveal.one("input#secret").attributes["value"] or ""
    assert secret.startswith(KEY_PREFIX) and len(secret) > 30
    assert r.text.count(secret) == 1
    assert reveal.one("h2").text() == "scripts " + XSS and not reveal.all("main script")
    assert r.headers["cache-control"] == "no-store"
    # The key works ...
    async with httpx.AsyncClient(base_url=web.url) as c:
        ok = await c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                          json={"model": "demo/echo", "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status_code == 200, ok.text
    # ... and its secret is never on a page again.
    page = await alice.get("/me")
    assert secret not in page.response.text
    assert page.texts("table.keys tbody .key-name") == ["scripts " + XSS]
    assert secret[:8] in page.one("table.keys tbody code").text()  # its prefix identifies it
    admin_keys = await web.admin.get("/admin/keys")
    assert secret not in admin_keys.response.text
    assert "scripts " + XSS in admin_keys.texts("table.keys .key-name")


async def test_rotate_shows_the_new_secret_once_and_the_old_one_stops(web: WebEnv) -> None:
    alice = await web.member("alice@example.com")
    first = Page(await _post(alice, "/me/keys", name="k")).one("input#secret").attributes["value"] or ""
    key_id = (await alice.api("GET", "/api/v1/keys")).json()[0]["id"]
    r = await _post(alice, f"/me/keys/{key_id}/rotate")
    assert r.status_code == 200
    second = Page(r).one("input#secret").attributes["value"] or ""
    assert second and second != first and r.text.count(second) == 1 and first not in r.text
    async with httpx.AsyncClient(base_url=web.url) as c:
        old = await c.get("/v1/models", headers={"Authorization": f"Bearer {first}"})
        new = await c.get("/v1/models", headers={"Authorization": f"Bearer {second}"})
    assert (old.status_code, new.status_code) == (401, 200)
    assert second not in (await alice.get("/me")).response.text
    r = await _post(alice, f"/me/keys/{key_id}/revoke")
    assert (r.status_code, r.headers["location"]) == (303, "/me?done=key_revoked#keys")
    async with httpx.AsyncClient(base_url=web.url) as c:
        assert (await c.get("/v1/models", headers={"Authorization": f"Bearer {second}"})).status_code == 401
    assert (await alice.get("/me")).one("#no-keys")


async def test_bad_key_form_is_an_error_on_the_page(web: WebEnv) -> None:
    alice = await web.member("alice@example.com")
    r = await _post(alice, "/me/keys", name="k", budget_usd="lots")
    assert r.status_code == 400
    assert "budget_usd" in Page(r).one('[role="alert"]').text()
    r = await _post(alice, "/me/keys", name="k", budget_usd="-1")
    assert r.status_code == 400
    assert (await alice.api("GET", "/api/v1/keys")).json() == []


async def test_revoking_another_session_keeps_me_in_and_revoking_mine_signs_me_out(web: WebEnv) -> None:
    laptop = await web.member("alice@example.com")
    phone = await web.browser()
    assert (await phone.sign_in("alice@example.com")).status_code == 303
    page = await laptop.get("/me")
    rows = page.all("table.sessions tbody tr")
    assert len(rows) == 2
    other = next(r for r in rows if "current" not in (r.attributes.get("class") or ""))
    other_id = (other.attributes.get("id") or "").removeprefix("session-")
    r = await _post(laptop, f"/me/sessions/{other_id}/revoke")
    assert (r.status_code, r.headers["location"]) == (303, "/me?done=session_revoked#sessions")
    assert (await phone.http.get("/me")).status_code == 303  # the phone is signed out
    assert (await laptop.get("/me")).status == 200
    current = (await laptop.get("/me")).one("table.sessions tr.current").attributes.get("id") or ""
    r = await _post(laptop, f"/me/sessions/{current.removeprefix('session-')}/revoke")
    assert (r.status_code, r.headers["location"]) == (303, "/login")
    assert (await laptop.http.get("/me")).headers["location"].startswith("/login")


async def test_me_forms_refuse_a_post_without_the_csrf_token(web: WebEnv) -> None:
    alice = await web.member("alice@example.com")
    await _remember(web, await _user_id(alice), "Alice keeps bees")
    for path in ("/me/keys", "/me/memory/clear", "/me/memory/settings"):
        r = await alice.http.post(path, data={"name": "k", "enabled": "off"})
        assert r.status_code == 403, path
        r = await alice.http.post(path, data={"csrf": "forged", "name": "k", "enabled": "off"})
        assert r.status_code == 403, path
    r = await alice.http.post("/me/keys", data={"csrf": alice.csrf, "name": "k"},
                              headers={"origin": "https://evil.example"})
    assert r.status_code == 403
    assert (await alice.api("GET", "/api/v1/keys")).json() == []
    memory = (await alice.api("GET", "/api/v1/me/memory")).json()
    assert memory["enabled"] is True and len(memory["data"]) == 1


async def test_usage_page_shows_my_requests_not_others(web: WebEnv) -> None:
    alice = await web.member("alice@example.com")
    bob = await web.member("bob@example.com")
    for b, n in ((alice, 3), (bob, 1)):
        for _ in range(n):
            r = await b.api("POST", "/v1/chat/completions",
                            json={"model": "demo/echo", "messages": [{"role": "user", "content": "hello"}]})
            assert r.status_code == 200, r.text
    page = await alice.get("/me/usage")
    assert page.status == 200
    assert page.one('nav[aria-label="Main"] a[aria-current="page"]').text() == "Me"
    assert page.one("#my-requests").text() == "3"
    assert page.texts("table.usage-by-model tbody td")[:2] == ["demo/echo", "3"]
    assert page.one("#my-requests-chart svg desc").text().endswith("y up to 3")
    # the admin's own Me page counts only the admin's requests (none)
    admin_page = await web.admin.get("/me/usage")
    assert admin_page.one("#my-requests").text() == "0"
    assert ADMIN_EMAIL in admin_page.one(".who").text()
