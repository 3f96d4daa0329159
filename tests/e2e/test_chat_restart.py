"""The chat page when a turn's answer starts again (its server died and another took the turn up): the page
drops the text it had shown and shows the new answer once."""

from __future__ import annotations

import orjson
from playwright.sync_api import Page, Route, expect

from .harness import E2EServer, login
from .test_chat import LONG, SLOW_ANSWER_MS, _api, _stored

GAP = 1_000_000
"""As the server numbers a taken-up turn's events (``turn_resume.RESTART_GAP``)."""


def _blocks(text: str) -> list[tuple[str, dict[str, object]]]:
    """(event, data) of each event of an SSE body."""
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            out.append((fields.get("event", ""), orjson.loads(fields["data"])))
    return out


def test_an_answer_that_restarts_is_shown_once_from_its_new_start(page: Page, server: E2EServer) -> None:
    """The stream breaks after three events; the page follows the turn again and is told the answer restarts
    (as a server that took the turn up says: a ``restart`` numbered past what was seen, then the answer from
    its start). Here the reconnection's events are the real turn's, from its start, after such a restart."""
    login(page, server, server.admin_email, server.admin_password)
    thread = _api(page, "POST", "/api/v1/threads", {"model": "demo/slow"})
    reconnected: list[str] = []

    def cut(route: Route) -> None:
        if route.request.method != "POST":
            route.fallback()
            return
        response = route.fetch()
        blocks = response.text().split("\n\n")
        route.fulfill(response=response, body="\n\n".join(blocks[:3]) + "\n\n")

    def restarted(route: Route) -> None:
        reconnected.append(route.request.headers.get("last-event-id", ""))
        headers = {k: v for k, v in route.request.headers.items() if k.lower() != "last-event-id"}
        whole = route.fetch(url=route.request.url.split("?", 1)[0] + "?after=0", headers=headers)
        events = [("restart", {"type": "restart", "reason": "interrupted", "resumes_after": 3}),
                  *[(name, data) for name, data in _blocks(whole.text()) if name in ("delta", "message")]]
        body = "".join(f"id: {GAP + 3 + i}\nevent: {name}\ndata: {orjson.dumps(data).decode()}\n\n"
                       for i, (name, data) in enumerate(events))
        route.fulfill(response=whole, body=body)

    def no_swap(route: Route) -> None:  # keep the streamed text on the page, to check it as it was built
        route.fulfill(status=200, content_type="text/html", body="")

    page.route(f"**/api/v1/threads/{thread['id']}/messages", cut)
    page.route(f"**/api/v1/threads/{thread['id']}/turn/events*", restarted)
    page.route(f"**/chat/{thread['id']}/messages/*", no_swap)
    page.goto(f"/chat/{thread['id']}")
    page.get_by_label("Message").fill(LONG)
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text("Answer complete.", timeout=SLOW_ANSWER_MS)
    assert reconnected == ["3"]
    stored = _stored(page, thread["id"])[-1]["content"]
    assert page.locator("article.msg-assistant .streaming").inner_text() == stored  # not its start twice
