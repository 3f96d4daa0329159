"""Text from users and models that tries to run in the page, put everywhere a user or a model can put
text, then every page that shows it opened in Chromium: nothing runs, no dialog opens, no element the text
describes exists (no inline script, no event handler, no ``javascript:`` link, no frame), nothing is fetched
(an ``<img src=x>`` that became an element would ask for it), and the text is there to read."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.sync_api import Dialog, Page

from .harness import E2EServer, login

HOSTILE = ('<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'
           '<svg onload="window.__xss=1"></svg> [click](javascript:window.__xss=1) '
           '<a href="javascript:window.__xss=1">link</a><iframe src="javascript:window.__xss=1"></iframe> '
           "![pic](javascript:window.__xss=1) <b onmouseover=window.__xss=1>bold</b>")
EMAIL = "hostile-e2e@example.com"
PASSWORD = "a hostile member's password"

ACTIVE = """() => {
  const found = [];
  for (const el of document.querySelectorAll('*')) {
    for (const attr of el.attributes) {
      if (/^on/i.test(attr.name)) found.push(`${el.tagName} ${attr.name}`);
      if (/^\\s*javascript:/i.test(attr.value)) found.push(`${el.tagName} ${attr.name}=${attr.value.slice(0, 40)}`);
    }
    if (el.tagName === 'SCRIPT' && !el.src) found.push('inline script');
    if (['IFRAME', 'OBJECT', 'EMBED', 'FRAME'].includes(el.tagName)) found.push(el.tagName);
  }
  return found;
}"""


def _api(server: E2EServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


def _seed(server: E2EServer) -> dict[str, str]:
    """The member's hostile things, made through the API; where each is shown."""
    server.make_member(EMAIL, PASSWORD)
    token = httpx.post(server.url + "/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD}).json()["token"]
    with _api(server, token) as api:
        kb = api.post("/api/v1/knowledge-bases", json={"name": "hostile-kb", "description": HOSTILE})
        assert kb.status_code == 201, kb.text
        kb_id = kb.json()["id"]
        doc = api.post(f"/api/v1/knowledge-bases/{kb_id}/documents",
                       files={"files": ("<img src=x onerror=alert(1)>.md", f"# {HOSTILE}\n\n{HOSTILE}\n".encode(),
                                       "text/markdown")})
        assert doc.status_code in (200, 201), doc.text
        doc_id = doc.json()["data"][0]["document_id"]
        persona = api.post("/api/v1/personas", json={"name": HOSTILE[:100], "description": HOSTILE,
                                                     "system_prompt": HOSTILE})
        assert persona.status_code == 201, persona.text
        thread = api.post("/api/v1/threads", json={"model": "demo/echo", "title": HOSTILE[:200],
                                                   "persona_id": persona.json()["id"], "knowledge_bases": [kb_id]})
        assert thread.status_code == 201, thread.text
        thread_id = thread.json()["id"]
        said = api.post(f"/api/v1/threads/{thread_id}/messages", json={"content": HOSTILE})  # echoed back
        assert said.status_code == 200, said.text
        run = api.post("/api/v1/ensembles", json={"ensemble": "demo-council", "question": HOSTILE})
        assert run.status_code == 200, run.text
        debate = api.post("/api/v1/debates", json={"debate": "demo-panel", "question": HOSTILE, "rounds": 1})
        assert debate.status_code == 200, debate.text
    with _api(server, server.admin_key) as admin:
        team = admin.post("/api/v1/teams", json={"name": HOSTILE[:200]})
        assert team.status_code == 201, team.text
    return {"thread": f"/chat/{thread_id}", "kb": f"/knowledge/{kb_id}",
            "doc": f"/knowledge/{kb_id}/documents/{doc_id}", "run": f"/runs/{run.json()['id']}",
            "debate": f"/debate/{debate.json()['id']}"}


def _visit(page: Page, path: str, dialogs: list[str]) -> list[str]:
    page.goto(path)
    page.wait_for_load_state("networkidle")
    page.mouse.move(200, 300)  # a mouse-over handler, had one slipped through
    problems = [f"{path}: {p}" for p in page.evaluate(ACTIVE)]
    if page.evaluate("() => window.__xss") is not None:
        problems.append(f"{path}: the hostile script ran")
    problems += [f"{path}: dialog {d}" for d in dialogs]
    dialogs.clear()
    return problems


def _record_dialogs(page: Page) -> list[str]:
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return dialogs


def test_hostile_text_never_runs_on_any_page(page: Page, server: E2EServer) -> None:
    where = _seed(server)
    dialogs = _record_dialogs(page)
    login(page, server, EMAIL, PASSWORD)
    member_pages = ["/chat", where["thread"], "/knowledge", where["kb"], where["doc"], "/compare", where["run"],
                    "/debate", where["debate"], "/leaderboard", "/me", f"{where['kb']}?q=script"]
    problems: list[str] = []
    for path in member_pages:
        problems += _visit(page, path, dialogs)
    # The hostile text is there, as text.
    page.goto(where["thread"])
    assert "window.__xss=1" in page.locator("main").inner_text()
    page.goto(where["kb"])
    assert "<script>" in page.locator("main").inner_text()
    assert not problems, "\n".join(problems)


def test_hostile_team_names_never_run_on_admin_pages(page: Page, server: E2EServer) -> None:
    with _api(server, server.admin_key) as admin:
        r = admin.post("/api/v1/teams", json={"name": "<img src=x onerror=window.__xss=1> team"})
        assert r.status_code == 201, r.text
    dialogs = _record_dialogs(page)
    login(page, server, server.admin_email, server.admin_password)
    links: list[Any] = page.evaluate("() => [...document.querySelectorAll('a[href^=\"/admin\"]')].map(a => a.href)")
    paths = {"/admin", *(re.sub(r"^https?://[^/]+", "", str(u)) for u in links)}
    problems: list[str] = []
    for path in sorted(paths):
        problems += _visit(page, path, dialogs)
    assert not problems, "\n".join(problems)
