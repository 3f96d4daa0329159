"""The Debate pages against the real app on loopback: a debate started from the page's form runs with the demo
panel to its plan, and its page shows the analysis, the persona cards, the rounds with what changed, the
agreement chart, the stop reason, the synthesis and the plan; owners only; hostile text is never markup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from selectolax.lexbor import LexborNode as Node

from thinktank.api.app import create_app
from thinktank.config import DebateConfig, DeploymentConfig, GatewayConfig, PersonaConfig, Settings
from thinktank.discovery import demo_config, merge
from thinktank.knowledge.embeddings import LocalEmbedder
from thinktank.web.views.debate_model import word_diff

from ..fakes.server import serving
from .conftest import ADMIN_EMAIL, ADMIN_KEY, PASSWORD, Browser, Page, WebEnv


async def start(b: Browser, question: str, *, debate: str = "demo-panel", rounds: str = "3",
                plan: bool = True) -> str:
    """Start a debate through the page's form; the run id it redirects to."""
    page = await b.get("/debate")
    assert page.status == 200
    form = {"csrf": page.form_value("csrf", "form.start-form"), "debate": debate, "question": question,
            "rounds": rounds, "experts": "", "follow_up": "1"}
    if plan:
        form["plan"] = "1"
    r = await b.http.post("/debate", data=form)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith("/debate/run")
    return location.removeprefix("/debate/")


async def finish(b: Browser, run_id: str) -> dict[str, Any]:
    """Follow the run's events (the page script's stream) until it ends; its record."""
    async with b.http.stream("GET", f"/api/v1/runs/{run_id}/events") as r:
        assert r.status_code == 200
        async for _ in r.aiter_lines():
            pass
    record: dict[str, Any] = (await b.api("GET", f"/api/v1/runs/{run_id}")).json()
    assert record["status"] != "running"
    return record


def sub(node: Node, selector: str) -> Node:
    found = node.css_first(selector)
    assert found is not None, selector
    return found


def body_text(page: Page, selector: str) -> str:
    return page.one(selector).text(separator=" ", strip=True)


