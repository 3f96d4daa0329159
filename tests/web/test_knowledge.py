"""The Knowledge pages through the real app on loopback: knowledge bases made, shared and deleted with
the pages' forms, documents uploaded the way the page's script does (one file per request, cookie and
CSRF header), the paginated document list, the search playground's scores, the document view a
citation links to, the review queue, owner checks and escaping."""

from __future__ import annotations

import re
from typing import Any

import httpx
from selectolax.lexbor import LexborNode as Node

from .conftest import ADMIN_KEY, Browser, Page, WebEnv

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)"> [click](javascript:alert(3))'


async def _form(b: Browser, path: str, data: dict[str, str], csrf: str | None = None) -> httpx.Response:
    return await b.http.post(path, data={"csrf": b.csrf if csrf is None else csrf, **data})


async def _kb(b: Browser, name: str, description: str = "") -> str:
    r = await b.api("POST", "/api/v1/knowledge-bases", json={"name": name, "description": description})
    assert r.status_code == 201, r.text
    kb_id: str = r.json()["id"]
    return kb_id


async def _upload(b: Browser, kb: str, name: str, data: bytes, content_type: str = "text/markdown") -> httpx.Response:
    """One file, as knowledge.js sends it."""
    return await b.api("POST", f"/api/v1/knowledge-bases/{kb}/documents", files={"files": (name, data, content_type)})


