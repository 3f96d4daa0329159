"""Signing in and out, the first-run page, CSRF, the session cookie and the pages' security headers."""

from __future__ import annotations

import subprocess
import sys

import httpx

from .conftest import ADMIN_EMAIL, ADMIN_KEY, PASSWORD, Browser, Page, WebEnv


def _cookie_attrs(response: httpx.Response, name: str) -> dict[str, str]:
    for raw in response.headers.get_list("set-cookie"):
        parts = [p.strip() for p in raw.split(";")]
        key, _, value = parts[0].partition("=")
        if key == name:
            attrs = {"value": value}
            for p in parts[1:]:
                k, _, v = p.partition("=")
                attrs[k.lower()] = v
            return attrs
    raise AssertionError(f"no Set-Cookie for {name}")


async def test_first_run_page_makes_the_first_admin_with_the_admin_key(fresh: tuple[str, Browser]) -> None:
    _url, b = fresh
    r = await b.http.get("/")
    assert (r.status_code, r.headers["location"]) == (303, "/login")
    r = await b.http.get("/login")
    assert (r.status_code, r.headers["location"]) == (303, "/setup")
    page = await b.get("/setup")
    assert page.status == 200
    assert "THINKTANK_ADMIN_EMAIL" in page.one("main").text()  # says how to make the first admin
    csrf = page.form_value("csrf")
    wrong = await b.http.post("/setup", data={"csrf": csrf, "admin_key": "sk-not-the-key", "email": "a@example.com",
                                              "password": PASSWORD})
    assert wrong.status_code == 400
    assert "admin key" in Page(wrong).one('[role="alert"]').text()
    csrf = Page(wrong).form_value("csrf")
    r = await b.http.post("/setup", data={"csrf": csrf, "admin_key": ADMIN_KEY, "email": "a@example.com",
                                          "password": PASSWORD})
    assert (r.status_code, r.headers["location"]) == (303, "/chat")
    chat = await b.get("/chat")
    assert chat.status == 200
    assert "Admin" in chat.texts("nav a")
    # Once an account exists, the first-run page is gone.
    r = await b.http.get("/setup")
    assert (r.status_code, r.headers["location"]) == (303, "/login")


async def test_setup_without_the_forms_cookie_is_refused(fresh: tuple[str, Browser]) -> None:
    _url, b = fresh
    async with httpx.AsyncClient(base_url=b.url) as bare:  # no cookie from GET /setup
        r = await bare.post("/setup", data={"csrf": "x", "admin_key": ADMIN_KEY, "email": "a@example.com",
                                            "password": PASSWORD})
    assert r.status_code == 403
    r = await b.http.get("/login")
    assert r.headers["location"] == "/setup"  # nothing was created


async def test_sign_in_sets_an_httponly_lax_cookie_and_shows_the_navigation(web: WebEnv) -> None:
    b = await web.browser()
    page = await b.get("/login")
    r = await b.http.post("/login", data={"csrf": page.form_value("csrf"), "email": ADMIN_EMAIL,
                                          "password": PASSWORD, "next": "/knowledge"})
    assert (r.status_code, r.headers["location"]) == (303, "/knowledge")
    cookie = _cookie_attrs(r, "tt_session")
    assert "httponly" in cookie
    assert cookie["samesite"].lower() == "lax"
    assert "secure" not in cookie  # plain HTTP on loopback; behind HTTPS it is Secure
    chat = await b.get("/chat")
    assert chat.texts("nav a") == ["Chat", "Compare", "Arena", "Leaderboard", "Debate", "Evaluations", "Knowledge",
                                   "Me", "Admin"]
    assert chat.one('nav a[aria-current="page"]').text() == "Chat"
    assert chat.one("form.signout button").text(strip=True) == "Sign out"


async def test_wrong_password_is_an_error_on_the_page(web: WebEnv) -> None:
    b = await web.browser()
    page = await b.get("/login")
    r = await b.http.post("/login", data={"csrf": page.form_value("csrf"), "email": ADMIN_EMAIL,
                                          "password": "not it at all"})
    assert r.status_code == 401
    again = Page(r)
    assert "Wrong email or password" in again.one('[role="alert"]').text()
    assert again.form_value("email") == ADMIN_EMAIL  # kept
    assert "tt_session" not in r.headers.get("set-cookie", "")


