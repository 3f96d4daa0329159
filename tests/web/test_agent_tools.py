"""Agent tool allowlists on the pages: the admin sets a user's (on create and per user) and sees every key's;
a member's Me page shows each key's and makes a key with a list within their own. The field is
comma-separated, ``*`` for every tool, empty for none; a bad entry is an error on the page."""

from __future__ import annotations

import httpx
from selectolax.lexbor import LexborNode as Node

from .conftest import Browser, Page, WebEnv

XSS = "<script>alert(1)</script>"


async def _post(b: Browser, path: str, **data: str) -> httpx.Response:
    return await b.http.post(path, data={"csrf": b.csrf, **data})


def _text(row: Node, selector: str) -> str:
    cell = row.css_first(selector)
    assert cell is not None, selector
    return cell.text()


async def _user(web: WebEnv, email: str) -> dict[str, object]:
    users = (await web.admin.api("GET", "/api/v1/users")).json()
    found: dict[str, object] = next(u for u in users if u["email"] == email)
    return found


async def test_the_admin_sets_a_users_tools_on_create_and_afterwards(web: WebEnv) -> None:
    page = await web.admin.get("/admin/users")
    assert page.one("#u-tools").attributes["value"] == "*"
    r = await _post(web.admin, "/admin/users", email="gil@example.com", password="long enough pass",
                    tools="git, knowledge_search")
    assert (r.status_code, r.headers["location"]) == (303, "/admin/users?done=user_created")
    gil = await _user(web, "gil@example.com")
    assert gil["tools"] == ["git", "knowledge_search"]
    r = await _post(web.admin, "/admin/users", email="hal@example.com", password="long enough pass", tools="*")
    assert (await _user(web, "hal@example.com"))["tools"] is None

    uid = str(gil["id"])
    page = await web.admin.get("/admin/users")
    assert page.one(f"#tools-{uid}").attributes["value"] == "git,knowledge_search"
    r = await _post(web.admin, f"/admin/users/{uid}/tools", tools="git.git_log,search.*")
    assert (r.status_code, r.headers["location"]) == (303, "/admin/users?done=tools_changed")
    assert (await _user(web, "gil@example.com"))["tools"] == ["git.git_log", "search.*"]
    page = await web.admin.get("/admin/users?done=tools_changed")
    assert page.one('[role="status"]').text() == "The agent tools were changed."
    assert page.one(f"#tools-{uid}").attributes["value"] == "git.git_log,search.*"
    await _post(web.admin, f"/admin/users/{uid}/tools", tools="")
    assert (await _user(web, "gil@example.com"))["tools"] == []
    await _post(web.admin, f"/admin/users/{uid}/tools", tools=" * ")
    assert (await _user(web, "gil@example.com"))["tools"] is None

    # A bad entry: 400 with the reason on the page, nothing changed, nothing echoed as markup.
    for bad, says in ((XSS, "letters, digits"), ("git.log*", "server.*"), ("x" * 300, "200 characters"),
                      (",".join(f"s{i}" for i in range(101)), "100 items")):
        r = await _post(web.admin, f"/admin/users/{uid}/tools", tools=bad)
        assert r.status_code == 400, bad
        assert says in Page(r).one('[role="alert"]').text()
        assert "<script>alert" not in r.text
        r = await _post(web.admin, "/admin/users", email="ivy@example.com", password="long enough pass", tools=bad)
        assert r.status_code == 400 and says in Page(r).one('[role="alert"]').text()
    assert (await _user(web, "gil@example.com"))["tools"] is None
    assert "ivy@example.com" not in [u["email"] for u in (await web.admin.api("GET", "/api/v1/users")).json()]


async def test_a_member_makes_a_key_within_their_tools_and_sees_each_keys(web: WebEnv) -> None:
    jo = await web.member("jo@example.com", tools=["git", "knowledge_search"])
    page = await jo.get("/me")
    assert page.one("#key-tools").attributes["value"] == "*"
    r = await _post(jo, "/me/keys", name="agents", tools="git.git_log")
    assert r.status_code == 201, r.text
    secret = Page(r).one("input#secret").attributes["value"] or ""
    me = (await jo.http.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})).json()
    assert me["tools"] == ["git.git_log"]
    assert (await _post(jo, "/me/keys", name="all of mine", tools="*")).status_code == 201
    assert (await _post(jo, "/me/keys", name="no tools", tools="")).status_code == 201
    assert (await _post(jo, "/me/keys", name="as before")).status_code == 201  # a form without the field

    page = await jo.get("/me")
    rows = {_text(row, ".key-name"): _text(row, ".tools") for row in page.all("table.keys tr[id]")}
    assert rows == {"agents": "git.git_log", "all of mine": "git, knowledge_search", "no tools": "none",
                    "as before": "git, knowledge_search"}

    r = await _post(jo, "/me/keys", name="wider", tools="git,fetch_url")
    assert r.status_code == 403
    assert "fetch_url" in Page(r).one('[role="alert"]').text()
    r = await _post(jo, "/me/keys", name="bad", tools="git log")
    assert r.status_code == 400 and "letters, digits" in Page(r).one('[role="alert"]').text()
    assert len((await jo.api("GET", "/api/v1/keys")).json()) == 4

    admin_keys = await web.admin.get("/admin/keys")
    shown = {_text(row, ".key-name"): _text(row, ".tools") for row in admin_keys.all("table.keys tr[id]")}
    assert shown["agents"] == "git.git_log" and shown["no tools"] == "none"
    open_key = (await web.admin.api("POST", "/api/v1/keys", json={"name": "admin's"})).json()
    admin_keys = await web.admin.get("/admin/keys")
    assert admin_keys.one(f"#key-{open_key['id']} .tools").text() == "all"