async def test_a_debate_started_from_the_page_runs_to_its_plan(web: WebEnv) -> None:
    b = await web.member("debater@example.com")
    index = await b.get("/debate")
    assert [o.attributes.get("value") for o in index.all("select[name=debate] option")] == ["demo-panel"]
    assert "checked" in index.one("#debate-plan").attributes

    run_id = await start(b, "Which database should our first version use?")
    record = await finish(b, run_id)
    assert record["status"] == "completed"
    result = record["result"]

    page = await b.get(f"/debate/{run_id}")
    assert page.status == 200
    assert page.one(".timeline").attributes["data-status"] == "completed"
    assert page.one("#debate-status").text(strip=True) == "completed"
    assert not page.all(".cancel-form")
    # the analysis
    assert "software architecture" in page.texts(".analysis .badge")
    # the panel as persona cards, each with its domain and model
    cards = page.all(".panel .persona")
    assert len(cards) == len(result["panel"]) >= 3
    assert [sub(c, ".persona-name").text(strip=True) for c in cards] == [p["name"] for p in result["panel"]]
    assert {sub(c, ".persona-model code").text(strip=True) for c in cards} <= {"demo/alpha", "demo/beta",
                                                                                      "demo/gamma"}
    # the rounds: the demo judge scores 0.55 then 0.9, so the panel converges in round 2
    rounds = page.all(".rounds > li.round")
    assert len(rounds) == result["rounds_held"] == 2
    assert len(rounds[0].css(".position")) == len(cards)
    assert not rounds[0].css(".diff")
    second = rounds[1]
    assert sub(second, ".follow-up").text(strip=True).endswith("What would make you change your recommendation?")
    diffs = second.css(".position .diff")
    assert len(diffs) == len(cards)
    inserted = " ".join(n.text() for n in diffs[0].css("ins"))
    assert "Agreed" in inserted and "measure" in inserted
    assert diffs[0].css("del")  # the first round's position, struck out
    assert [n.text(strip=True) for n in page.all(".round .agreement strong")] == ["0.55", "0.90"]
    # the agreement chart, drawn on the server
    chart = page.one(".agreement-chart svg.chart")
    assert chart.attributes.get("role") == "img"
    assert len(chart.css("circle.point")) >= 2
    assert "converged" in body_text(page, "#stop-reason")
    # the synthesis as Markdown
    synthesis = page.one(".synthesis .md")
    assert [h.text(strip=True) for h in synthesis.css("h2")] == [
        "Answer", "Points of agreement", "Remaining disagreements", "Confidence"]
    # plan.md and tasks.md rendered, and downloadable
    assert page.one("#doc-plan-md .md h1").text(strip=True) == "Plan"
    assert page.one("#doc-tasks-md .md h1").text(strip=True) == "Tasks"
    link = page.one("#doc-plan-md a.download").attributes["href"]
    assert link == f"/api/v1/runs/{run_id}/documents/plan.md"
    r = await b.http.get(link)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/markdown")
    assert r.headers["content-disposition"] == 'attachment; filename="plan.md"'
    assert r.text.startswith("# Plan")

    # the fragment the page's script swaps in is the same timeline
    fragment = Page(await b.http.get(f"/debate/{run_id}/timeline", headers={"x-requested-with": "fetch"}))
    assert fragment.status == 200
    assert fragment.one(".timeline").attributes["data-seq"] == page.one(".timeline").attributes["data-seq"]
    assert len(fragment.all(".panel .persona")) == len(cards)
    assert not fragment.all("header.top")  # no layout

    # the list of the user's debates links to it
    index = await b.get("/debate")
    assert [a.attributes["href"] for a in index.all(".debate-runs tbody a")] == [f"/debate/{run_id}"]
    assert index.texts(".debate-runs tbody .badge") == ["completed"]


async def test_a_running_debate_renders_from_its_events_and_can_be_cancelled_from_the_page(web: WebEnv) -> None:
    b = await web.member("canceller@example.com")
    run_id = await start(b, "Should we rewrite the billing service?")
    page = await b.get(f"/debate/{run_id}")
    assert page.status == 200
    timeline = page.one(".timeline")
    assert timeline.attributes["data-status"] == "running"
    assert int(timeline.attributes["data-seq"] or 0) >= 1
    assert page.one("script[type=module][src^='/static/js/debate.js']")
    form = page.one("form.cancel-form")
    assert form.attributes["action"] == f"/debate/{run_id}/cancel"

    # without the session's CSRF token the cancel is refused
    r = await b.http.post(f"/debate/{run_id}/cancel", data={"csrf": "wrong"})
    assert r.status_code == 403
    r = await b.http.post(f"/debate/{run_id}/cancel", data={"csrf": page.form_value("csrf", "form.cancel-form")})
    assert r.status_code == 303
    record = await finish(b, run_id)
    assert record["status"] == "cancelled"
    page = await b.get(f"/debate/{run_id}")
    assert page.one("#debate-status").text(strip=True) == "cancelled"
    assert not page.all(".cancel-form")
    assert "cancelled" in body_text(page, ".status-line .run-error")


