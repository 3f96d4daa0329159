"""The chat page in a real browser against ``thinktank serve --demo``: a streamed answer stopped mid-way, a
stream that breaks and resumes without doubling text, a thread on an ensemble, a grounded answer whose
numbered sources open (with a file uploaded from the page), and screenshots at desktop and phone width."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import FilePayload, Page, Route, expect

from .harness import E2EServer, login, screenshot

AT_THREAD = re.compile(r"/chat/thr_[0-9a-f]+$")
SLOW_ANSWER_MS = 30_000
LONG = "Tell me a long story about streams: " + " ".join(f"word{i}" for i in range(200))
"""demo/slow says it back word by word, 0.05 s a word: some ten seconds of streaming."""


def _csrf(page: Page) -> str:
    return str(page.locator('meta[name="csrf-token"]').get_attribute("content"))


def _api(page: Page, method: str, path: str, data: Any = None) -> Any:
    """The JSON API as the page's scripts call it (the session cookie and the CSRF header)."""
    r = page.request.fetch(path, method=method, data=data, headers={"x-csrf-token": _csrf(page)})
    assert r.ok, f"{method} {path}: {r.status} {r.text()}"
    return r.json() if r.status != 204 else None


def _start_chat(page: Page, model: str, message: str, kb: str | None = None) -> str:
    page.goto("/chat")
    page.get_by_label("Model").select_option(model)
    if kb is not None:
        page.locator("#new-chat").get_by_label(kb).check()
    page.get_by_label("Message").fill(message)
    page.get_by_role("button", name="Start chat").click()
    page.wait_for_url(AT_THREAD)
    return page.url.rsplit("/", 1)[1]


def _stored(page: Page, thread_id: str) -> list[dict[str, Any]]:
    return list(_api(page, "GET", f"/api/v1/threads/{thread_id}/messages")["data"])


def test_a_streamed_answer_stops_mid_way_and_keeps_what_was_written(page: Page, server: E2EServer) -> None:
    login(page, server, server.admin_email, server.admin_password)
    thread_id = _start_chat(page, "demo/slow", LONG)
    live = page.locator("article.msg-assistant .streaming")
    expect(live).not_to_have_text("", timeout=SLOW_ANSWER_MS)  # words arrive one by one
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_visible()
    stop.click()
    expect(stop).to_be_hidden()
    answer = page.locator("article.msg-assistant").last
    expect(answer.locator(".badge")).to_have_text("stopped")  # the stored reply, as far as it got
    shown = answer.locator(".md").inner_text()
    page.wait_for_timeout(1500)  # had it not stopped, more words would have come by now
    assert answer.locator(".md").inner_text() == shown
    reply = _stored(page, thread_id)[-1]
    assert reply["finish_reason"] == "stopped" and reply["content"].strip()
    assert "word199" not in reply["content"]  # cut short
    assert reply["content"].split()[-1] in shown
    expect(page.get_by_role("status")).to_contain_text("Stopped")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()


def test_a_broken_stream_resumes_without_doubling_text(page: Page, server: E2EServer) -> None:
    """The answer's stream is cut after its third event (the turn goes on at the server): the page follows
    the turn again with Last-Event-ID and shows the whole answer once."""
    login(page, server, server.admin_email, server.admin_password)
    thread = _api(page, "POST", "/api/v1/threads", {"model": "demo/slow"})
    resumed: list[str] = []

    def cut(route: Route) -> None:
        if route.request.method != "POST":
            route.fallback()
            return
        response = route.fetch()  # the whole stream, as the server sent it
        blocks = response.text().split("\n\n")
        route.fulfill(response=response, body="\n\n".join(blocks[:3]) + "\n\n")

    def no_swap(route: Route) -> None:  # keep the streamed text on the page, to check it as it was built
        route.fulfill(status=200, content_type="text/html", body="")

    page.route(f"**/api/v1/threads/{thread['id']}/messages", cut)
    page.route(f"**/chat/{thread['id']}/messages/*", no_swap)
    page.on("request", lambda r: resumed.append(r.headers.get("last-event-id", ""))
            if r.url.endswith("/turn/events") else None)
    page.goto(f"/chat/{thread['id']}")
    page.get_by_label("Message").fill(LONG)
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text("Answer complete.", timeout=SLOW_ANSWER_MS)
    assert resumed == ["3"]
    stored = _stored(page, thread["id"])[-1]["content"]
    assert page.locator("article.msg-assistant .streaming").inner_text() == stored