async def test_next_only_goes_to_this_site(web: WebEnv) -> None:
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        b = await web.browser()
        page = await b.get("/login", params={"next": evil})
        assert page.form_value("next") == "/chat"
        r = await b.http.post("/login", data={"csrf": page.form_value("csrf"), "email": ADMIN_EMAIL,
                                              "password": PASSWORD, "next": evil})
        assert r.headers["location"] == "/chat", evil


async def test_a_page_needs_a_session_and_says_where_it_was(web: WebEnv) -> None:
    b = await web.browser()
    r = await b.http.get("/knowledge", params={"q": "a b"})
    assert r.status_code == 303
    target = httpx.URL(r.headers["location"])
    assert target.path == "/login"
    assert target.params["next"] == "/knowledge?" + r.request.url.query.decode()
    # An API key in the cookie is not a session: the pages are for people who signed in.
    async with httpx.AsyncClient(base_url=web.url, cookies={"tt_session": ADMIN_KEY}) as keyed:
        r = await keyed.get("/chat")
    assert r.status_code == 303


async def test_login_csrf_and_cross_site_posts_are_refused(web: WebEnv) -> None:
    b = await web.browser()
    page = await b.get("/login")
    csrf = page.form_value("csrf")
    r = await b.http.post("/login", data={"csrf": "forged", "email": ADMIN_EMAIL, "password": PASSWORD})
    assert r.status_code == 403
    r = await b.http.post("/login", data={"csrf": csrf, "email": ADMIN_EMAIL, "password": PASSWORD},
                          headers={"origin": "https://evil.example"})
    assert r.status_code == 403
    assert "tt_session" not in r.headers.get("set-cookie", "")