def _result(r: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = r.json()["data"][0]
    return body


def _in(node: Node, selector: str) -> Node:
    found = node.css_first(selector)
    assert found is not None, f"no {selector!r} in {node.html}"
    return found


def _no_active_content(page: Page) -> None:
    """Nothing from documents or users runs: the only scripts are the app's own modules."""
    for script in page.all("script"):
        assert (script.attributes.get("src") or "").startswith("/static/js/"), script.html
        assert not script.text(strip=True)
    for node in page.all("*"):
        for attr in node.attributes:
            assert not attr.lower().startswith("on"), node.html
        for attr in ("href", "src", "action"):
            assert not (node.attributes.get(attr) or "").strip().lower().startswith("javascript:"), node.html
    assert not page.all("img")


ALPHA = b"# Alpha\n\nThe heron nests in tall reeds beside the quiet river and hunts fish at dawn.\n"
BETA = b"# Beta\n\nVolcanoes form where tectonic plates meet; magma rises through the crust.\n"
GAMMA = b"# Gamma\n\nSourdough bread needs a starter culture, flour, water and a long slow rise.\n"


async def test_create_open_and_delete_a_knowledge_base_with_the_pages_forms(web: WebEnv) -> None:
    b = await web.member("kim@example.com")
    page = await b.get("/knowledge")
    assert page.status == 200
    assert page.one("#no-kbs")
    form = page.one("form#create-kb")
    assert form.attributes["method"] == "post"
    assert page.form_value("csrf", "form#create-kb") == b.csrf
    r = await _form(b, "/knowledge", {"name": "notes", "description": "My notes"})
    assert r.status_code == 303
    kb_url = r.headers["location"]
    assert re.fullmatch(r"/knowledge/kb_\w+", kb_url)
    kb_page = await b.get(kb_url)
    assert kb_page.status == 200
    assert kb_page.one("h1").text(strip=True).startswith("notes")
    assert kb_page.one("#access").text(strip=True) == "owner"
    assert kb_page.one("#no-docs")
    # the upload area names the knowledge base for the script, which writes directly
    assert kb_page.one("#upload").attributes["data-kb"] == kb_url.rsplit("/", 1)[1]
    assert kb_page.one("#upload").attributes["data-pending"] == "false"
    assert "webkitdirectory" in kb_page.one("#folder").attributes
    assert "multiple" in kb_page.one("#files").attributes
    listing = await b.get("/knowledge")
    assert listing.texts(".kb-list td a") == ["notes"]
    # a taken name and a bad name are errors on the page, with what was typed kept
    r = await _form(b, "/knowledge", {"name": "notes"})
    assert r.status_code == 409
    assert "already" in Page(r).one('[role="alert"]').text()
    r = await _form(b, "/knowledge", {"name": "no spaces allowed", "description": "kept"})
    assert r.status_code == 400
    assert Page(r).one("#kb-description").text() == "kept"
    # without the CSRF field nothing happens
    r = await _form(b, "/knowledge", {"name": "other"}, csrf="")
    assert r.status_code == 403
    r = await _form(b, f"{kb_url}/delete", {}, csrf="wrong")
    assert r.status_code == 403
    assert (await b.get(kb_url)).status == 200
    r = await _form(b, f"{kb_url}/delete", {})
    assert (r.status_code, r.headers["location"]) == (303, "/knowledge")
    assert (await b.get(kb_url)).status == 404
    assert (await b.get("/knowledge")).one("#no-kbs")


async def test_uploads_have_their_outcomes_and_the_search_shows_its_scores(web: WebEnv) -> None:
    b = await web.member("ana@example.com")
    kb = await _kb(b, "animals")
    r = await _upload(b, kb, "notes/alpha.md", ALPHA)
    assert r.status_code == 201
    added = _result(r)
    assert (added["status"], added["document_status"], added["source"]) == ("added", "approved", "notes/alpha.md")
    assert _result(await _upload(b, kb, "notes/beta.md", BETA))["status"] == "added"
    assert _result(await _upload(b, kb, "gamma.md", GAMMA))["status"] == "added"
    assert _result(await _upload(b, kb, "notes/alpha.md", ALPHA))["status"] == "unchanged"
    dup = _result(await _upload(b, kb, "copy-of-alpha.md", ALPHA))
    assert dup["status"] == "duplicate" and "notes/alpha.md" in dup["detail"]
    r = await _upload(b, kb, "tool.exe", b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\xff\xff", "application/octet-stream")
    assert r.status_code >= 400
    refused = _result(r)
    assert refused["status"] == "failed" and refused["error"]["message"]
    # without the CSRF header the cookie alone is refused
    r = await b.api("POST", f"/api/v1/knowledge-bases/{kb}/documents", headers={"x-csrf-token": ""},
                    files={"files": ("x.md", b"# x\n\nhello", "text/markdown")})
    assert r.status_code == 403

    page = await b.get(f"/knowledge/{kb}")
    assert page.texts(".docs td.doc-name a") == ["gamma.md", "notes/alpha.md", "notes/beta.md"]

    page = await b.get(f"/knowledge/{kb}", params={"q": "where do herons nest by the river", "mode": "hybrid"})
    assert page.status == 200
    results = page.all("#results li.result")
    assert results, page.response.text
    top = results[0]
    assert _in(top, "a.doc-link").text(strip=True) == "Alpha"
    assert "heron nests" in _in(top, ".passage").text()
    fused = float(_in(top, ".score-fused").text())
    keyword = float(_in(top, ".score-keyword").text())
    vector = float(_in(top, ".score-vector").text())
    assert keyword > 0 and 0 < vector <= 1 and fused > 0
    # a keyword search leaves the vector part out, a vector search the keyword part
    page = await b.get(f"/knowledge/{kb}", params={"q": "volcanoes magma", "mode": "keyword"})
    first = page.one("#results li.result")
    assert _in(first, "a.doc-link").text(strip=True) == "Beta"
    assert _in(first, ".score-vector").text(strip=True) == "—"
    assert float(_in(first, ".score-keyword").text()) > 0
    page = await b.get(f"/knowledge/{kb}", params={"q": "baking bread", "mode": "vector"})
    first = page.one("#results li.result")
    assert _in(first, "a.doc-link").text(strip=True) == "Gamma"
    assert _in(first, ".score-keyword").text(strip=True) == "—"
    page = await b.get(f"/knowledge/{kb}", params={"q": "zzqx"})
    assert page.status == 200

    # the result links to its passage in the document view
    page = await b.get(f"/knowledge/{kb}", params={"q": "heron river"})
    link = page.one("#results li.result a.doc-link").attributes["href"] or ""
    m = re.fullmatch(rf"/knowledge/{kb}/documents/(doc_\w+)\?chunk=(\d+)#chunk-(\d+)", link)
    assert m and m.group(2) == m.group(3), link
    doc_page = await b.get(link.split("#")[0])
    assert doc_page.status == 200
    cited = doc_page.one(f"li#chunk-{m.group(2)}")
    assert "cited" in (cited.attributes.get("class") or "")
    assert "heron nests" in _in(cited, ".passage").text()
    assert doc_page.one("h1").text(strip=True) == "Alpha"


async def test_the_search_api_explains_the_fused_score(web: WebEnv) -> None:
    b = await web.member("eli@example.com")
    kb = await _kb(b, "explained")
    for name, data in (("a.md", ALPHA), ("b.md", BETA), ("c.md", GAMMA)):
        assert (await _upload(b, kb, name, data)).status_code == 201
    r = await b.api("POST", f"/api/v1/knowledge-bases/{kb}/search",
                    json={"query": "heron river fish", "explain": True, "top_k": 10})
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    assert len(hits) == 3
    best_keyword = max(h["keyword_score"] for h in hits)
    assert best_keyword > 0
    for h in hits:  # score fusion: 0.3 * bm25 / best bm25 + 0.7 * cosine
        expected = 0.3 * h["keyword_score"] / best_keyword + 0.7 * h["vector_score"]
        assert abs(h["score"] - expected) < 1e-4, h
    plain = (await b.api("POST", f"/api/v1/knowledge-bases/{kb}/search", json={"query": "heron"})).json()["data"]
    assert "keyword_score" not in plain[0]


async def test_names_and_text_from_documents_never_run(web: WebEnv) -> None:
    b = await web.member("eve@example.com")
    kb = await _kb(b, "hostile", description=HOSTILE)
    name = "<img src=x onerror=alert(4)>.md"
    r = await _upload(b, kb, name, f"# {HOSTILE}\n\nsalamander {HOSTILE}\n".encode())
    assert r.status_code == 201, r.text
    doc_id = _result(r)["document_id"]
    for path in ("/knowledge", f"/knowledge/{kb}", f"/knowledge/{kb}?q=salamander",
                 f"/knowledge/{kb}/documents/{doc_id}"):
        page = await b.get(path)
        assert page.status == 200, path
        _no_active_content(page)
    page = await b.get(f"/knowledge/{kb}?q=salamander")
    assert page.one(".docs td.doc-name a").text(strip=True) == name
    assert "<script>alert(1)</script>" in page.one("#results .passage").text()
    assert "<script>alert(1)</script>" in page.one(".description").text()
    doc = await b.get(f"/knowledge/{kb}/documents/{doc_id}")
    assert "javascript:alert(3)" in doc.one(".passage").text()
    assert doc.one(".doc-source").text() == name


async def test_another_users_knowledge_base_is_a_404_on_every_page_and_form(web: WebEnv) -> None:
    owner = await web.member("own@example.com")
    kb = await _kb(owner, "private")
    doc_id = _result(await _upload(owner, kb, "a.md", ALPHA))["document_id"]
    r = await _form(owner, f"/knowledge/{kb}/shares", {"kind": "user", "who": "admin@example.com", "access": "read"})
    assert r.status_code == 303
    share_id = (await owner.api("GET", f"/api/v1/knowledge-bases/{kb}/shares")).json()["data"][0]["id"]
    stranger = await web.member("stranger@example.com")
    for path in (f"/knowledge/{kb}", f"/knowledge/{kb}?q=heron", f"/knowledge/{kb}/documents/{doc_id}",
                 f"/knowledge/{kb}/documents/{doc_id}?chunk=1"):
        assert (await stranger.get(path)).status == 404, path
    for path, data in ((f"/knowledge/{kb}/delete", {}), (f"/knowledge/{kb}/documents/{doc_id}/delete", {}),
                       (f"/knowledge/{kb}/documents/{doc_id}/review", {"decision": "approve"}),
                       (f"/knowledge/{kb}/shares", {"kind": "user", "who": "stranger@example.com",
                                                    "access": "write"}),
                       (f"/knowledge/{kb}/shares/{share_id}/delete", {})):
        assert (await _form(stranger, path, data)).status_code == 404, path
    assert (await stranger.api("DELETE", f"/api/v1/knowledge-bases/{kb}/documents/{doc_id}")).status_code == 404
    assert not (await stranger.get("/knowledge")).all(".kb-list td a")
    # nothing changed
    page = await owner.get(f"/knowledge/{kb}")
    assert page.texts(".docs td.doc-name a") == ["a.md"]
    assert len(page.all(".shares li")) == 1
    # a document of another knowledge base is not reachable through one's own
    mine = await _kb(stranger, "mine")
    assert (await stranger.get(f"/knowledge/{mine}/documents/{doc_id}")).status == 404


async def test_a_read_share_searches_and_suggests_but_cannot_change_and_the_owner_reviews(web: WebEnv) -> None:
    owner = await web.member("olga@example.com")
    reader = await web.member("rita@example.com")
    kb = await _kb(owner, "shared")
    doc_id = _result(await _upload(owner, kb, "alpha.md", ALPHA))["document_id"]
    assert (await reader.get(f"/knowledge/{kb}")).status == 404
    r = await _form(owner, f"/knowledge/{kb}/shares", {"kind": "user", "who": "RITA@example.com", "access": "read"})
    assert r.status_code == 303
    page = await owner.get(f"/knowledge/{kb}")
    assert page.texts(".shares .share-who") == ["user rita@example.com"]
    assert page.texts(".shares .badge") == ["read"]
    r = await _form(owner, f"/knowledge/{kb}/shares", {"kind": "user", "who": "nobody@example.com", "access": "read"})
    assert r.status_code == 404
    assert "nobody@example.com" in Page(r).one("#form-error").text()

    page = await reader.get(f"/knowledge/{kb}")
    assert page.status == 200
    assert page.one("#access").text(strip=True) == "read access"
    assert page.texts(".docs td.doc-name a") == ["alpha.md"]
    assert not page.all(".docs form")  # no delete buttons
    assert not page.all("#sharing") and not page.all("#review") and not page.all("#delete-kb")
    assert page.one("#upload").attributes["data-pending"] == "true"
    assert page.one("#upload-h").text(strip=True) == "Suggest documents"
    assert not (await reader.get(f"/knowledge/{kb}/documents/{doc_id}")).all("#delete-doc")
    # ... and the server refuses what the buttons would have done
    assert (await _form(reader, f"/knowledge/{kb}/documents/{doc_id}/delete", {})).status_code == 403
    assert (await reader.api("DELETE", f"/api/v1/knowledge-bases/{kb}/documents/{doc_id}")).status_code == 403
    assert (await _form(reader, f"/knowledge/{kb}/delete", {})).status_code == 403
    assert (await _form(reader, f"/knowledge/{kb}/shares", {"who": "x@example.com"})).status_code == 403
    r = await _form(reader, f"/knowledge/{kb}/documents/{doc_id}/review", {"decision": "reject"})
    assert r.status_code == 403
    assert len((await reader.get(f"/knowledge/{kb}?q=heron")).all("#results li")) == 1

    # a reader's upload is a contribution: pending, not searchable, in the owner's queue
    suggested = _result(await _upload(reader, kb, "beta.md", BETA))
    assert (suggested["status"], suggested["document_status"]) == ("added", "pending")
    other = _result(await _upload(reader, kb, "gamma.md", GAMMA))["document_id"]
    page = await reader.get(f"/knowledge/{kb}?q=volcanoes magma&mode=keyword")
    assert page.texts("#results a.doc-link") in ([], ["Alpha"])
    assert "Beta" not in page.texts("#results a.doc-link")
    page = await owner.get(f"/knowledge/{kb}")
    assert [a.text(strip=True) for a in page.all("#review li a")] == ["beta.md", "gamma.md"]
    r = await _form(owner, f"/knowledge/{kb}/documents/{suggested['document_id']}/review", {"decision": "approve"})
    assert r.status_code == 303
    r = await _form(owner, f"/knowledge/{kb}/documents/{other}/review", {"decision": "reject"})
    assert r.status_code == 303
    page = await owner.get(f"/knowledge/{kb}")
    assert page.one("#no-review")
    statuses = dict(zip(page.texts(".docs td.doc-name a"), page.texts(".docs .badge"), strict=True))
    assert statuses == {"alpha.md": "approved", "beta.md": "approved", "gamma.md": "rejected"}
    page = await reader.get(f"/knowledge/{kb}?q=volcanoes magma&mode=keyword")
    assert page.texts("#results a.doc-link")[0] == "Beta"
    # the reader may delete their own (rejected) contribution, from the page
    reader_page = await reader.get(f"/knowledge/{kb}")
    assert len(reader_page.all(".docs form")) == 2  # beta and gamma are theirs
    assert (await _form(reader, f"/knowledge/{kb}/documents/{other}/delete", {})).status_code == 303

    # the owner removes the share: the reader is out
    share_id = (await owner.get(f"/knowledge/{kb}")).one(".shares li").attributes["data-share"]
    assert (await _form(owner, f"/knowledge/{kb}/shares/{share_id}/delete", {})).status_code == 303
    assert (await reader.get(f"/knowledge/{kb}")).status == 404


async def test_a_team_share_with_write_access_lets_members_add_and_delete(web: WebEnv) -> None:
    async with httpx.AsyncClient(base_url=web.url) as http:
        r = await http.post("/api/v1/teams", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                            json={"name": "<b>crew</b>"})
        assert r.status_code == 201, r.text
        team_id = r.json()["id"]
    owner = await web.member("tom@example.com")
    mate = await web.member("max@example.com", team_id=team_id)
    kb = await _kb(owner, "team-kb")
    doc_id = _result(await _upload(owner, kb, "alpha.md", ALPHA))["document_id"]
    r = await _form(owner, f"/knowledge/{kb}/shares", {"kind": "team", "who": "<b>crew</b>", "access": "write"})
    assert r.status_code == 303
    page = await owner.get(f"/knowledge/{kb}")
    assert page.texts(".shares .share-who") == ["team <b>crew</b>"]
    _no_active_content(page)
    page = await mate.get(f"/knowledge/{kb}")
    assert page.one("#access").text(strip=True) == "write access"
    assert page.one("#upload").attributes["data-pending"] == "false"
    assert len(page.all(".docs form")) == 1
    assert not page.all("#sharing")
    assert _result(await _upload(mate, kb, "beta.md", BETA))["document_status"] == "approved"
    assert (await _form(mate, f"/knowledge/{kb}/documents/{doc_id}/delete", {})).status_code == 303
    assert (await owner.get(f"/knowledge/{kb}")).texts(".docs td.doc-name a") == ["beta.md"]
    assert "team-kb" in (await mate.get("/knowledge")).texts(".kb-list td a")


async def test_the_document_list_is_paginated(web: WebEnv) -> None:
    b = await web.member("pat@example.com")
    kb = await _kb(b, "many")
    docs = [{"name": f"doc-{i:03d}.txt", "text": f"Note number {i} about item {i * 7}."} for i in range(120)]
    r = await b.api("POST", f"/api/v1/knowledge-bases/{kb}/documents", json={"documents": docs})
    assert r.status_code == 201, r.text
    seen: list[str] = []
    path: str | None = f"/knowledge/{kb}"
    pages = 0
    while path is not None:
        page = await b.get(path)
        assert page.status == 200
        names = page.texts(".docs td.doc-name a")
        assert 0 < len(names) <= 50
        seen += names
        pages += 1
        nxt = page.all("#next-page")
        path = nxt[0].attributes["href"] if nxt else None
        if pages > 1:
            assert page.one("#first-page").attributes["href"] == f"/knowledge/{kb}#documents"
    assert pages == 3
    assert seen == [d["name"] for d in docs]


async def test_a_long_document_is_shown_a_page_of_passages_at_a_time(web: WebEnv) -> None:
    b = await web.member("lee@example.com")
    r = await b.api("POST", "/api/v1/knowledge-bases", json={"name": "long", "chunk_tokens": 32, "chunk_overlap": 0})
    assert r.status_code == 201, r.text
    kb = r.json()["id"]
    text = "\n\n".join(f"Paragraph {i}: the lighthouse keeper logged ships number {i} passing by the rocks."
                       for i in range(160))
    r = await b.api("POST", f"/api/v1/knowledge-bases/{kb}/documents", json={"documents": [
        {"name": "log.txt", "text": text}]})
    assert r.status_code == 201, r.text
    result = r.json()["data"][0]
    assert result["chunks"] > 100
    doc = result["document_id"]
    first = await b.get(f"/knowledge/{kb}/documents/{doc}")
    assert len(first.all("li.passage-item")) == 100
    assert first.one("a[rel=next]")
    last_ids = [int((n.attributes["id"] or "").removeprefix("chunk-")) for n in first.all("li.passage-item")]
    second = await b.get(f"/knowledge/{kb}/documents/{doc}?page=1")
    ids = [int((n.attributes["id"] or "").removeprefix("chunk-")) for n in second.all("li.passage-item")]
    assert len(ids) == result["chunks"] - 100 and min(ids) > max(last_ids)
    # a citation of a passage on the second page opens that page, at the passage
    cited = await b.get(f"/knowledge/{kb}/documents/{doc}?chunk={ids[3]}")
    assert cited.one(f"li#chunk-{ids[3]}.cited")
    assert cited.one("ol.passages").attributes["start"] == "101"