async def test_another_users_debate_is_not_found_on_every_page_and_fragment(web: WebEnv) -> None:
    owner = await web.member("owner@example.com")
    other = await web.member("other@example.com")
    run_id = await start(owner, "Is this mine?", rounds="1", plan=True)
    await finish(owner, run_id)

    for path in (f"/debate/{run_id}", f"/debate/{run_id}/timeline", f"/api/v1/runs/{run_id}/documents/plan.md"):
        r = await other.http.get(path)
        assert r.status_code == 404, path
        assert "Is this mine?" not in r.text
    other_index = await other.get("/debate")
    assert other_index.csrf
    r = await other.http.post(f"/debate/{run_id}/cancel", data={"csrf": other_index.csrf})
    assert r.status_code == 404
    assert not other_index.all(".debate-runs tbody tr")
    # the owner's own download works; a run that is not a debate is no debate page
    assert (await owner.http.get(f"/api/v1/runs/{run_id}/documents/plan.md")).status_code == 200
    r = await owner.api("POST", "/api/v1/ensembles", json={"ensemble": "demo-council", "question": "Hi?"})
    assert r.status_code == 200, r.text
    assert (await owner.get(f"/debate/{r.json()['id']}")).status == 404
    assert (await owner.get("/debate/run_doesnotexist")).status == 404
    # signed out: to the sign-in page
    anonymous = await web.browser()
    r = await anonymous.http.get(f"/debate/{run_id}")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=")


async def test_the_start_form_refuses_bad_input_and_cross_site_posts(web: WebEnv) -> None:
    b = await web.member("former@example.com")
    page = await b.get("/debate")
    csrf = page.form_value("csrf", "form.start-form")
    r = await b.http.post("/debate", data={"csrf": csrf, "debate": "demo-panel", "question": "  ", "rounds": "2"})
    assert r.status_code == 400
    again = Page(r)
    assert "empty" in again.one("#start-error").text()
    r = await b.http.post("/debate", data={"csrf": csrf, "debate": "demo-panel", "question": "Q?", "rounds": "99"})
    assert r.status_code == 400
    assert "rounds" in Page(r).one("#start-error").text()
    assert Page(r).one("#debate-rounds").attributes["value"] == "99"  # what was typed stays
    r = await b.http.post("/debate", data={"csrf": csrf, "debate": "no-such", "question": "Q?"})
    assert r.status_code == 404
    r = await b.http.post("/debate", data={"debate": "demo-panel", "question": "Q?"})
    assert r.status_code == 403
    r = await b.http.post("/debate", data={"csrf": csrf, "debate": "demo-panel", "question": "Q?"},
                          headers={"origin": "https://evil.example"})
    assert r.status_code == 403
    assert not (await b.get("/debate")).all(".debate-runs tbody tr")


async def test_the_list_of_debates_pages_back_in_time(web: WebEnv) -> None:
    b = await web.member("pager@example.com")
    first = await start(b, "First question?", rounds="1", plan=False)
    await finish(b, first)
    second = await start(b, "Second question?", rounds="1", plan=False)
    await finish(b, second)
    index = await b.get("/debate")
    assert [a.attributes["href"] for a in index.all(".debate-runs tbody a")] == [f"/debate/{second}",
                                                                               f"/debate/{first}"]
    newer = (await b.api("GET", f"/api/v1/runs/{second}")).json()["created_at"]
    older = await b.get(f"/debate?before={newer!r}")
    assert [a.attributes["href"] for a in older.all(".debate-runs tbody a")] == [f"/debate/{first}"]
    assert older.one("nav.pager a").attributes["href"] == "/debate"
    assert (await b.get("/debate?before=nan")).status == 400


# -- hostile text ---------------------------------------------------------------------------------

EVIL = ('<script>alert("x")</script> <img src=x onerror=alert(1)> [click](javascript:alert(2)) '
        '<a href="javascript:alert(3)">link</a> <iframe src="https://evil.example"></iframe>')
EVIL_NAME = '<script>alert("p")</script>Eve <img src=x onerror=alert(4)>'


