"""The Me and Admin pages in a real browser: an admin creates a user, the user makes a key (shown once) and
calls the API with it, and the admin's usage chart shows those requests. Screenshots at desktop and phone width."""

from __future__ import annotations

import re
import time

import httpx
from playwright.sync_api import Dialog, Page, expect

from .harness import MEMBER_PASSWORD, E2EServer, login, screenshot

CHAT = {"model": "demo/echo", "messages": [{"role": "user", "content": "hello from e2e"}]}
REQUESTS = 3
WAIT_S = 15.0


def _until_shown(page: Page, path: str, selector: str, text: str) -> None:
    """Reload ``path`` until ``selector`` holds ``text``: usage is written in batches (every 0.5 s)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        page.goto(path)
        if text in page.locator(selector).all_inner_texts() or time.monotonic() > deadline:
            break
        page.wait_for_timeout(300)
    expect(page.locator(selector).filter(has_text=text).first).to_be_visible()


def _accept(dialog: Dialog) -> None:
    dialog.accept()


def test_admin_creates_a_user_who_makes_a_key_and_the_usage_chart_shows_its_requests(
        page: Page, phone_page: Page, server: E2EServer) -> None:
    email = "e2e-admin-flow@example.com"
    login(page, server, server.admin_email, server.admin_password)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Admin")
    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Users").click()
    page.wait_for_url(re.compile(r"/admin/users$"))

    # The admin creates the user with the plain form.
    form = page.locator("form#new-user")
    if not form.is_visible():
        page.get_by_text("Create a user").click()
    form.get_by_label("Email").fill(email)
    form.get_by_label("Password (at least 8 characters)").fill(MEMBER_PASSWORD)
    form.get_by_label("Budget in USD (optional)").fill("5")
    form.get_by_role("button", name="Create user").click()
    expect(page.get_by_role("status")).to_have_text("The user was created.")
    expect(page.locator("table.users td.email", has_text=email)).to_be_visible()
    screenshot(page, "admin-users")

    # The user signs in on a phone and makes a key on the Me page: its secret is shown once.
    login(phone_page, server, email, MEMBER_PASSWORD)
    phone_page.goto("/me")
    expect(phone_page.get_by_role("heading", name="Me", level=1)).to_be_visible()
    phone_page.get_by_text("Create a key").click()
    phone_page.get_by_label("Name").fill("e2e script")
    phone_page.get_by_role("button", name="Create key").click()
    expect(phone_page.get_by_role("heading", level=1)).to_have_text("Your new API key")
    secret = phone_page.locator("input#secret").input_value()
    assert secret.startswith("tt-")
    screenshot(phone_page, "me-key-created")

    with httpx.Client(base_url=server.url, timeout=30) as c:
        for _ in range(REQUESTS):
            r = c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}, json=CHAT)
            assert r.status_code == 200, r.text

    # The secret is never shown again; the user's own usage counts the requests.
    phone_page.goto("/me")
    expect(phone_page.locator("table.keys .key-name")).to_have_text(["e2e script"])
    assert secret not in phone_page.content()
    screenshot(phone_page, "me")
    _until_shown(phone_page, "/me/usage", "#my-requests", str(REQUESTS))
    screenshot(phone_page, "me-usage")
    # Wide tables scroll inside their box: the page itself is no wider than the phone (once styled).
    phone_page.wait_for_load_state("load")
    assert phone_page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 1
    assert phone_page.evaluate("window.innerWidth") == 390

    # The admin's usage dashboard, by user: the chart's legend and the totals name the new user.
    _until_shown(page, "/admin/usage?by=user&window=1h", "table.usage-totals td", email)
    row = page.locator("table.usage-totals tbody tr", has_text=email)
    expect(row.locator("td").nth(1)).to_have_text(str(REQUESTS))
    expect(page.locator("#requests-chart svg text", has_text=email).first).to_be_attached()
    expect(page.locator("#requests-chart svg .line").first).to_be_attached()
    screenshot(page, "admin-usage")

    # ... and by key, with the filters applied as soon as they change.
    page.get_by_label("By").select_option("key")
    page.wait_for_url(re.compile(r"by=key"))
    expect(page.locator("table.usage-totals td", has_text="e2e script")).to_be_visible()

    # Every key, with its owner; the admin revokes the user's key (after the confirmation).
    page.goto("/admin/keys")
    key_row = page.locator("table.keys tbody tr", has_text="e2e script")
    expect(key_row.locator(".owner")).to_have_text(email)
    assert secret not in page.content()
    page.once("dialog", _accept)
    key_row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_contain_text("revoked")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    screenshot(page, "admin-keys")


def test_admin_pages_at_desktop_and_phone_width(page: Page, phone_page: Page, server: E2EServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:  # some traffic, failures among it, for the charts
        for model in ("demo/echo", "demo/fast", "demo/flaky", "demo/flaky", "demo/flaky", "demo/flaky"):
            c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {server.admin_key}"},
                   json={**CHAT, "model": model})
        c.post("/api/v1/teams", headers={"Authorization": f"Bearer {server.admin_key}"},
               json={"name": "e2e team", "budget_usd": 20})
    for p in (page, phone_page):
        login(p, server, server.admin_email, server.admin_password)
        for path, name, heading in (("/admin", "admin", "Admin"), ("/admin/usage", "admin-usage-model", "Usage"),
                                    ("/admin/health", "admin-health", "Model health"),
                                    ("/admin/budgets", "admin-budgets", "Budgets"),
                                    ("/admin/teams", "admin-teams", "Teams"), ("/me", "me-admin", "Me"),
                                    ("/me/usage", "me-usage-admin", "My usage and spend")):
            p.goto(path)
            expect(p.get_by_role("heading", level=1)).to_have_text(heading)
            screenshot(p, name)
    # Nothing is wider than a phone: no sideways scrolling of the whole page.
    for path in ("/admin/usage", "/admin/users", "/admin/health", "/me", "/me/usage"):
        phone_page.goto(path)
        overflow = phone_page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (path, overflow)


def test_a_member_gets_403_on_the_admin_pages_and_revokes_their_own_session(
        phone_page: Page, server: E2EServer) -> None:
    email = "e2e-member-403@example.com"
    server.make_member(email)
    login(phone_page, server, email, MEMBER_PASSWORD)
    response = phone_page.goto("/admin/users")
    assert response is not None and response.status == 403
    phone_page.goto("/me")
    current = phone_page.locator("table.sessions tr.current")
    expect(current.locator(".badge")).to_have_text("this session")
    phone_page.once("dialog", _accept)
    current.get_by_role("button", name="Sign out").click()
    phone_page.wait_for_url(re.compile(r"/login"))
    phone_page.goto("/me")
    expect(phone_page).to_have_url(re.compile(r"/login"))
