"""Signing in and out through the web pages."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from .harness import E2EServer, login, screenshot

NAV_LINKS = ("Chat", "Compare", "Arena", "Leaderboard", "Debate", "Evaluations", "Knowledge", "Me", "Admin")
AT_LOGIN = re.compile(r"/login(?:[?#].*)?$")
AT_CHAT = re.compile(r"/chat(?:[?#].*)?$")


def test_the_admin_signs_in_sees_the_navigation_and_signs_out(page: Page, server: E2EServer) -> None:
    login(page, server, server.admin_email, server.admin_password)
    expect(page).to_have_url(AT_CHAT)

    nav = page.get_by_role("navigation").first
    expect(nav).to_be_visible()
    for name in NAV_LINKS:
        expect(nav.get_by_role("link", name=name, exact=True)).to_be_visible()
    screenshot(page, "chat-signed-in")

    page.get_by_role("banner").get_by_role("button", name="Sign out").click()
    page.wait_for_url(AT_LOGIN)
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()

    # The session is gone: the chat page sends the visitor back to sign in.
    page.goto("/chat")
    expect(page).to_have_url(AT_LOGIN)


def test_a_wrong_password_is_refused_on_the_login_page(page: Page, server: E2EServer) -> None:
    page.goto("/login")
    page.locator("input[name='email']").fill(server.admin_email)
    page.locator("input[name='password']").fill(server.admin_password + " but wrong")
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("alert")).to_be_visible()
    expect(page).to_have_url(AT_LOGIN)
    expect(page.locator("input[name='password']")).to_have_value("")
    screenshot(page, "login-refused")

    # The visitor is not signed in.
    page.goto("/chat")
    expect(page).to_have_url(AT_LOGIN)


def test_a_member_signs_in_on_a_phone_and_has_no_admin_link(phone_page: Page, server: E2EServer) -> None:
    server.make_member("e2e-phone-member@example.com", "a phone member's password")
    phone_page.goto("/login")
    screenshot(phone_page, "login")
    login(phone_page, server, "e2e-phone-member@example.com", "a phone member's password")
    expect(phone_page).to_have_url(AT_CHAT)
    nav = phone_page.get_by_role("navigation").first
    expect(nav.get_by_role("link", name="Chat", exact=True)).to_be_visible()
    expect(nav.get_by_role("link", name="Admin", exact=True)).to_have_count(0)  # a member is no admin
    screenshot(phone_page, "chat-signed-in")
