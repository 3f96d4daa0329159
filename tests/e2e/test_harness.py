"""The harness itself: the real server answers the browser, and the watch catches what a page must not do."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from .harness import DESKTOP, PHONE, E2EServer, PageWatch, screenshot, screenshot_dir


def test_the_server_answers_the_browser_and_the_api(page: Page, server: E2EServer, watch: PageWatch) -> None:
    response = page.goto("/ready")
    assert response is not None
    assert response.status == 200
    expect(page.locator("body")).to_contain_text('"status":"ready"')

    member = server.make_member("e2e-harness-member@example.com")
    login = httpx.post(server.url + "/api/v1/auth/login",
                       json={"email": "e2e-harness-member@example.com", "password": "correct horse battery staple"})
    assert login.status_code == 200, login.text
    me = httpx.get(server.url + "/api/v1/me", headers={"Authorization": f"Bearer {login.json()['token']}"})
    assert me.status_code == 200, me.text
    assert me.json()["user_id"] == member
    assert me.json()["role"] == "member"

    # The admin the server was started with can sign in.
    admin = httpx.post(server.url + "/api/v1/auth/login",
                       json={"email": server.admin_email, "password": server.admin_password})
    assert admin.status_code == 200, admin.text
    who = httpx.get(server.url + "/api/v1/me", headers={"Authorization": f"Bearer {admin.json()['token']}"})
    assert who.json()["role"] == "admin", who.text
    assert watch.problems() == []


def test_a_page_that_fetches_from_a_cdn_is_caught(page: Page, watch: PageWatch) -> None:
    """FastAPI's Swagger page loads its script and styles from a CDN: the watch aborts those requests and
    records them (and the console errors and exception that follow), which would fail any other test."""
    page.goto("/docs")
    page.wait_for_load_state("load")

    problems = watch.problems()
    off = watch.take_off_loopback()
    assert any(u.startswith("https://cdn.jsdelivr.net/") and u.endswith("swagger-ui-bundle.js") for u in off), off
    assert all("127.0.0.1" not in u for u in off), off
    assert any("cdn.jsdelivr.net" in p for p in problems), problems
    # The aborted script never ran, so the page's own script fails: recorded as an uncaught exception.
    assert any("SwaggerUIBundle" in e for e in watch.take_page_errors())
    watch.take_console_errors()  # the aborted loads, as Chromium reports them
    assert watch.problems() == []


def test_screenshots_are_named_by_viewport(page: Page, phone_page: Page) -> None:
    page.goto("/ready")
    phone_page.goto("/ready")
    desktop = screenshot(page, "e2e-harness")
    phone = screenshot(phone_page, "e2e-harness")
    assert desktop == screenshot_dir() / "e2e-harness-desktop.png"
    assert phone == screenshot_dir() / "e2e-harness-phone.png"
    assert desktop.read_bytes().startswith(b"\x89PNG")
    assert phone.read_bytes().startswith(b"\x89PNG")
    assert phone_page.evaluate("[screen.width, navigator.maxTouchPoints > 0]") == [PHONE["width"], True]
    assert page.evaluate("[window.innerWidth, window.innerHeight]") == [DESKTOP["width"], DESKTOP["height"]]


def test_a_csp_violation_is_caught_as_a_console_error(page: Page, watch: PageWatch) -> None:
    page.goto("/ready")
    page.set_content("<meta http-equiv='Content-Security-Policy' content=\"script-src 'self'\">"
                     "<p>inline</p><script>document.body.dataset.ran = 'yes'</script>")
    expect(page.locator("p")).to_have_text("inline")
    assert page.evaluate("document.body.dataset.ran") is None  # the policy held
    errors = watch.take_console_errors()
    assert any("Content Security Policy" in e for e in errors), errors
    assert watch.problems() == []


def test_a_missing_asset_is_caught_but_a_page_may_answer_4xx(page: Page, watch: PageWatch) -> None:
    response = page.goto("/no-such-page")
    assert response is not None
    assert response.status == 404
    assert watch.problems() == []  # the app said "not found" on purpose

    page.set_content("<p>with a broken image</p><img src='/static/no-such-image.png' alt=''>")
    errors = watch.take_console_errors()
    assert any("status of 404" in e and "/static/no-such-image.png" in e for e in errors), errors
    assert watch.problems() == []
