"""Compare, ensemble runs, the blind arena and the leaderboard, through the real app on loopback."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
from selectolax.lexbor import LexborNode as Node

from .conftest import Browser, Page, WebEnv

PANEL = ("demo/alpha", "demo/beta", "demo/gamma")
HOSTILE = ('<script>alert(1)</script> <img src=x onerror="alert(2)"> [click](javascript:alert(3)) '
           '<a href="javascript:alert(4)">x</a>')


async def _finished(b: Browser, run_id: str) -> dict[str, Any]:
    """The run's record once it has ended (polled through the API, as a page would)."""
    for _ in range(400):
        r = await b.api("GET", f"/api/v1/runs/{run_id}")
        assert r.status_code == 200, r.text
        record: dict[str, Any] = r.json()
        if record["status"] != "running":
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")


async def _start(b: Browser, question: str, *, arena: bool = False, tags: str = "",
                 ensemble: str = "ensemble/demo-council") -> str:
    page = await b.get("/arena" if arena else "/compare")
    form = {"csrf": page.csrf, "ensemble": ensemble, "question": question, "tags": tags}
    if arena:
        form["arena"] = "1"
    r = await b.http.post("/runs", data=form)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith("/runs/run")
    return location.removeprefix("/runs/")


def _sub(node: Node, selector: str) -> Node:
    found = node.css_first(selector)
    assert found is not None, selector
    return found


def _no_active_content(page: Page, part: str = "main") -> None:
    """Nothing in the page's main part could run: no script, no handler attribute, no javascript: URL."""
    main = page.one(part)
    assert main.css("script") == []
    for node in main.css("*"):
        for name, value in node.attributes.items():
            assert not name.lower().startswith("on"), (node.tag, name)
            assert not (value or "").strip().lower().startswith("javascript:"), (node.tag, name, value)


async def test_compare_page_offers_the_users_chat_models_and_the_ensembles(web: WebEnv) -> None:
    member = await web.member("cmp@example.com")
    page = await member.get("/compare")
    assert page.status == 200
    form = page.one("#compare-form")
    assert (form.attributes["data-min"], form.attributes["data-max"]) == ("2", "6")
    offered = [n.attributes["value"] for n in page.all('#compare-form input[name="model"]')]
    assert {"demo/echo", "demo/fast", "demo/slow", *PANEL, "ensemble/demo-council"} <= set(offered)
    assert "demo/embed" not in offered  # an embedding model cannot answer a question
    assert page.one('label[for="compare-question"]').text(strip=True) == "Question"
    assert [o.attributes["value"] for o in page.all("#ensemble-name option")] == ["ensemble/demo-council"]
    assert page.one('#ensemble-form input[name="csrf"]').attributes["value"] == page.csrf
    assert page.one('script[src^="/static/js/compare.js"]').attributes["type"] == "module"


