"""The admin pages: users (create with role/tier/team/budget, tier, revoke), teams, every key, the usage
dashboard, model health and budgets. Members get 403 on every page and form; forms need the CSRF token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from thinktank.api.app import create_app
from thinktank.config import Settings, TierConfig
from thinktank.discovery import demo_config
from thinktank.knowledge.embeddings import LocalEmbedder

from ..fakes.server import serving
from .conftest import ADMIN_EMAIL, ADMIN_KEY, PASSWORD, Browser, Page, WebEnv

XSS = '<script>alert(1)</script><img src=x onerror="alert(2)">'
PAGES = ["/admin", "/admin/users", "/admin/teams", "/admin/keys", "/admin/usage", "/admin/health",
         "/admin/budgets", "/admin/usage?by=user&window=7d", "/admin/usage?by=key&window=1h",
         "/admin/keys?revoked=1"]
CHAT = {"model": "demo/echo", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
async def tiered(tmp_path: Path, local_embedder: LocalEmbedder) -> AsyncIterator[WebEnv]:
    """The web app with two rate-limit tiers configured."""
    config = demo_config().model_copy(update={"tiers": {"free": TierConfig(requests_per_day=2),
                                                        "pro": TierConfig(requests_per_day=1000)}})
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN_KEY, admin_email=ADMIN_EMAIL,
                        admin_password=PASSWORD)
    app = create_app(settings, config, local_embedder=local_embedder, quiet=True)
    async with serving(app) as url:
        admin = Browser(url)
        assert (await admin.sign_in(ADMIN_EMAIL)).status_code == 303
        env = WebEnv(url, app, admin)
        try:
            yield env
        finally:
            for b in [admin, *env._browsers]:
                await b.close()


async def _post(b: Browser, path: str, **data: str) -> httpx.Response:
    return await b.http.post(path, data={"csrf": b.csrf, **data})


async def _users(web: WebEnv) -> dict[str, dict[str, object]]:
    r = await web.admin.api("GET", "/api/v1/users")
    return {u["email"]: u for u in r.json()}


async def test_every_admin_page_renders_with_its_navigation(web: WebEnv) -> None:
    member = await web.member("alice@example.com")
    await member.api("POST", "/api/v1/keys", json={"name": "k"})
    await member.api("POST", "/v1/chat/completions", json=CHAT)
    for path in PAGES:
        page = await web.admin.get(path)
        assert page.status == 200, path
        assert page.one('nav[aria-label="Main"] a[aria-current="page"]').text() == "Admin"
        assert page.one("h1").text()
        sub = page.one('nav[aria-label="Admin"] a[aria-current="page"]').attributes["href"]
        assert path.startswith(sub or "?"), path
        assert page.one('script[type="module"][src^="/static/js/admin.js"]')
        assert not page.all("main [style]") and not page.all("script:not([src])")


async def test_a_member_gets_403_on_every_admin_page_and_form(web: WebEnv) -> None:
    member = await web.member("alice@example.com")
    target = (await member.api("GET", "/api/v1/me")).json()["user_id"]
    key = (await member.api("POST", "/api/v1/keys", json={"name": "k"})).json()["id"]
    for path in PAGES:
        page = await member.get(path)
        assert page.status == 403, path
        assert "Admin" not in page.texts("nav a")
    posts = {"/admin/users": {"email": "new@example.com", "password": PASSWORD, "role": "admin"},
             "/admin/teams": {"name": "t"}, f"/admin/users/{target}/tier": {"tier": ""},
             f"/admin/users/{target}/revoke": {}, f"/admin/keys/{key}/revoke": {}}
    for path, data in posts.items():
        r = await _post(member, path, **data)
        assert r.status_code == 403, path
    users = await _users(web)
    assert "new@example.com" not in users and users["alice@example.com"]["revoked_at"] is None
    assert (await member.api("GET", f"/api/v1/keys/{key}")).json()["revoked_at"] is None


async def test_create_a_user_with_role_tier_team_and_budget(tiered: WebEnv) -> None:
    web = tiered
    r = await _post(web.admin, "/admin/teams", name="Research " + XSS, budget_usd="50", budget_period="month")
    assert (r.status_code, r.headers["location"]) == (303, "/admin/teams?done=team_created")
    teams = await web.admin.get("/admin/teams")
    assert teams.texts("table.teams .team-name") == ["Research " + XSS]
    assert not teams.all("main table script") and not teams.all("main table img")
    team_id = (await web.admin.api("GET", "/api/v1/teams")).json()[0]["id"]

    page = await web.admin.get("/admin/users")
    assert page.texts("#u-tier option") == ["none", "free", "pro"]
    assert page.texts("#u-team option") == ["none", "Research " + XSS]
    r = await _post(web.admin, "/admin/users", email="Bob@Example.com", password=PASSWORD, role="member",
                    tier="free", team_id=team_id, budget_usd="12.5", budget_period="day")
    assert (r.status_code, r.headers["location"]) == (303, "/admin/users?done=user_created")
    bob = (await _users(web))["bob@example.com"]
    assert (bob["role"], bob["tier"], bob["team_id"], bob["budget_usd"], bob["budget_period"]) == (
        "member", "free", team_id, 12.5, "day")
    page = await web.admin.get("/admin/users?done=user_created")
    assert page.one('[role="status"]').text() == "The user was created."
    assert page.one(f"#user-{bob['id']} .team").text() == "Research " + XSS
    b = await web.browser()
    assert (await b.sign_in("bob@example.com")).status_code == 303  # the new user can sign in

    # Mistakes are shown on the page, with what was typed kept (never the password).
    r = await _post(web.admin, "/admin/users", email="bob@example.com", password=PASSWORD)
    assert r.status_code == 409
    assert "exists already" in Page(r).one('[role="alert"]').text()
    r = await _post(web.admin, "/admin/users", email="not-an-email", password=PASSWORD)
    assert r.status_code == 400
    assert Page(r).one("#u-email").attributes["value"] == "not-an-email"
    assert PASSWORD not in r.text
    r = await _post(web.admin, "/admin/users", email=XSS + "@example.com", password=PASSWORD)
    assert r.status_code == 400  # not an email; what was typed comes back as text, never as markup
    assert Page(r).one("#u-email").attributes["value"] == XSS + "@example.com"
    assert not Page(r).all("main script") and not Page(r).all("main img")
    r = await _post(web.admin, "/admin/users", email="carol@example.com", password="short")
    assert r.status_code == 400 and "password" in Page(r).one('[role="alert"]').text()
    r = await _post(web.admin, "/admin/users", email="carol@example.com", password=PASSWORD, tier="gold")
    assert r.status_code == 400 and "gold" in Page(r).one('[role="alert"]').text()
    assert "carol@example.com" not in await _users(web)


async def test_change_a_users_tier_and_it_applies(tiered: WebEnv) -> None:
    web = tiered
    member = await web.member("dave@example.com")
    uid = (await member.api("GET", "/api/v1/me")).json()["user_id"]
    r = await _post(web.admin, f"/admin/users/{uid}/tier", tier="free")
    assert (r.status_code, r.headers["location"]) == (303, "/admin/users?done=tier_changed")
    page = await web.admin.get("/admin/users")
    assert page.one(f"#tier-{uid} option[selected]").text() == "free"
    codes = [(await member.api("POST", "/v1/chat/completions", json=CHAT)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = await _post(web.admin, f"/admin/users/{uid}/tier", tier="nope")
    assert r.status_code == 400
    assert (await _users(web))["dave@example.com"]["tier"] == "free"
    await _post(web.admin, f"/admin/users/{uid}/tier", tier="")
    assert (await _users(web))["dave@example.com"]["tier"] is None


async def test_revoke_a_user(web: WebEnv) -> None:
    member = await web.member("erin@example.com")
    uid = (await member.api("GET", "/api/v1/me")).json()["user_id"]
    r = await _post(web.admin, f"/admin/users/{uid}/revoke")
    assert (r.status_code, r.headers["location"]) == (303, "/admin/users?done=user_revoked")
    assert (await member.http.get("/me")).status_code == 303  # signed out everywhere
    assert (await (await web.browser()).sign_in("erin@example.com")).status_code == 401
    page = await web.admin.get("/admin/users")
    assert "revoked" in page.one(f"#user-{uid} .badge").text()
    admin_id = (await web.admin.api("GET", "/api/v1/me")).json()["user_id"]
    assert not page.all(f'form[action="/admin/users/{admin_id}/revoke"]')
    r = await _post(web.admin, f"/admin/users/{admin_id}/revoke")
    assert r.status_code == 400 and (await web.admin.get("/admin")).status == 200


async def test_every_key_with_its_owner_and_revoke(web: WebEnv) -> None:
    alice = await web.member("alice@example.com")
    bob = await web.member("bob@example.com")
    a = (await alice.api("POST", "/api/v1/keys", json={"name": "alice " + XSS})).json()
    b = (await bob.api("POST", "/api/v1/keys", json={"name": "bob-key"})).json()
    page = await web.admin.get("/admin/keys")
    owners = dict(zip(page.texts("table.keys .key-name"), page.texts("table.keys .owner"), strict=True))
    assert owners == {"alice " + XSS: "alice@example.com", "bob-key": "bob@example.com"}
    assert a["key"] not in page.response.text and b["key"] not in page.response.text
    r = await _post(web.admin, f"/admin/keys/{a['id']}/revoke")
    assert (r.status_code, r.headers["location"]) == (303, "/admin/keys?done=key_revoked")
    async with httpx.AsyncClient(base_url=web.url) as c:
        assert (await c.get("/v1/models", headers={"Authorization": f"Bearer {a['key']}"})).status_code == 401
        assert (await c.get("/v1/models", headers={"Authorization": f"Bearer {b['key']}"})).status_code == 200
    assert (await web.admin.get("/admin/keys")).texts("table.keys .key-name") == ["bob-key"]
    shown = await web.admin.get("/admin/keys?revoked=1")
    assert sorted(shown.texts("table.keys .key-name")) == sorted(["alice " + XSS, "bob-key"])
    assert shown.one(f"#key-{a['id']} .badge").text().startswith("revoked")


async def test_admin_forms_refuse_a_post_without_the_csrf_token(web: WebEnv) -> None:
    for path, data in (("/admin/users", {"email": "x@example.com", "password": PASSWORD}),
                       ("/admin/teams", {"name": "t"})):
        assert (await web.admin.http.post(path, data=data)).status_code == 403
        assert (await web.admin.http.post(path, data={**data, "csrf": "forged"})).status_code == 403
        r = await web.admin.http.post(path, data={**data, "csrf": web.admin.csrf},
                                      headers={"origin": "https://evil.example"})
        assert r.status_code == 403
    assert "x@example.com" not in await _users(web)
    assert (await web.admin.api("GET", "/api/v1/teams")).json() == []


async def test_usage_dashboard_shows_requests_by_model_user_and_key(web: WebEnv) -> None:
    alice = await web.member("alice@example.com")
    key = (await alice.api("POST", "/api/v1/keys", json={"name": "alice-script"})).json()
    async with httpx.AsyncClient(base_url=web.url, timeout=30) as c:
        for _ in range(3):
            r = await c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key['key']}"}, json=CHAT)
            assert r.status_code == 200
        for _ in range(6):  # fails half of the time: some requests end in errors
            await c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key['key']}"},
                         json={**CHAT, "model": "demo/flaky"})
    page = await web.admin.get("/admin/usage")
    totals = {cells[0]: cells for cells in ([td.text() for td in row.css("td")]
                                            for row in page.all("table.usage-totals tbody tr"))}
    assert set(totals) == {"demo/echo", "demo/flaky"}
    assert totals["demo/echo"][1] == "3" and totals["demo/flaky"][1] == "6"
    assert "demo/echo" in page.texts("#requests-chart svg text")
    assert page.one("#requests-chart svg desc").text().startswith("2 series")
    latency = page.texts("table.latency tbody td")
    assert "demo/echo" in latency
    assert page.all("table.errors tbody tr")  # the flaky model's failures
    assert "alice@example.com" in page.texts("table.errors td")

    by_user = await web.admin.get("/admin/usage?by=user")
    assert by_user.texts("table.usage-totals tbody td")[:2] == ["alice@example.com", "9"]
    by_key = await web.admin.get("/admin/usage?by=key&window=1h")
    assert by_key.texts("table.usage-totals tbody td")[0].startswith("alice-script (")
    assert by_key.one('#window option[selected]').text() == "last hour"


async def test_health_lists_every_deployment_and_its_errors(web: WebEnv) -> None:
    async with httpx.AsyncClient(base_url=web.url, timeout=30) as c:
        for _ in range(6):
            await c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                         json={**CHAT, "model": "demo/flaky"})
    page = await web.admin.get("/admin/health")
    cards = {c.css("h2")[0].text(): c for c in page.all("li.deployment")}
    assert {"demo/echo", "demo/flaky", "demo/slow"} <= set(cards)
    assert cards["demo/flaky"].css("ul.recent-errors li"), "the flaky deployment's failures are listed"
    assert [b.text() for b in cards["demo/echo"].css(".badge.status")] == ["ok"]
    assert not cards["demo/echo"].css("ul.recent-errors")
    by_user = await web.admin.get("/admin/usage?by=user")  # requests made with the server's admin key
    assert by_user.texts("table.usage-totals tbody td")[:2] == ["the admin key", "6"]


async def test_budgets_show_what_is_left(web: WebEnv) -> None:
    r = await web.admin.api("POST", "/api/v1/users", json={"email": "f@example.com", "password": PASSWORD,
                                                            "budget_usd": 10, "budget_period": "month"})
    assert r.status_code == 201
    await web.admin.api("POST", "/api/v1/teams", json={"name": "Ops " + XSS, "budget_usd": 3})
    page = await web.admin.get("/admin/budgets")
    rows = {r.css("td")[1].text(): [td.text() for td in r.css("td")] for r in page.all("table.budgets tbody tr")}
    assert rows["f@example.com"][3:6] == ["$10.00", "$0", "$10.00"]
    assert "Ops " + XSS in rows
    assert page.one("#budget-chart svg.chart")
    assert not page.all("main table script")
