"""Knowledge bases over HTTP: the app on loopback with the real local model and real files, on a real
SQLite file and on a real PostgreSQL database (every test runs on both)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from thinktank.api.app import create_app
from thinktank.api.routes.knowledge import MAX_FILE_BYTES
from thinktank.config import Settings, parse_config
from thinktank.knowledge.embeddings import LocalEmbedder

from ..fakes.documents import docx, pdf
from ..fakes.server import serving
from ..fakes.upstream import FakeUpstream
from .conftest import AUTH

PASSWORD = "correct horse battery staple"
Serve = Callable[..., Any]

GUIDE = ("# Tea guide\n\nGreen tea is steeped at 80 degrees for two minutes.\n\n## Black tea\n\n"
         "Black tea takes boiling water.")
COFFEE = "Espresso is brewed by forcing hot water through finely ground coffee beans."


PAGES = ["Kettles boil water for every pot. A good kettle has a thermometer, a spout that pours cleanly and a\n"
         "handle that stays cool. Descale it every month where the water is hard.",
         "Teapots hold green tea, black tea and herbal infusions. Warm the pot first, measure one spoon per cup\n"
         "and pour the water just off the boil over the leaves."]


def cfg(url: str) -> dict[str, Any]:
    return {"models": [{"name": "emb", "provider": "openai", "model": "fake-embed", "base_url": url + "/v1",
                        "api_key": "sk-x", "mode": "embedding", "input_price": 1000}]}


@pytest.fixture
async def serve(
    settings: Settings, local_embedder: LocalEmbedder, fake_openai: FakeUpstream, db_url: str,
) -> AsyncIterator[Serve]:
    """``url = await serve(**settings_overrides)``: thinktank on loopback sharing the session's local model,
    on the test's database (SQLite, then PostgreSQL)."""
    stack: list[Any] = []

    async def start(**overrides: Any) -> str:
        s = Settings.model_validate({**settings.model_dump(), "database_url": db_url, **overrides})
        cm = serving(create_app(s, parse_config(cfg(fake_openai.url)), local_embedder=local_embedder))
        url: str = await cm.__aenter__()
        stack.append(cm)
        return url + "/api/v1"

    yield start
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


@pytest.fixture
async def api(serve: Serve) -> str:
    return str(await serve())


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as c:
        yield c


async def user(c: httpx.AsyncClient, api: str, email: str, **extra: Any) -> tuple[str, dict[str, str]]:
    """A member made with the admin API: (user id, headers with their session)."""
    r = await c.post(api + "/users", headers=AUTH, json={"email": email, "password": PASSWORD, **extra})
    assert r.status_code == 201, r.text
    login = await c.post(api + "/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return r.json()["id"], {"Authorization": f"Bearer {login.json()['token']}"}


async def create(c: httpx.AsyncClient, api: str, who: dict[str, str], name: str, **extra: Any) -> dict[str, Any]:
    r = await c.post(api + "/knowledge-bases", headers=who, json={"name": name, **extra})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (name, data)) for name, data in items]


def error_of(r: httpx.Response, status: int, contains: str = "") -> str:
    assert r.status_code == status, r.text
    message: str = r.json()["error"]["message"]
    assert contains.lower() in message.lower()
    return message


async def search(c: httpx.AsyncClient, api: str, who: dict[str, str], kbs: list[str], query: str,
                 **extra: Any) -> httpx.Response:
    return await c.post(api + "/knowledge-bases/search", headers=who,
                        json={"knowledge_bases": kbs, "query": query, **extra})