def _evil_config() -> GatewayConfig:
    rules = [
        {"match": r"Write the task list", "reply": f"# Tasks\n{EVIL}"},
        {"match": r"Turn it into a plan", "reply": f"# Plan\n{EVIL}"},
        {"match": r"write the final answer for the person who asked", "reply": f"## Answer\n{EVIL}"},
        {"match": r"pose one short follow-up", "reply": '<script>alert("f")</script> follow?'},
        {"match": r"How much do they agree", "reply": '{"agreement": 0.2}'},
        {"match": r"Classify this question", "reply":
            '{"domains": ["<script>alert(5)</script>"], "kind": "<img src=x onerror=alert(6)>", '
            '"needs": ["[n](javascript:alert(7))"]}'},
        {"match": r"STANCE: revise", "reply": f"STANCE: rebut\nNow: {EVIL} changed"},
    ]
    evil = DeploymentConfig(name="demo/evil", provider="mock", model="demo/evil", context_window=32000,
                            options={"rules": rules, "replies": [f"First: {EVIL}"]})
    persona = PersonaConfig(name=EVIL_NAME, domain='<b>bold</b> "domain"', backstory=EVIL,
                            stance="<img src=x onerror=alert(8)>", model="demo/evil")
    debate = DebateConfig(name="evil-panel", models=["demo/evil"], rounds=2, personas=[EVIL_NAME], plan=True)
    return merge(demo_config(), GatewayConfig(models=[evil], debates=[debate], personas=[persona]))


@pytest.fixture
async def evil_web(tmp_path: Path, local_embedder: LocalEmbedder) -> AsyncIterator[Browser]:
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN_KEY, admin_email=ADMIN_EMAIL,
                        admin_password=PASSWORD)
    app = create_app(settings, _evil_config(), local_embedder=local_embedder, quiet=True)
    async with serving(app) as url:
        b = Browser(url)
        try:
            assert (await b.sign_in(ADMIN_EMAIL)).status_code == 303
            yield b
        finally:
            await b.close()


def assert_inert(page: Page) -> None:
    """Nothing in the page runs or loads: only our own module scripts, no handlers, no javascript: links."""
    scripts = page.all("script")
    assert scripts
    assert all((s.attributes.get("src") or "").startswith("/static/js/") for s in scripts), [s.html for s in scripts]
    assert not page.all("iframe")
    for node in page.all("*"):
        for name, value in node.attributes.items():
            assert not name.lower().startswith("on"), node.html
            assert not (value or "").strip().lower().startswith("javascript:"), node.html
    assert all((img.attributes.get("src") or "") != "x" for img in page.all("img"))


async def test_persona_text_model_output_and_the_question_are_never_markup(evil_web: Browser) -> None:
    b = evil_web
    run_id = await start(b, f"Question {EVIL}", debate="evil-panel", rounds="2")
    record = await finish(b, run_id)
    assert record["status"] == "completed", record["error"]
    page = await b.get(f"/debate/{run_id}")
    assert page.status == 200
    assert_inert(page)
    # shown as text where it is text
    assert page.one(".question .pre").text() == f"Question {EVIL}"
    card = page.one(".panel .persona")
    assert sub(card, ".persona-name").text() == EVIL_NAME
    assert sub(card, ".persona-stance").text() == "<img src=x onerror=alert(8)>"
    assert sub(card, ".persona-backstory").text() == EVIL
    assert "<script>alert(5)</script>" in page.texts(".analysis .badge")
    assert page.one(".follow-up").text(strip=True).endswith('<script>alert("f")</script> follow?')
    assert any("<img src=x onerror=alert(1)>" in n.text() for n in page.all(".position .diff ins, .position .diff"))
    assert len(page.all(".rounds > li.round")) == 2
    # the synthesis and the plan went through the Markdown sanitiser: the link text stays, the script is gone
    assert page.one("#doc-plan-md .md h1").text(strip=True) == "Plan"
    assert "click" in page.one(".synthesis .md").text()
    for node in (*page.all(".timeline"), *page.all(".question")):
        assert node.css_first("script") is None
    fragment = Page(await b.http.get(f"/debate/{run_id}/timeline"))
    assert fragment.status == 200
    assert fragment.all("script, iframe, [onerror]") == []
    assert fragment.one(".persona-name").text() == EVIL_NAME
    index = await b.get("/debate")
    assert_inert(index)
    assert index.one(".debate-runs tbody a").text(strip=True).startswith("Question <script>")