async def test_cookie_api_calls_need_the_csrf_header_for_changes(web: WebEnv) -> None:
    b = web.admin
    me = await b.api("GET", "/api/v1/me")  # reading needs only the cookie (EventSource cannot send headers)
    assert me.status_code == 200
    assert me.json()["user"]["email"] == ADMIN_EMAIL
    body = {"model": "demo/echo", "messages": [{"role": "user", "content": "hi"}]}
    r = await b.http.post("/v1/chat/completions", json=body)  # a cross-site form could send this
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "csrf_failed"
    r = await b.http.post("/api/v1/threads", json={"model": "demo/echo"})
    assert r.status_code == 403
    r = await b.api("POST", "/v1/chat/completions", json=body, headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    r = await b.api("POST", "/v1/chat/completions", json=body, headers={"origin": web.url})
    assert r.status_code == 200, r.text
    r = await b.api("POST", "/api/v1/threads", json={"model": "demo/echo"})
    assert r.status_code == 201, r.text
    # Another session's token is not this one's.
    other = await web.member("m@example.com")
    r = await b.api("POST", "/api/v1/threads", json={"model": "demo/echo"}, headers={"x-csrf-token": other.csrf})
    assert r.status_code == 403


async def test_logout_ends_the_session_on_the_server(web: WebEnv) -> None:
    b = await web.member("leaver@example.com")
    token = b.http.cookies.get("tt_session")
    assert token
    r = await b.http.post("/logout", data={"csrf": "wrong"})
    assert r.status_code == 403  # a cross-site form cannot sign anyone out
    r = await b.http.post("/logout", data={"csrf": b.csrf})
    assert (r.status_code, r.headers["location"]) == (303, "/login")
    assert 'tt_session=""' in r.headers["set-cookie"]
    # The old cookie, replayed, is dead: pages send to the sign-in page, the API says 401.
    async with httpx.AsyncClient(base_url=web.url, cookies={"tt_session": token}) as replay:
        r = await replay.get("/chat")
        assert (r.status_code, r.headers["location"]) == (303, "/login?next=%2Fchat")
        assert (await replay.get("/api/v1/me")).status_code == 401


async def test_a_member_never_reaches_an_admin_page(web: WebEnv) -> None:
    b = await web.member("member@example.com")
    page = await b.get("/chat")
    assert "Admin" not in page.texts("nav a")
    denied = await b.get("/admin")
    assert denied.status == 403
    assert denied.one("h1").text() == "Error 403"


async def test_security_headers_on_pages_and_files(web: WebEnv) -> None:
    for path in ("/login", "/chat", "/static/app.css", "/static/js/app.js", "/chat/no/such/page"):
        r = await web.admin.http.get(path)
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    page = await web.admin.get("/chat")
    assert page.response.headers["cache-control"] == "no-store"
    assert not page.all("script:not([src])")  # no inline script at all
    assert not page.all("[style]")
    assert all((s.attributes.get("src") or "").startswith("/static/") for s in page.all("script"))
    assert all((link.attributes.get("href") or "").startswith("/static/") for link in page.all("link"))


async def test_unknown_pages_are_html_404s_and_the_api_keeps_json(web: WebEnv) -> None:
    page = await web.admin.get("/chat/no/such/thing/here")
    assert page.status == 404
    assert page.one("h1").text() == "Error 404"
    r = await web.admin.http.get("/api/v1/no-such-route")
    assert r.status_code == 404
    assert r.json()["error"]
    r = await web.admin.http.get("/v1/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200


def test_the_api_alone_never_imports_the_web_app() -> None:
    code = (
        "import sys\n"
        "from thinktank.api.app import create_app\n"
        "from thinktank.config import Settings\n"
        "import tempfile\n"
        "create_app(Settings(data_dir=tempfile.mkdtemp(), admin_key='k' * 24), quiet=True)\n"
        "loaded = [m for m in ('thinktank.web.app', 'jinja2', 'markdown_it', 'nh3') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


async def test_the_rendered_styles_are_served_as_a_file(web: WebEnv) -> None:
    r = await web.admin.http.get("/static/render.css")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/css")
    assert ".hl" in r.text  # highlighted code
    assert "svg.chart" in r.text
    assert "prefers-color-scheme: dark" in r.text


async def test_behind_https_the_cookie_is_secure(web: WebEnv) -> None:
    # uvicorn trusts X-Forwarded-Proto from the proxy in front of it (here: loopback, as by default).
    b = await web.browser()
    https = {"x-forwarded-proto": "https"}
    page = Page(await b.http.get("/login", headers=https))
    login_cookie = _cookie_attrs(page.response, "tt_login_csrf")
    assert "secure" in login_cookie
    # (httpx does not send a Secure cookie over plain HTTP; a browser behind HTTPS would: sent by hand here.)
    headers = {**https, "cookie": f"tt_login_csrf={login_cookie['value']}"}
    form = {"csrf": page.form_value("csrf"), "email": ADMIN_EMAIL, "password": PASSWORD}
    r = await b.http.post("/login", headers=headers, data=form)
    assert r.status_code == 303, r.text
    assert "secure" in _cookie_attrs(r, "tt_session")


async def test_a_dead_session_cookie_is_forgotten_not_counted_again_and_again(web: WebEnv) -> None:
    dead = await web.member("stale@example.com")
    other = await web.browser()
    assert (await other.sign_in("stale@example.com")).status_code == 303
    # The first browser's session ends elsewhere (signed out from another one): the browser still holds it.
    sessions = (await other.api("GET", "/api/v1/sessions")).json()
    old = next(x["id"] for x in sessions if not x["current"])
    assert (await other.api("DELETE", f"/api/v1/sessions/{old}")).status_code == 204
    assert dead.http.cookies.get("tt_session")
    first = await dead.http.get("/chat")
    assert first.status_code == 303
    assert 'tt_session=""' in first.headers["set-cookie"]  # forgotten at once
    assert dead.http.cookies.get("tt_session") is None
    for _ in range(30):  # more visits than the failed sign-in limit: the dead token is not sent again
        assert (await dead.http.get("/chat")).status_code == 303
    r = await dead.sign_in("stale@example.com")
    assert r.status_code == 303  # not throttled


async def test_a_trailing_slash_is_a_relative_redirect_whatever_the_host(web: WebEnv) -> None:
    for path, target in (("/chat/", "/chat"), ("/knowledge/x/", "/knowledge/x"), ("/chat/?q=a", "/chat?q=a"),
                         ("//evil.example/chat/", None), ("/chat//evil.example/", "/chat//evil.example")):
        r = await web.admin.http.get(path, headers={"host": "evil.example"})
        if target is None:
            assert not r.headers.get("location", "").startswith(("//", "http")), r.headers.get("location")
            continue
        assert (r.status_code, r.headers["location"]) == (308, target), path