async def test_the_streamed_answer_the_columns_read_carries_usage_and_cost(web: WebEnv) -> None:
    b = web.admin
    r = await b.api("POST", "/v1/chat/completions", json={
        "model": "demo/fast", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hello"}]})
    assert r.status_code == 200
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "This is a scripted demo answer from demo/fast."
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage and usage[-1]["completion_tokens"] > 0 and "cost" in usage[-1]


async def test_render_route_sanitises_and_needs_the_csrf_header_and_a_bounded_body(web: WebEnv) -> None:
    b = web.admin
    r = await b.api("POST", "/compare/render", content=f"# Title\n\n{HOSTILE}\n\n```python\nx = 1\n```".encode())
    assert r.status_code == 200
    page = Page(r)
    assert page.one("div.md h1").text() == "Title"
    assert page.one("div.md pre code").text().strip() == "x = 1"
    assert page.tree.css("script") == []
    for node in page.tree.css("*"):
        for name, value in node.attributes.items():
            assert not name.lower().startswith("on")
            assert not (value or "").lower().startswith("javascript:")
    no_token = await b.http.post("/compare/render", content=b"hello")
    assert no_token.status_code == 403
    cross_site = await b.api("POST", "/compare/render", content=b"hello", headers={"origin": "https://evil.example"})
    assert cross_site.status_code == 403
    big = await b.api("POST", "/compare/render", content=b"x" * (256 * 1024 + 1))
    assert big.status_code == 400
    assert "too long" in Page(big).one("main").text()


async def test_ensemble_run_page_shows_members_ranking_and_synthesis_and_takes_votes(web: WebEnv) -> None:
    b = await web.member("ens@example.com")
    run_id = await _start(b, "Which database should we start with?", tags="infra")
    record = await _finished(b, run_id)
    assert record["status"] == "completed"
    page = await b.get(f"/runs/{run_id}")
    assert page.status == 200
    assert page.one("#run-question").text() == "Which database should we start with?"
    assert page.one("#run-status").text() == "completed"
    cards = page.all("article.answer-card")
    assert sorted(_sub(c, ".model-name").text() for c in cards) == sorted(PANEL)
    for card in cards:
        assert _sub(card, ".md").text(strip=True)  # the answer, rendered
        assert re.search(r"\d+ ms · \d+ tokens · ", _sub(card, ".stats").text())
    rows = page.all("#ranking-table tbody tr")
    assert [r.css("td")[0].text() for r in rows] == ["1", "2", "3"]
    assert {r.css("td")[2].text() for r in rows} == set(PANEL)
    assert "Judge agreement" in page.one("#ranking").text()
    assert "peer_review" in page.one("#ranking").text()
    synthesis = page.one("#synthesis")
    assert "chairman demo/alpha" in synthesis.text()
    assert "Start with a managed PostgreSQL database" in _sub(synthesis, ".md").text()
    assert page.all("#live") == []  # finished: nothing to follow
    # The fragment the live page swaps in is the same body.
    frag = Page(await b.http.get(f"/runs/{run_id}/fragment"))
    assert frag.status == 200
    assert len(frag.all("#run-body article.answer-card")) == 3
    assert frag.tree.css_first("header") is None  # a fragment, not a page
    # Vote the best-ranked answer up.
    best = rows[0].css("td")[1].text()
    form = page.one(f"#answer-{best} form.vote")
    assert form.attributes["action"] == f"/runs/{run_id}/vote"
    r = await b.http.post(f"/runs/{run_id}/vote", data={"csrf": page.csrf, "answer": best, "vote": "up"})
    assert (r.status_code, r.headers["location"]) == (303, f"/runs/{run_id}?voted={best}-up")
    after = await b.get(r.headers["location"])
    assert after.one("#voted").text().startswith("Thank you")
    # Without the form's token the vote is refused.
    refused = await b.http.post(f"/runs/{run_id}/vote", data={"answer": best, "vote": "up"})
    assert refused.status_code == 403
    board = await b.get("/leaderboard")
    assert {r.css("td")[1].text() for r in board.all("#board tbody tr")} == set(PANEL)
    top = board.all("#board tbody tr")[0].css("td")
    assert top[1].text() == rows[0].css("td")[2].text()  # the model voted up leads
    assert board.one("#rating-chart svg") is not None


async def test_a_running_ensemble_page_follows_the_run_and_renders_the_result_on_reload(web: WebEnv) -> None:
    b = web.admin
    body = {"members": ["demo/slow", "demo/fast"], "strategy": "heuristic", "synthesis": "best",
            "question": "slow one please", "stream": True}
    async with b.http.stream("POST", "/api/v1/ensembles", json=body, headers={"x-csrf-token": b.csrf}) as r:
        assert r.status_code == 200
        run_id = r.headers["x-thinktank-run-id"]
        page = await b.get(f"/runs/{run_id}")  # demo/slow answers after 1.5 s: the run is still going
        assert page.one("#run-status").text() == "running"
        assert page.one("#live").attributes["data-run"] == run_id
        assert page.one("#live-log").attributes["aria-live"] == "polite"
        assert page.one('script[src^="/static/js/compare.js"]') is not None
        await r.aread()
    record = await _finished(b, run_id)
    assert record["status"] == "completed"
    page = await b.get(f"/runs/{run_id}")
    assert page.all("#live") == []
    assert len(page.all("article.answer-card")) == 2
    assert "The best-ranked answer" in page.one("#synthesis").text()


async def test_starting_a_run_refuses_bad_forms(web: WebEnv) -> None:
    b = await web.member("bad@example.com")
    page = await b.get("/compare")
    no_csrf = await b.http.post("/runs", data={"ensemble": "ensemble/demo-council", "question": "q"})
    assert no_csrf.status_code == 403
    empty = await b.http.post("/runs", data={"csrf": page.csrf, "ensemble": "ensemble/demo-council",
                                             "question": "  "})
    assert empty.status_code == 400
    assert "question" in Page(empty).one("main").text()
    unknown = await b.http.post("/runs", data={"csrf": page.csrf, "ensemble": "ensemble/nope", "question": "q"})
    assert unknown.status_code == 404
    tags = await b.http.post("/runs", data={"csrf": page.csrf, "ensemble": "ensemble/demo-council",
                                            "question": "q", "tags": " ".join(f"t{i}" for i in range(11))})
    assert tags.status_code == 400


def _leaks(text: str) -> list[str]:
    return [m for m in PANEL if m in text]


async def test_arena_hides_the_models_everywhere_until_the_vote_then_reveals_them(web: WebEnv) -> None:
    b = await web.member("arena@example.com")
    arena = await b.get("/arena")
    assert arena.status == 200
    assert [o.attributes["value"] for o in arena.all("#arena-pool option")] == ["ensemble/demo-council"]
    assert _leaks(arena.response.text) == []
    run_id = await _start(b, "Pick a database", arena=True, tags="blind")
    record = await _finished(b, run_id)
    assert record["status"] == "completed"
    # Nothing the browser can get names a model before the vote: the page (text, attributes, data-*),
    # its fragment, the run record and its events.
    page = await b.get(f"/runs/{run_id}")
    assert page.status == 200
    assert _leaks(page.response.text) == []
    assert [_sub(c, "h3").text(strip=True) for c in page.all("article.answer-card")] == ["Answer A", "Answer B"]
    frag = await b.http.get(f"/runs/{run_id}/fragment")
    assert _leaks(frag.text) == []
    assert _leaks((await b.api("GET", f"/api/v1/runs/{run_id}")).text) == []
    assert _leaks((await b.api("GET", f"/api/v1/runs/{run_id}/events")).text) == []
    assert _leaks((await b.api("GET", f"/api/v1/runs/{run_id}/events?format=json")).text) == []
    recent = (await b.get("/compare")).one("#recent-runs")
    assert f"/runs/{run_id}" in [a.attributes["href"] for a in recent.css("a")]
    assert _leaks(recent.html or "") == []  # the list of recent runs (the picker above lists every model)
    buttons = page.all("#arena-vote button")
    assert [x.attributes["value"] for x in buttons] == ["A", "B", "tie"]
    r = await b.http.post(f"/runs/{run_id}/vote", data={"csrf": page.csrf, "winner": "B"})
    assert r.status_code == 303
    revealed = await b.get(r.headers["location"])
    names = [n.text() for n in revealed.all("article.answer-card .model-name")]
    assert len(names) == 2 and set(names) <= set(PANEL)
    assert "You picked B." in revealed.one("#reveal").text()
    assert revealed.one("article.answer-card:nth-child(2) .winner").text() == "winner"
    assert revealed.all("#arena-vote") == []  # voted once
    board = await b.get("/leaderboard?tag=blind")
    assert board.one("#tag").attributes["value"] == "blind"
    rows = board.all("#board tbody tr")
    assert [r.css("td")[1].text() for r in rows] == [names[1], names[0]]  # the winner first
    assert board.one("#rating-chart svg") is not None
    none = await b.get("/leaderboard?tag=nothing-tagged-so")
    assert none.all("#board") == [] and "No votes yet" in none.one("#no-votes").text()


async def test_another_users_run_is_a_404_on_every_page_and_fragment(web: WebEnv) -> None:
    owner = await web.member("owner@example.com")
    other = await web.member("other@example.com")
    run_id = await _start(owner, "mine")
    await _finished(owner, run_id)
    for path in (f"/runs/{run_id}", f"/runs/{run_id}/fragment"):
        assert (await other.http.get(path)).status_code == 404
    page = await other.get("/compare")
    vote = await other.http.post(f"/runs/{run_id}/vote", data={"csrf": page.csrf, "answer": "A", "vote": "up"})
    assert vote.status_code == 404
    assert (await other.http.get("/runs/run_does_not_exist")).status_code == 404
    # Signed out: to the sign-in page.
    anon = await web.browser()
    r = await anon.http.get(f"/runs/{run_id}")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_model_output_and_the_question_are_never_active_content(web: WebEnv) -> None:
    b = web.admin
    r = await b.api("POST", "/api/v1/ensembles", json={
        "members": ["demo/echo", "demo/fast"], "strategy": "heuristic", "synthesis": "best", "question": HOSTILE})
    assert r.status_code == 200, r.text
    run_id = r.headers["x-thinktank-run-id"]
    page = await b.get(f"/runs/{run_id}")
    assert page.status == 200
    assert page.one("#run-question").text() == HOSTILE  # shown as text
    echoed = [c for c in page.all("article.answer-card") if _sub(c, ".model-name").text() == "demo/echo"]
    assert "alert(1)" in _sub(echoed[0], ".md").text()
    _no_active_content(page)
    _no_active_content(Page(await b.http.get(f"/runs/{run_id}/fragment")), "#run-body")