def test_word_diff_marks_what_changed_and_keeps_the_text() -> None:
    diff = word_diff("Use SQLite first, then PostgreSQL.", "Use PostgreSQL first, then add Redis.")
    assert diff is not None
    assert "".join(t for op, t in diff if op != "del") == "Use PostgreSQL first, then add Redis."
    assert "".join(t for op, t in diff if op != "ins") == "Use SQLite first, then PostgreSQL."
    assert ("del", "SQLite") in diff
    assert ("ins", "PostgreSQL") in diff
    assert word_diff("same words", "same words") == [("eq", "same words")]
    assert word_diff("a " * 7000, "b") is None  # too long to compare: shown whole


def test_a_running_debate_is_read_from_its_events() -> None:
    from thinktank.deliberation.experts import load_library
    from thinktank.deliberation.runs import Event
    from thinktank.web.views.debate_model import build_debate, from_events

    library = load_library()
    expert = library[0]
    panel = [{"name": expert.name, "domain": expert.domain, "stance": expert.stance, "model": "demo/alpha"}]
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("run_started", {"kind": "debate"}),
        ("analysis", {"domains": ["software"], "kind": "decision", "needs": []}),
        ("panel", {"experts": panel}),
        ("stage_started", {"stage": "round 1"}),
        ("round", {"round": 1, "positions": [{"expert": expert.name, "model": "demo/alpha", "stance": "initial",
                                              "text": "Use SQLite."}]}),
        ("convergence", {"round": 1, "score": 0.4, "threshold": 0.8}),
        ("follow_up", {"round": 1, "question": "Why not PostgreSQL?"}),
        ("stage_started", {"stage": "round 2"}),
        ("round", {"round": 2, "positions": [{"expert": expert.name, "model": "demo/alpha", "stance": "revise",
                                              "text": "Use PostgreSQL."}]}),
        ("stage_started", {"stage": "synthesis"}),
        ("synthesis_token", {"text": "## Ans"}),
        ("synthesis_token", {"text": "wer"}),
    ]
    events = [Event(i + 1, 0.0, t, d) for i, (t, d) in enumerate(kinds)]
    record = {"id": "run_x", "name": "demo-panel", "status": "running", "question": "Which database?",
              "config": {"convergence": 0.8, "recruit": "library"}, "documents": []}
    debate = build_debate(record, from_events(events), library)
    assert debate.running and debate.stage == "synthesis" and debate.seq == len(events)
    assert [c.name for c in debate.panel] == [expert.name]
    assert debate.panel[0].backstory == expert.backstory  # a library persona's backstory is on its card
    first, second = debate.rounds
    assert (first.agreement, first.scored, first.follow_up) == (0.4, True, None)
    assert (second.agreement, second.scored, second.follow_up) == (None, False, "Why not PostgreSQL?")
    assert second.positions[0].diff == [("eq", "Use "), ("del", "SQLite."), ("ins", "PostgreSQL.")]
    assert debate.answer is None and debate.answer_live == "## Answer"
    assert debate.agreement_points == [(1.0, 0.4)]


async def test_a_debate_run_at_runs_goes_to_its_debate_page(web: WebEnv) -> None:
    r = await web.admin.api("POST", "/api/v1/debates", json={"debate": "demo-panel", "question": "Which database?",
                                                             "rounds": 1})
    assert r.status_code == 200, r.text
    run_id = r.json()["id"]
    page = await web.admin.http.get(f"/runs/{run_id}")
    assert (page.status_code, page.headers["location"]) == (303, f"/debate/{run_id}")
    stranger = await web.member("runs-stranger@example.com")
    assert (await stranger.http.get(f"/runs/{run_id}")).status_code == 404  # checked before it redirects