def raw_multipart(parts: list[tuple[bytes, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart body written byte for byte: (filename as sent, content) per ``files`` part."""
    boundary = b"thinktank-test-boundary"
    out = b""
    for filename, data in parts:
        out += (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="' + filename
                + b'"\r\nContent-Type: text/plain\r\n\r\n' + data + b"\r\n")
    out += b"--" + boundary + b"--\r\n"
    return out, {"content-type": "multipart/form-data; boundary=" + boundary.decode()}


# -- knowledge bases -------------------------------------------------------------------------------

async def test_create_list_show_delete(api: str, client: httpx.AsyncClient) -> None:
    _, alice = await user(client, api, "alice@example.com")
    kb = await create(client, api, alice, "notes", description="mine", chunk_tokens=100, chunk_overlap=10)
    assert kb["object"] == "knowledge_base" and kb["id"].startswith("kb_") and kb["access"] == "admin"
    assert (kb["embedding_model"], kb["chunk_tokens"], kb["chunk_overlap"], kb["documents"]) == (
        "local/all-MiniLM-L6-v2", 100, 10, 0)
    error_of(await client.post(api + "/knowledge-bases", headers=alice, json={"name": "notes"}), 409, "already")
    error_of(await client.post(api + "/knowledge-bases", headers=alice, json={"name": "a b/c"}), 400, "name")
    error_of(await client.post(api + "/knowledge-bases", headers=alice, json={"name": "x", "embedding_model": "nope"}),
             400, "nope")
    error_of(await client.post(api + "/knowledge-bases", headers=alice, json={"name": "x", "chunk_tokens": 5}),
             400, "chunk_tokens")
    assert (await client.post(api + "/knowledge-bases", headers=alice, json={"name": "x", "other": 1})
            ).status_code == 422
    up = await client.post(f"{api}/knowledge-bases/notes/documents", headers=alice,
                           files=files(("tea.md", GUIDE.encode())))
    assert up.status_code == 201, up.text

    listed = (await client.get(api + "/knowledge-bases", headers=alice)).json()
    assert listed["object"] == "list"
    assert [(k["name"], k["documents"], k["pending"]) for k in listed["data"]] == [("notes", 1, 0)]
    assert listed["data"][0]["chunks"] >= 1 and "embedding" not in json.dumps(listed).replace("embedding_model", "")
    by_name = (await client.get(api + "/knowledge-bases/notes", headers=alice)).json()
    by_id = (await client.get(f"{api}/knowledge-bases/{kb['id']}", headers=alice)).json()
    assert by_name == by_id and by_id["documents"] == 1 and by_id["dimension"] == 384

    assert (await client.delete(f"{api}/knowledge-bases/{kb['id']}", headers=alice)).status_code == 204
    error_of(await client.get(api + "/knowledge-bases/notes", headers=alice), 404, "not found")
    error_of(await client.delete(api + "/knowledge-bases/notes", headers=alice), 404)
    assert (await client.get(api + "/knowledge-bases", headers=alice)).json()["data"] == []
    assert (await client.get(api + "/knowledge-bases")).status_code == 401


async def test_sharing_and_access_across_users(api: str, client: httpx.AsyncClient) -> None:
    team = (await client.post(api + "/teams", headers=AUTH, json={"name": "lab"})).json()
    _, alice = await user(client, api, "alice@example.com")
    bob_id, bob = await user(client, api, "bob@example.com", team_id=team["id"])
    kb = await create(client, api, alice, "papers")
    up = await client.post(api + "/knowledge-bases/papers/documents", headers=alice,
                           json={"documents": [{"name": "tea.md", "text": GUIDE}]})
    doc_id = up.json()["data"][0]["document_id"]
    path = f"{api}/knowledge-bases/{kb['id']}"

    # Not shared: it does not exist for bob, whatever he tries.
    for r in [await client.get(path, headers=bob), await client.get(path + "/documents", headers=bob),
              await client.post(path + "/search", headers=bob, json={"query": "tea"}),
              await client.post(path + "/shares", headers=bob, json={"user": "bob@example.com"}),
              await client.delete(path, headers=bob),
              await client.post(path + "/documents", headers=bob,
                                json={"documents": [{"name": "a.txt", "text": "x"}]})]:
        error_of(r, 404, "not found")
    assert (await client.get(api + "/knowledge-bases", headers=bob)).json()["data"] == []

    share = await client.post(path + "/shares", headers=alice, json={"user": "bob@example.com", "access": "read"})
    assert share.status_code == 201, share.text
    assert share.json()["object"] == "share" and share.json()["user_id"] == bob_id
    seen = (await client.get(api + "/knowledge-bases/papers", headers=bob)).json()
    assert seen["access"] == "read" and seen["documents"] == 1
    assert [d["id"] for d in (await client.get(path + "/documents", headers=bob)).json()["data"]] == [doc_id]
    # Reading is not administering or writing: 403.
    error_of(await client.delete(path, headers=bob), 403, "read access")
    error_of(await client.get(path + "/shares", headers=bob), 403)
    error_of(await client.post(path + "/shares", headers=bob, json={"user": "bob@example.com"}), 403)
    error_of(await client.delete(f"{path}/documents/{doc_id}", headers=bob), 403, "writers")
    error_of(await client.post(f"{path}/documents/{doc_id}/review", headers=bob, json={"approve": False}), 403)

    # The team's write share outranks bob's own read share.
    team_share = await client.post(path + "/shares", headers=alice, json={"team": "lab", "access": "write"})
    assert team_share.status_code == 201 and team_share.json()["team_id"] == team["id"]
    assert (await client.get(path, headers=bob)).json()["access"] == "write"
    shares = (await client.get(path + "/shares", headers=alice)).json()["data"]
    assert sorted((s["user_id"] is not None, s["access"]) for s in shares) == [(False, "write"), (True, "read")]
    error_of(await client.post(path + "/shares", headers=alice, json={"user": "nobody@example.com"}), 404, "nobody")
    error_of(await client.post(path + "/shares", headers=alice, json={"user": "bob@example.com", "team": "lab"}),
             400, "user or a team")
    assert (await client.post(path + "/shares", headers=alice, json={"user": "bob@example.com", "access": "admin"})
            ).status_code == 422

    for s in shares:
        assert (await client.delete(f"{path}/shares/{s['id']}", headers=alice)).status_code == 204
    error_of(await client.delete(f"{path}/shares/{shares[0]['id']}", headers=alice), 404, "share")
    error_of(await client.get(path, headers=bob), 404)
    # The admin key sees every knowledge base.
    assert (await client.get(path, headers=AUTH)).json()["access"] == "admin"


# -- documents -------------------------------------------------------------------------------------

async def test_upload_multipart_and_json_then_unchanged_replaced_duplicate(api: str, client: httpx.AsyncClient) -> None:
    _, alice = await user(client, api, "alice@example.com")
    await create(client, api, alice, "docs")
    path = api + "/knowledge-bases/docs/documents"
    manual = pdf(["Chapter one explains the kettle.", "Chapter two explains the teapot."], title="Manual")
    word = docx([("Heading1", "Coffee"), (None, COFFEE)])
    r = await client.post(path, headers=alice, files=files(("tea.md", GUIDE.encode()), ("manual.pdf", manual),
                                                           ("coffee.docx", word)),
                          data={"metadata": json.dumps({"team": "kitchen", "year": 2024})})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["object"] == "list" and body["counts"]["added"] == 3 and body["pending_review"] is False
    assert [(x["index"], x["source"], x["status"], x["document_status"]) for x in body["data"]] == [
        (0, "tea.md", "added", "approved"), (1, "manual.pdf", "added", "approved"),
        (2, "coffee.docx", "added", "approved")]
    assert all(x["chunks"] >= 1 and x["document_id"].startswith("doc_") for x in body["data"])

    r = await client.post(path, headers=alice, json={"documents": [
        {"name": "espresso", "text": COFFEE + " It is strong.", "title": "Espresso", "metadata": {"kind": "drink"}}]})
    assert r.status_code == 201 and r.json()["data"][0]["status"] == "added"

    docs = {d["source"]: d for d in (await client.get(path, headers=alice)).json()["data"]}
    assert set(docs) == {"tea.md", "manual.pdf", "coffee.docx", "espresso"}
    assert docs["manual.pdf"]["pages"] == 2 and docs["manual.pdf"]["kind"] == "pdf"
    assert docs["tea.md"]["metadata"] == {"team": "kitchen", "year": "2024"}
    assert docs["espresso"]["title"] == "Espresso" and docs["espresso"]["metadata"] == {"kind": "drink"}
    assert all(d["object"] == "document" and d["status"] == "approved" for d in docs.values())

    again = await client.post(path, headers=alice, files=files(("tea.md", GUIDE.encode()), ("manual.pdf", manual)))
    assert again.status_code == 200, again.text
    assert [(x["status"], x["document_id"]) for x in again.json()["data"]] == [
        ("unchanged", docs["tea.md"]["id"]), ("unchanged", docs["manual.pdf"]["id"])]

    changed = await client.post(path, headers=alice, files=files(("tea.md", (GUIDE + "\n\nOolong too.").encode()),
                                                                 ("manual.pdf", manual)))
    assert changed.status_code == 201
    assert [x["status"] for x in changed.json()["data"]] == ["replaced", "unchanged"]
    assert changed.json()["data"][0]["document_id"] != docs["tea.md"]["id"]

    copy = await client.post(path, headers=alice, files=files(("copy.pdf", manual)))
    assert copy.status_code == 200
    assert copy.json()["data"][0]["status"] == "duplicate" and "manual.pdf" in copy.json()["data"][0]["detail"]
    assert len((await client.get(path, headers=alice)).json()["data"]) == 4

    doc_id = docs["espresso"]["id"]
    assert (await client.delete(f"{path}/{doc_id}", headers=alice)).status_code == 204
    error_of(await client.delete(f"{path}/{doc_id}", headers=alice), 404, "not found")


async def test_unsupported_and_unreadable_files(api: str, client: httpx.AsyncClient) -> None:
    _, alice = await user(client, api, "alice@example.com")
    await create(client, api, alice, "docs")
    path = api + "/knowledge-bases/docs/documents"

    r = await client.post(path, headers=alice, files=files(("tool.exe", b"MZ\x90\x00binary")))
    error_of(r, 415, "unsupported file type")
    assert r.json()["data"][0]["error"]["status"] == 415 and r.json()["counts"]["failed"] == 1
    r = await client.post(path, headers=alice, files=files(("fake.pdf", b"not a pdf"), ("other.exe", b"MZ")))
    error_of(r, 415, "none of the 2")
    r = await client.post(path, headers=alice, files=files(("scan.pdf", pdf([""]))))
    error_of(r, 422, "no text layer")
    r = await client.post(path, headers=alice, files=files(("scan.pdf", pdf([""])), ("tool.exe", b"MZ")))
    assert r.status_code == 422 and [x["error"]["status"] for x in r.json()["data"]] == [422, 415]
    # One good file among bad ones: it is added, the others say why not.
    r = await client.post(path, headers=alice, files=files(("tool.exe", b"MZ"), ("tea.md", GUIDE.encode())))
    assert r.status_code == 201 and [x["status"] for x in r.json()["data"]] == ["failed", "added"]
    assert [d["source"] for d in (await client.get(path, headers=alice)).json()["data"]] == ["tea.md"]

    error_of(await client.post(path, headers={**alice, "content-type": "text/plain"}, content=b"hello"),
             415, "multipart/form-data")
    error_of(await client.post(path, headers={**alice, "content-type": "application/json"}, content=b"{nope"), 400)
    error_of(await client.post(path, headers=alice, json={"documents": []}), 400, "documents")
    error_of(await client.post(path, headers=alice, json={"documents": [{"name": "a.txt"}]}), 400, "text")
    error_of(await client.post(path, headers=alice, data={"metadata": "{}"}), 415, "multipart")  # url-encoded
    only_metadata = (b'--b\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{}\r\n--b--\r\n')
    error_of(await client.post(path, headers={**alice, "content-type": "multipart/form-data; boundary=b"},
                               content=only_metadata), 400, "files")
    error_of(await client.post(path, headers=alice, files=files(("a.txt", b"x")), data={"metadata": "[1]"}),
             400, "metadata")
    error_of(await client.post(path, headers=alice, files=files(("a.txt", b"x")), data={"other": "1"}), 400, "other")
    error_of(await client.post(path, headers=alice, files=files(("a.txt", b"x")),
                               data={"metadata": json.dumps({"k": {"nested": 1}})}), 400, "metadata")


async def test_file_names_are_sanitised_or_refused(api: str, client: httpx.AsyncClient) -> None:
    _, alice = await user(client, api, "alice@example.com")
    await create(client, api, alice, "docs")
    path = api + "/knowledge-bases/docs/documents"
    body, headers = raw_multipart([(b"../x.txt", b"first file"),
                                   (b"..\\\\..\\\\windows\\\\y.md", b"# second\n\nThe second file."),
                                   (b"/etc/deep/z.txt", b"third file")])
    r = await client.post(path, headers={**alice, **headers}, content=body)
    assert r.status_code == 201, r.text
    assert [x["source"] for x in r.json()["data"]] == ["x.txt", "windows/y.md", "etc/deep/z.txt"]
    json_names = await client.post(path, headers=alice, json={"documents": [{"name": "a/b/../../c.txt", "text": "c"}]})
    assert json_names.json()["data"][0]["source"] == "c.txt"

    for bad in (b"evil\x00.txt", b"bell\x07.txt", b"", b"..", b"dir/", b"a/..", b"   "):
        # A bad name anywhere refuses the whole request before anything is ingested.
        body, headers = raw_multipart([(b"fine.txt", b"a fine file"), (bad, b"content")])
        error_of(await client.post(path, headers={**alice, **headers}, content=body), 400, "name")
    error_of(await client.post(path, headers=alice, json={"documents": [
        {"name": "ok.txt", "text": "ok"}, {"name": "nul\u0000.txt", "text": "x"}]}), 400, "control characters")
    error_of(await client.post(path, headers=alice, json={"documents": [{"name": "\u202etxt.exe", "text": "x"}]}),
             400, "control characters")
    sources = sorted(d["source"] for d in (await client.get(path, headers=alice)).json()["data"])
    assert sources == ["c.txt", "etc/deep/z.txt", "windows/y.md", "x.txt"]
    # Folders keep same-named files apart; the same path again replaces.
    for text in ("first readme", "second readme"):
        r = await client.post(path, headers=alice, files=[("files", ("a/README.md", b"# A\n\n" + text.encode())),
                                                          ("files", ("b\\README.md", b"# B\n\nbee"))])
        assert r.status_code == 201, r.text
    assert [(x["source"], x["status"]) for x in r.json()["data"]] == [("a/README.md", "replaced"),
                                                                       ("b/README.md", "unchanged")]
    sources = sorted(d["source"] for d in (await client.get(path, headers=alice)).json()["data"])
    assert sources == ["a/README.md", "b/README.md", "c.txt", "etc/deep/z.txt", "windows/y.md", "x.txt"]


async def test_upload_limit_by_length_and_while_reading(serve: Serve, client: httpx.AsyncClient) -> None:
    api = await serve(max_upload_bytes=64 * 1024, max_body_bytes=4096)
    _, alice = await user(client, api, "alice@example.com")
    await create(client, api, alice, "docs")
    path = api + "/knowledge-bases/docs/documents"
    # Over max_body_bytes but within max_upload_bytes: an upload goes through...
    medium = ("Tea and coffee. " * 1500).encode()
    r = await client.post(path, headers=alice, files=files(("medium.txt", medium)))
    assert r.status_code == 201, r.text
    # ...while any other route keeps max_body_bytes.
    error_of(await client.post(api + "/knowledge-bases", headers=alice,
                               json={"name": "x", "description": "d" * 5000}), 413, "limit")

    big = b"y" * (80 * 1024)
    error_of(await client.post(path, headers=alice, files=files(("big.txt", big))), 413, "limit")

    async def chunked() -> AsyncIterator[bytes]:  # no content-length: the limit holds while reading
        body, _ = raw_multipart([(b"big.txt", big)])
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    _, headers = raw_multipart([])
    r = await client.post(path, headers={**alice, **headers}, content=chunked())
    assert "content-length" not in r.request.headers
    error_of(r, 413, "limit")
    assert [d["source"] for d in (await client.get(path, headers=alice)).json()["data"]] == ["medium.txt"]


async def test_one_oversized_file_is_a_413_result(api: str, client: httpx.AsyncClient) -> None:
    _, alice = await user(client, api, "alice@example.com")
    await create(client, api, alice, "docs")
    huge = b"z" * (MAX_FILE_BYTES + 1)
    r = await client.post(api + "/knowledge-bases/docs/documents", headers=alice,
                          files=files(("huge.txt", huge), ("tea.md", GUIDE.encode())))
    assert r.status_code == 201, r.text
    first, second = r.json()["data"]
    assert first["status"] == "failed" and first["error"]["status"] == 413 and "allowed" in first["error"]["message"]
    assert second["status"] == "added"


async def test_streaming_progress_then_result(api: str, client: httpx.AsyncClient) -> None:
    _, alice = await user(client, api, "alice@example.com")
    await create(client, api, alice, "docs")
    uploads = files(("tea.md", GUIDE.encode()), ("coffee.txt", COFFEE.encode()), ("tool.exe", b"MZ"),
                    ("manual.pdf", pdf(["The kettle boils water."])))
    events: list[tuple[str, Any]] = []
    async with client.stream("POST", api + "/knowledge-bases/docs/documents", headers=alice, files=uploads,
                             params={"stream": "true"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = "message"
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, line[6:] if line == "data: [DONE]" else json.loads(line[6:])))
                kind = "message"
    kinds = [k for k, _ in events]
    assert kinds[-2:] == ["result", "message"] and events[-1][1] == "[DONE]"
    progress = [d for k, d in events if k == "progress"]
    assert progress and kinds[:len(progress)] == ["progress"] * len(progress)
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
    assert progress[-1]["done"] == progress[-1]["total"] == 4 and progress[-1]["chunks"] >= 3
    result = events[-2][1]
    assert result["status"] == 201 and [x["status"] for x in result["data"]] == ["added", "added", "failed", "added"]

    # Errors found before ingestion are answered as usual, not as a stream.
    r = await client.post(api + "/knowledge-bases/nope/documents", headers=alice, files=uploads,
                          params={"stream": "true"})
    error_of(r, 404)


async def test_contributions_wait_for_review(api: str, client: httpx.AsyncClient) -> None:
    _, alice = await user(client, api, "alice@example.com")
    _, bob = await user(client, api, "bob@example.com")
    kb = await create(client, api, alice, "wiki")
    path = f"{api}/knowledge-bases/{kb['id']}"
    await client.post(path + "/shares", headers=alice, json={"user": "bob@example.com", "access": "read"})

    r = await client.post(path + "/documents", headers=bob, files=files(("coffee.txt", COFFEE.encode()),
                                                                        ("spam.txt", b"Buy cheap watches now.")))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["pending_review"] is True and "approves" in body["note"]
    assert [x["document_status"] for x in body["data"]] == ["pending", "pending"]
    coffee, spam = (x["document_id"] for x in body["data"])

    assert (await client.post(path + "/search", headers=alice, json={"query": "espresso coffee"})).json()["data"] == []
    assert (await client.get(path, headers=alice)).json()["pending"] == 2
    pending = (await client.get(path + "/documents", headers=alice, params={"status": "pending"})).json()["data"]
    assert sorted(d["id"] for d in pending) == sorted([coffee, spam])
    error_of(await client.post(f"{path}/documents/{coffee}/review", headers=bob, json={"approve": True}), 403)

    approved = await client.post(f"{path}/documents/{coffee}/review", headers=alice, json={"approve": True})
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    rejected = await client.post(f"{path}/documents/{spam}/review", headers=alice, json={"approve": False})
    assert rejected.json()["status"] == "rejected"
    for who in (alice, bob):
        hits = (await client.post(path + "/search", headers=who, json={"query": "espresso coffee"})).json()["data"]
        assert [h["document_id"] for h in hits] == [coffee]
        watches = await client.post(path + "/search", headers=who, json={"query": "cheap watches", "mode": "keyword"})
        assert watches.json()["data"] == []
    error_of(await client.post(f"{path}/documents/doc_nope/review", headers=alice, json={"approve": True}), 404)


async def test_search_across_knowledge_bases(api: str, client: httpx.AsyncClient) -> None:
    _, alice = await user(client, api, "alice@example.com")
    _, bob = await user(client, api, "bob@example.com")
    tea = await create(client, api, alice, "tea", chunk_tokens=32, chunk_overlap=0)
    coffee = await create(client, api, alice, "coffee")
    secret = await create(client, api, bob, "secret")
    await client.post(api + "/knowledge-bases/tea/documents", headers=alice,
                      files=files(("guide.md", GUIDE.encode()), ("manual.pdf", pdf(PAGES))))
    await client.post(api + "/knowledge-bases/coffee/documents", headers=alice,
                      json={"documents": [{"name": "espresso.txt", "text": COFFEE}]})
    await client.post(api + "/knowledge-bases/secret/documents", headers=bob,
                      json={"documents": [{"name": "hidden.txt", "text": "Hot water for tea and coffee."}]})

    r = await search(client, api, alice, ["tea", coffee["id"]], "hot water for tea or coffee", top_k=10)
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    assert {h["knowledge_base"] for h in hits} == {"tea", "coffee"}
    assert {h["knowledge_base_id"] for h in hits} == {tea["id"], coffee["id"]}
    first = hits[0]
    assert first["object"] == "search_result" and first["rank"] == 1
    assert set(first) == {"object", "rank", "chunk_id", "document_id", "knowledge_base_id", "knowledge_base",
                          "source", "title", "page", "position", "context", "text", "score"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    page = [h for h in hits if h["source"] == "manual.pdf"]
    assert page and all(h["page"] in (1, 2) for h in page)
    assert any(h["context"].startswith("Tea guide") for h in hits if h["source"] == "guide.md")

    for mode in ("keyword", "vector"):
        r = await search(client, api, alice, ["tea"], "how long is green tea steeped", mode=mode, top_k=3)
        assert r.status_code == 200 and r.json()["data"][0]["source"] == "guide.md"
    r = await search(client, api, alice, ["tea"], "tea", fusion="rrf", keyword_weight=1, vector_weight=1)
    assert r.status_code == 200 and r.json()["data"]
    filtered = await search(client, api, alice, ["tea"], "tea water", filters={"source_prefix": "manual",
                                                                                  "pages": [2, 2]})
    assert {(h["source"], h["page"]) for h in filtered.json()["data"]} == {("manual.pdf", 2)}
    one = await client.post(api + "/knowledge-bases/coffee/search", headers=alice, json={"query": "espresso"})
    assert [h["source"] for h in one.json()["data"]] == ["espresso.txt"]

    error_of(await search(client, api, alice, ["tea", secret["id"]], "water"), 404, "not found")
    error_of(await search(client, api, alice, ["tea", "secret"], "water"), 404, "not found")
    error_of(await search(client, api, alice, ["tea"], ""), 400, "empty")
    error_of(await search(client, api, alice, ["tea"], "   "), 400, "empty")
    error_of(await client.post(api + "/knowledge-bases/tea/search", headers=alice, json={"query": ""}), 400, "empty")
    error_of(await search(client, api, alice, ["tea"], "x", top_k=0), 400, "top_k")
    assert (await search(client, api, alice, [], "water")).status_code == 422
    assert (await search(client, api, alice, ["tea"], "x", filters={"pages": [3, 1]})).status_code == 422


async def test_gateway_embedding_model_is_admitted_and_accounted(api: str, client: httpx.AsyncClient,
                                                                 fake_openai: FakeUpstream) -> None:
    _, alice = await user(client, api, "alice@example.com")
    _, limited = await user(client, api, "lim@example.com", models=["other"])
    kb = await create(client, api, alice, "remote", embedding_model="emb")
    assert kb["embedding_model"] == "emb"
    error_of(await client.post(api + "/knowledge-bases", headers=limited, json={"name": "r", "embedding_model": "emb"}),
             404, "does not exist")
    r = await client.post(api + "/knowledge-bases/remote/documents", headers=alice,
                          json={"documents": [{"name": "tea.md", "text": GUIDE}]})
    assert r.status_code == 201, r.text
    embedded = [q for q in fake_openai.requests if q.path.endswith("/embeddings")]
    assert embedded and all(q.json["model"] == "fake-embed" for q in embedded)
    hits = await client.post(api + "/knowledge-bases/remote/search", headers=alice, json={"query": "green tea"})
    assert hits.status_code == 200 and hits.json()["data"]
    assert len([q for q in fake_openai.requests if q.path.endswith("/embeddings")]) == len(embedded) + 1

    usage = (await client.get(api + "/usage", headers=alice, params={"group_by": "model"})).json()["data"]
    assert [(u["group"], u["requests"]) for u in usage] == [("emb", 2)]
    assert usage[0]["prompt_tokens"] > 0 and usage[0]["cost_usd"] > 0


async def test_add_urls_fetches_public_pages_and_refuses_internal_ones(
    settings: Settings, local_embedder: LocalEmbedder, client: httpx.AsyncClient,
) -> None:
    import ipaddress

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, RedirectResponse, Response
    from starlette.routing import Route

    from thinktank.knowledge.urls import UrlFetcher, UrlPolicy

    seen: list[str] = []

    async def page(request: Request) -> Response:
        seen.append(request.url.path)
        return HTMLResponse("<html><head><title>Kettles</title></head><body><p>A kettle boils water for tea and "
                            "switches itself off.</p></body></html>")

    async def to_metadata(request: Request) -> Response:
        seen.append(request.url.path)
        return RedirectResponse("http://169.254.169.254/latest/meta-data/")

    async def missing(request: Request) -> Response:
        return Response("gone", 404)

    site = Starlette(routes=[Route("/kettles", page), Route("/hop", to_metadata), Route("/missing", missing)])
    async with serving(site) as site_url:
        port = int(site_url.rsplit(":", 1)[1])
        app = create_app(settings, parse_config({"models": []}), local_embedder=local_embedder)
        # This test's policy lets the fetcher reach the loopback site; the default refuses it (checked below).
        app.state.url_fetcher = UrlFetcher(UrlPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),),
                                                     allowed_ports=frozenset({port})))
        async with serving(app) as base:
            api = base + "/api/v1"
            await create(client, api, AUTH, "web")
            r = await client.post(api + "/knowledge-bases/web/urls", headers=AUTH, json={"urls": [
                f"{site_url}/kettles", f"{site_url}/hop", f"{site_url}/missing", "http://10.0.0.7/"]})
            assert r.status_code == 201, r.text
            results = r.json()["data"]
            assert [x["status"] for x in results] == ["added", "failed", "failed", "failed"]
            assert [x["error"]["status"] for x in results[1:]] == [400, 422, 400]
            assert "refused" in results[1]["error"]["message"] and "Redirect" in results[1]["error"]["message"]
            assert seen == ["/kettles", "/hop"]  # the redirect target was never requested
            found = await client.post(api + "/knowledge-bases/web/search", headers=AUTH,
                                      json={"query": "kettle that switches off"})
            [hit] = found.json()["data"][:1]
            assert hit["source"] == f"{site_url}/kettles" and hit["title"] == "Kettles"
            again = await client.post(api + "/knowledge-bases/web/urls", headers=AUTH,
                                      json={"urls": [f"{site_url}/kettles"]})
            assert again.status_code == 200 and again.json()["data"][0]["status"] == "unchanged"
            assert seen == ["/kettles", "/hop", "/kettles"]
            bad = await client.post(api + "/knowledge-bases/web/urls", headers=AUTH, json={"urls": []})
            assert bad.status_code in (400, 422)

        default = create_app(settings, parse_config({"models": []}), local_embedder=local_embedder)
        async with serving(default) as base:
            api = base + "/api/v1"
            r = await client.post(api + "/knowledge-bases/web/urls", headers=AUTH,
                                  json={"urls": [f"{site_url}/kettles", f"http://[::ffff:127.0.0.1]:{port}/kettles",
                                                 f"http://2130706433:{port}/kettles"]})
            assert r.status_code == 400, r.text
            assert [x["error"]["status"] for x in r.json()["data"]] == [400, 400, 400]
            assert seen == ["/kettles", "/hop", "/kettles"]  # nothing more reached the site


async def test_reembed_switches_the_model_all_at_once(api: str, client: httpx.AsyncClient,
                                                      fake_openai: FakeUpstream) -> None:
    _, alice = await user(client, api, "alice@example.com")
    bob_id, bob = await user(client, api, "bob@example.com")
    await create(client, api, alice, "drinks")
    r = await client.post(api + "/knowledge-bases/drinks/documents", headers=alice, json={"documents": [
        {"name": "tea.md", "text": GUIDE}, {"name": "coffee.md", "text": COFFEE}]})
    assert r.status_code == 201, r.text
    assert (await client.post(api + "/knowledge-bases/drinks/shares", headers=alice,
                              json={"user": bob_id, "access": "write"})).status_code == 201

    error_of(await client.post(api + "/knowledge-bases/drinks/reembed", headers=bob,
                               json={"embedding_model": "emb"}), 403, "admin")
    error_of(await client.post(api + "/knowledge-bases/drinks/reembed", headers=alice,
                               json={"embedding_model": "no-such-model"}), 400, "no-such-model")
    assert (await client.get(api + "/knowledge-bases/drinks", headers=alice)).json()["embedding_model"] == \
        "local/all-MiniLM-L6-v2"

    r = await client.post(api + "/knowledge-bases/drinks/reembed", headers=alice, json={"embedding_model": "emb"})
    assert r.status_code == 200, r.text
    assert (r.json()["embedding_model"], r.json()["dimension"], r.json()["chunks"]) == ("emb", 3, 3)
    embedded = [q.json["input"] for q in fake_openai.requests if q.path.endswith("/embeddings")]
    texts = [t for batch in embedded for t in batch]
    assert len(texts) == 3 and any(t.startswith("Tea guide > Black tea\n") for t in texts)  # with its context
    hits = await client.post(api + "/knowledge-bases/drinks/search", headers=alice,
                             json={"query": "espresso", "mode": "vector"})
    assert hits.status_code == 200 and len(hits.json()["data"]) == 3  # the 3-dimensional vectors are searched
    usage = (await client.get(api + "/usage", headers=alice, params={"group_by": "model"})).json()["data"]
    assert {u["group"] for u in usage} == {"emb"} and usage[0]["cost_usd"] > 0

    r = await client.post(api + "/knowledge-bases/drinks/reembed", headers=alice,
                          json={"embedding_model": "local/all-MiniLM-L6-v2"})
    assert r.status_code == 200 and r.json()["dimension"] == 384
    hits = await client.post(api + "/knowledge-bases/drinks/search", headers=bob,
                             json={"query": "espresso machine pressure", "mode": "vector"})
    assert hits.json()["data"][0]["source"] == "coffee.md"


async def test_concurrent_creates_of_one_name_give_one_knowledge_base_and_409s(
    api: str, client: httpx.AsyncClient,
) -> None:
    """Each create checks the name, then inserts: whether the check or the database's unique name stops
    the others (the race is not forced here), they get a 409, never a 500, and one knowledge base is made."""
    import asyncio

    _, alice = await user(client, api, "alice@example.com")
    answers = await asyncio.gather(*(client.post(api + "/knowledge-bases", headers=alice, json={"name": "race"})
                                     for _ in range(6)))
    assert sorted(r.status_code for r in answers) == [201] + [409] * 5, [r.text for r in answers]
    assert all(r.json()["error"]["message"] for r in answers if r.status_code == 409)
    listed = (await client.get(api + "/knowledge-bases", headers=alice)).json()["data"]
    assert [kb["name"] for kb in listed] == ["race"]


async def test_a_unique_constraint_hit_by_a_concurrent_write_is_a_409(
    settings: Settings, local_embedder: LocalEmbedder, client: httpx.AsyncClient,
) -> None:
    """The app's safety net: an IntegrityError that escapes a route (a check passed by two requests at
    once) is answered 409 with the error shape, and the server goes on."""
    from sqlalchemy.exc import IntegrityError

    app = create_app(settings, parse_config({"models": []}), local_embedder=local_embedder)

    async def clash() -> None:
        raise IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed: knowledge_bases.owner_id"))

    app.fastapi.add_api_route("/test/clash", clash, methods=["POST"])
    async with serving(app) as url:
        r = await client.post(url + "/test/clash")
        assert r.status_code == 409 and r.json()["error"]["code"] == "concurrent_change"
        assert "UNIQUE" not in r.text  # the database's words stay in the log
        assert (await client.get(url + "/health")).status_code == 200
