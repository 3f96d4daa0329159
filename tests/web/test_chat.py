"""The chat pages over real HTTP with the demo models: the thread list (search, pages, rename, archive,
delete, export, import), a thread and its message fragments, the model picker, escaping of user and model
text, and 404s for another user's thread on every page and fragment."""

from __future__ import annotations

from typing import Any

import orjson
from selectolax.lexbor import LexborNode as Node

from .conftest import Browser, Page, WebEnv

HOSTILE = ('<script>alert(1)</script> <img src=x onerror=alert(1)> [click](javascript:alert(1)) '
           '<a href="javascript:alert(2)">x</a> <iframe src="https://evil.example"></iframe>')


def _one(node: Node, css: str) -> Node:
    found = node.css_first(css)
    assert found is not None, css
    return found


async def _thread(b: Browser, **body: Any) -> dict[str, Any]:
    r = await b.api("POST", "/api/v1/threads", json={"model": "demo/echo", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _say(b: Browser, thread_id: str, content: str) -> dict[str, Any]:
    r = await b.api("POST", f"/api/v1/threads/{thread_id}/messages", json={"content": content})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _post(b: Browser, path: str, data: dict[str, Any], **kw: Any) -> Any:
    return await b.http.post(path, data={"csrf": b.csrf, **data}, **kw)


def _no_active_content(page: Page, root: str = "main") -> None:
    """Nothing the user or a model wrote became script, an event handler, a javascript: link or a frame."""
    main = page.one(root)
    assert main.css("script, iframe, img, object, embed") == []
    for node in main.css("*"):
        for name, value in node.attributes.items():
            assert not name.startswith("on"), (node.tag, name)
            assert not (value or "").strip().lower().startswith("javascript:"), (node.tag, name, value)


async def test_the_picker_lists_what_the_user_may_use_grouped_with_prices(web: WebEnv) -> None:
    kb = await web.admin.api("POST", "/api/v1/knowledge-bases", json={"name": "handbook"})
    assert kb.status_code == 201, kb.text
    page = await web.admin.get("/chat")
    assert page.status == 200
    groups = {g.attributes["label"]: [o.attributes["value"] for o in g.css("option")]
              for g in page.all("#new-model optgroup")}
    assert {"Models", "Groups", "Ensembles", "Debates", "Knowledge bases"} <= set(groups)
    assert "demo/echo" in groups["Models"] and "demo/auto" in groups["Groups"]
    assert groups["Ensembles"] == ["ensemble/demo-council"] and groups["Debates"] == ["debate/demo-panel"]
    assert groups["Knowledge bases"] == ["kb/handbook"]
    echo = page.one('#new-model option[value="demo/echo"]').text()
    assert "free" in echo  # the mock deployments are local: a known price of 0
    assert [i.attributes["value"] for i in page.all('#new-chat input[name="kb"]')] == [kb.json()["id"]]
    assert page.one('label[for="new-model"]') and page.one('label[for="new-persona"]')

    # A member limited to some models sees only those (no ensembles, debates, or knowledge bases' models).
    member = await web.member("limited@example.com", models=["demo/echo", "demo/fast"])
    mine = await member.get("/chat")
    options = [o.attributes["value"] for o in mine.all("#new-model option")]
    assert options == ["demo/echo", "demo/fast"]
    assert mine.all('#new-chat input[name="kb"]') == []  # the admin's knowledge base is not theirs


async def test_a_new_chat_from_the_form_and_the_thread_page(web: WebEnv) -> None:
    b = web.admin
    r = await _post(b, "/chat/new", {"model": "demo/fast", "message": "Hello there", "title": ""})
    assert r.status_code == 303
    path = r.headers["location"]
    page = await b.get(path)
    assert page.status == 200
    assert page.one("h1#thread-title").text(strip=True) == "Hello there"  # titled from the first message
    articles = page.all("article.msg")
    assert [a.attributes["data-role"] for a in articles] == ["user", "assistant"]
    assert _one(articles[0], ".text").text() == "Hello there"
    answer = articles[1]
    assert "scripted demo answer" in _one(answer, ".md").text()
    assert "tokens" in _one(answer, ".usage").text()
    assert answer.attributes.get("data-last") == "1" and answer.css_first('button[data-action="regenerate"]')
    assert articles[0].css_first('button[data-action="edit"]') and answer.css_first('button[data-action="copy"]')
    assert page.one('#composer textarea[name="message"]') and "hidden" in page.one("#stop").attributes
    assert "selected" in page.one('#thread-model option[value="demo/fast"]').attributes

    # The composer without the page script, then the fragment of the stored answer.
    thread_id = path.rsplit("/", 1)[1]
    r = await _post(b, f"{path}/send", {"message": "And again"})
    assert r.status_code == 303
    data = (await b.api("GET", f"/api/v1/threads/{thread_id}/messages")).json()["data"]
    assert [m["content"] for m in data][2] == "And again"
    fragment = Page(await b.http.get(f"{path}/messages/{data[3]['id']}"))
    assert fragment.status == 200
    assert fragment.one("article.msg").attributes["id"] == data[3]["id"]
    assert fragment.one("article.msg").attributes.get("data-last") == "1"
    old = Page(await b.http.get(f"{path}/messages/{data[1]['id']}"))
    assert old.one("article.msg").attributes.get("data-last") is None  # no Regenerate on earlier answers

    # Settings: another model, no knowledge bases.
    r = await _post(b, f"{path}/settings", {"model": "ensemble/demo-council", "persona": ""})
    assert r.status_code == 303
    assert (await b.api("GET", f"/api/v1/threads/{thread_id}")).json()["model"] == "ensemble/demo-council"


async def test_user_and_model_text_is_never_active(web: WebEnv) -> None:
    b = web.admin
    thread = await _thread(b, title=HOSTILE[:200])
    await _say(b, thread["id"], HOSTILE + "\n\n<b>bold?</b> ![img](javascript:alert(3))")  # demo/echo says it back
    page = await b.get(f"/chat/{thread['id']}")
    assert page.status == 200
    assert page.one("h1#thread-title").text().startswith("<script>alert(1)</script>")
    user, answer = page.all("article.msg")
    assert "<img src=x onerror=alert(1)>" in _one(user, ".text").text()
    assert "<script>" in _one(answer, ".md").text() or "alert(1)" in _one(answer, ".md").text()
    _no_active_content(page)
    listing = await b.get("/chat")
    assert HOSTILE[:30] in listing.one(".thread-title").text()
    _no_active_content(listing)
    msgs = (await b.api("GET", f"/api/v1/threads/{thread['id']}/messages")).json()["data"]
    for m in msgs:
        fragment = Page(await b.http.get(f"/chat/{thread['id']}/messages/{m['id']}"))
        assert fragment.status == 200 and fragment.one("article.msg")
        _no_active_content(fragment, "body")


async def test_another_users_thread_is_a_404_on_every_page_and_fragment(web: WebEnv) -> None:
    thread = await _thread(web.admin)
    stored = await _say(web.admin, thread["id"], "private")
    mid = stored["message"]["id"]
    eve = await web.member("eve@example.com")
    base = f"/chat/{thread['id']}"
    assert (await eve.get(base)).status == 404
    assert (await eve.get(f"{base}/messages/{mid}")).status == 404
    for action, data in (("rename", {"title": "mine"}), ("archive", {"archived": "1"}), ("delete", {}),
                         ("settings", {"model": "demo/fast"}), ("send", {"message": "hi"})):
        r = await _post(eve, f"{base}/{action}", data)
        assert r.status_code == 404, (action, r.text)
    # and a message of the owner's other thread is not found through this one
    other = await _thread(web.admin)
    assert (await web.admin.get(f"/chat/{other['id']}/messages/{mid}")).status == 404
    after = (await web.admin.api("GET", f"/api/v1/threads/{thread['id']}")).json()
    assert (after["title"], after["archived"], after["model"]) == ("private", False, "demo/echo")
    # a form without the CSRF token is refused
    r = await web.admin.http.post(f"{base}/rename", data={"title": "x"})
    assert r.status_code == 403


async def test_search_rename_archive_delete_through_the_pages(web: WebEnv) -> None:
    b = web.admin
    a = await _thread(b, title="Rust lifetimes")
    c = await _thread(b, title="Cooking rice")
    page = await b.get("/chat?q=rust")
    assert page.texts(".thread-title") == ["Rust lifetimes"]
    assert page.one('input[name="q"]').attributes["value"] == "rust"
    assert (await b.get("/chat?q=nothing-like-it")).all(".thread-title") == []

    assert (await _post(b, f"/chat/{a['id']}/rename", {"title": "Borrowing", "back": "/chat"})).status_code == 303
    assert (await b.get("/chat")).texts(".thread-title") == ["Borrowing", "Cooking rice"]
    r = await _post(b, f"/chat/{c['id']}/archive", {"archived": "1"})
    assert (r.status_code, r.headers["location"]) == (303, "/chat")
    assert (await b.get("/chat")).texts(".thread-title") == ["Borrowing"]
    archived = await b.get("/chat?archived=1")
    assert archived.texts(".thread-title") == ["Cooking rice"]
    assert (await _post(b, f"/chat/{c['id']}/archive", {"archived": "0"})).status_code == 303
    assert sorted((await b.get("/chat")).texts(".thread-title")) == ["Borrowing", "Cooking rice"]
    delete = (await b.get("/chat")).one(f'form[action="/chat/{a["id"]}/delete"]')
    assert delete.attributes.get("data-confirm")
    assert (await _post(b, f"/chat/{a['id']}/delete", {})).status_code == 303
    assert (await b.get("/chat")).texts(".thread-title") == ["Cooking rice"]
    assert (await b.get(f"/chat/{a['id']}")).status == 404


async def test_export_links_and_import_of_an_export(web: WebEnv) -> None:
    b = web.admin
    thread = await _thread(b, title="To take away")
    await _say(b, thread["id"], "Remember **this**")
    page = await b.get("/chat")
    links = [str(a.attributes["href"]) for a in page.all(".thread-item a") if "/export" in str(a.attributes["href"])]
    assert sorted(links) == sorted(f"/api/v1/threads/{thread['id']}/export?format={f}" for f in ("json", "markdown"))
    md = await b.http.get(links[0] if "markdown" in links[0] else links[1])
    assert md.status_code == 200 and "# To take away" in md.text
    exported = (await b.http.get(f"/api/v1/threads/{thread['id']}/export?format=json")).content
    r = await b.http.post("/chat/import", data={"csrf": b.csrf},
                          files={"file": ("thread.json", exported, "application/json")})
    assert r.status_code == 303, r.text
    imported = await b.get(r.headers["location"])
    assert imported.one("h1#thread-title").text() == "To take away"
    assert _one(imported.all("article.msg")[0], ".text").text(strip=True) == "Remember **this**"
    assert sorted((await b.get("/chat")).texts(".thread-title")) == ["To take away", "To take away"]
    bad = await b.http.post("/chat/import", data={"csrf": b.csrf},
                            files={"file": ("x.json", orjson.dumps({"thread": {}}), "application/json")})
    assert bad.status_code == 400 and Page(bad).one("main").text()


async def test_the_list_shows_the_latest_threads_and_a_more_link(web: WebEnv) -> None:
    b = web.admin
    for i in range(53):
        await _thread(b, title=f"thread {i:02d}")
    first = await b.get("/chat")
    titles = first.texts(".thread-title")
    assert len(titles) == 50 and titles[0] == "thread 52"
    more = first.one("a.more").attributes["href"]
    assert more is not None
    rest = (await b.get(more)).texts(".thread-title")
    assert rest == ["thread 02", "thread 01", "thread 00"]
    assert not (await b.get(more)).all("a.more")


async def test_a_grounded_answer_lists_its_numbered_sources(web: WebEnv) -> None:
    b = web.admin
    kb = (await b.api("POST", "/api/v1/knowledge-bases", json={"name": "garden"})).json()
    doc = "Tomatoes need <b>six hours</b> of sun a day. <script>alert(1)</script> They like warm soil."
    r = await b.api("POST", f"/api/v1/knowledge-bases/{kb['id']}/documents",
                    json={"documents": [{"name": "tomatoes.txt", "text": doc}]})
    assert r.status_code == 201, r.text
    thread = await _thread(b, model="demo/librarian", knowledge_bases=[kb["id"]])
    turn = await _say(b, thread["id"], "How much sun do tomatoes need?")
    assert turn["message"]["citations"], turn
    page = await b.get(f"/chat/{thread['id']}")
    answer = page.all("article.msg")[1]
    cite = answer.css_first("a.cite")
    assert cite is not None and cite.attributes["data-cite"] == "1"
    source = answer.css_first(f"details#{answer.attributes['id']}-cite-1")
    assert source is not None
    assert "tomatoes.txt" in _one(source, "summary").text()
    assert "six hours" in _one(source, ".passage").text()
    _no_active_content(page)
    # The source opens its passage in the document's page, marked as the one cited.
    href = _one(source, "a.open-passage").attributes["href"] or ""
    doc_page = await b.get(href)
    assert doc_page.status == 200
    cited = doc_page.all("li.passage-item.cited")
    assert len(cited) == 1 and "six hours" in cited[0].text()
    assert cited[0].css_first(f"#{href.rsplit('#', 1)[1]}") is not None  # the anchor the link jumps to
    stranger = await web.member("passage-stranger@example.com")
    assert (await stranger.get(href)).status == 404


async def test_a_long_thread_pages_back_to_its_earlier_messages(web: WebEnv) -> None:
    from thinktank.store.tables import ThreadMessage

    b = web.admin
    thread = await _thread(b, model="demo/echo")
    async with web.app.state.db.session() as s:  # 205 messages, as a long conversation leaves them
        s.add_all(ThreadMessage(id=f"msg_long{i:04d}", thread_id=thread["id"], seq=i,
                                role="user" if i % 2 else "assistant", content=f"message number {i}",
                                created_at=1_800_000_000.0 + i) for i in range(1, 206))
    latest = await b.get(f"/chat/{thread['id']}")
    shown = latest.all("article.msg")
    assert len(shown) == 200
    assert "message number 6" in shown[0].text() and "message number 205" in shown[-1].text()
    assert latest.one("#composer").attributes.get("hidden") is None
    href = latest.one('a[rel="prev"]').attributes["href"]
    assert href == f"/chat/{thread['id']}?before=6"
    earlier = await b.get(href or "")
    older = earlier.all("article.msg")
    assert [_one(m, ".text, .md").text(strip=True) for m in older] == [f"message number {i}" for i in range(1, 6)]
    assert not earlier.all('a[rel="prev"]')  # nothing before the first
    assert "hidden" in earlier.one("#composer").attributes  # no replying from the past
    assert not earlier.all('[data-action="edit"]')
    assert earlier.one('#latest-note a[rel="next"]').attributes["href"] == f"/chat/{thread['id']}#end"
    for bad in ("0", "-1", "99999999999999999999", "x"):
        assert (await b.get(f"/chat/{thread['id']}?before={bad}")).status == 400
    stranger = await web.member("long-thread-stranger@example.com")
    assert (await stranger.get(href or "")).status == 404