def test_a_thread_on_an_ensemble_answers(page: Page, server: E2EServer) -> None:
    login(page, server, server.admin_email, server.admin_password)
    thread_id = _start_chat(page, "ensemble/demo-council", "Should we use a queue?")
    answer = page.locator("article.msg-assistant .md")
    expect(answer).not_to_have_text("", timeout=SLOW_ANSWER_MS)
    stored = _stored(page, thread_id)
    assert stored[-1]["model"] == "ensemble/demo-council" and stored[-1]["context"].get("run_id")
    events = page.request.get(f"/api/v1/threads/{thread_id}/turn/events?after=0").text()
    assert "event: progress" in events  # the council's stages came with the stream
    screenshot(page, "chat-ensemble")


def test_a_grounded_answer_cites_a_file_added_from_the_chat(page: Page, server: E2EServer) -> None:
    login(page, server, server.admin_email, server.admin_password)
    kb = _api(page, "POST", "/api/v1/knowledge-bases", {"name": "orchard"})
    thread = _api(page, "POST", "/api/v1/threads", {"model": "demo/librarian", "knowledge_bases": [kb["id"]],
                                                    "title": "Apple trees"})
    page.goto(f"/chat/{thread['id']}")
    text = b"Apple trees need cross-pollination from another variety. <script>alert(1)</script>"
    upload: FilePayload = {"name": "apples.txt", "mimeType": "text/plain", "buffer": text}
    page.get_by_label("Files", exact=True).set_input_files(files=[upload])
    page.get_by_role("button", name="Upload").click()
    # (the first upload of the server's life builds its local embedding model first)
    expect(page.locator("#drop-results li")).to_have_text(re.compile(r"^apples\.txt: added"), timeout=120_000)
    page.get_by_label("Message").fill("What do apple trees need?")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.msg-assistant").last
    cite = answer.locator("a.cite").first
    expect(cite).to_have_text("[1]", timeout=SLOW_ANSWER_MS)
    source = answer.locator("details").first
    expect(source).not_to_have_attribute("open", "")
    cite.click()
    expect(source).to_have_attribute("open", "")
    expect(source.locator(".passage")).to_contain_text("cross-pollination")
    expect(source.locator(".passage")).to_contain_text("<script>")  # shown as text
    screenshot(page, "chat-grounded")


def test_the_chat_pages_at_phone_width(phone_page: Page, server: E2EServer) -> None:
    page = phone_page
    login(page, server, server.admin_email, server.admin_password)
    _start_chat(page, "demo/fast", "Hello from a phone")
    expect(page.locator("article.msg-assistant .md")).to_contain_text("scripted demo answer",
                                                                      timeout=SLOW_ANSWER_MS)
    expect(page.get_by_role("heading", level=1)).to_have_text("Hello from a phone")  # titled once stored
    expect(page.locator("article.msg-user .msg-who")).to_be_visible()
    page.wait_for_load_state("load")  # measured once styled
    width = page.evaluate("() => document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    assert width, "the thread page scrolls sideways on a phone"
    screenshot(page, "chat-thread")
    page.goto("/chat")
    screenshot(page, "chat-list")


def test_the_chat_pages_at_desktop_width(page: Page, server: E2EServer) -> None:
    login(page, server, server.admin_email, server.admin_password)
    _start_chat(page, "demo/fast", "Hello from a desktop")
    expect(page.locator("article.msg-assistant .md")).to_contain_text("scripted demo answer",
                                                                      timeout=SLOW_ANSWER_MS)
    screenshot(page, "chat-thread")
    page.goto("/chat")
    screenshot(page, "chat-list")
