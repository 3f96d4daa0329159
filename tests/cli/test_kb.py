"""``thinktank kb``: the CLI against a real server on loopback (the local model, SQLite, real files)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from thinktank.api.app import create_app
from thinktank.cli import app
from thinktank.config import Settings, parse_config

from ..fakes.documents import docx, pdf
from ..fakes.server import serving

if TYPE_CHECKING:
    from thinktank.knowledge.embeddings import LocalEmbedder

ADMIN = "tt-test-admin-key-0123456789"
PASSWORD = "correct horse battery staple"
GUIDE = "# Tea guide\n\nGreen tea is steeped at 80 degrees for two minutes.\n\nBlack tea takes boiling water."
COFFEE = "Espresso is brewed by forcing hot water through finely ground coffee beans."


@pytest.fixture
async def url(tmp_path: Path, local_embedder: LocalEmbedder) -> AsyncIterator[str]:
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN)
    async with serving(create_app(settings, parse_config({"models": []}), local_embedder=local_embedder)) as base:
        yield base


async def kb(url: str, key: str, *args: str, env: dict[str, str] | None = None) -> Result:
    """``thinktank kb ARGS --url URL --api-key KEY``, run in a worker thread while the server serves."""
    full = ["kb", *args] + (["--url", url, "--api-key", key] if env is None else [])
    return await asyncio.to_thread(CliRunner(env={"COLUMNS": "200", **(env or {})}).invoke, app, full)


async def member(url: str, email: str) -> str:
    """A member made with the admin API; their session token."""
    async with httpx.AsyncClient(base_url=url + "/api/v1", timeout=30) as c:
        made = await c.post("/users", headers={"Authorization": f"Bearer {ADMIN}"},
                            json={"email": email, "password": PASSWORD})
        assert made.status_code == 201, made.text
        login = await c.post("/auth/login", json={"email": email, "password": PASSWORD})
        token: str = login.json()["token"]
        return token


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def folder(root: Path) -> Path:
    """Nested documents, one unsupported file, hidden ones."""
    docs = root / "docs"
    (docs / "tea" / "green").mkdir(parents=True)
    (docs / ".git").mkdir()
    (docs / "guide.md").write_text(GUIDE)
    (docs / "tea" / "coffee.txt").write_text(COFFEE)
    (docs / "tea" / "guide.md").write_text("# Brewing\n\nWarm the pot before the leaves go in.")  # a second guide.md
    (docs / "tea" / "green" / "manual.pdf").write_bytes(pdf(["The kettle boils water for the teapot."]))
    (docs / "tea" / "green" / "notes.docx").write_bytes(docx([("Heading1", "Cups"), (None, "Porcelain cups.")]))
    (docs / "tea" / "tool.exe").write_bytes(b"MZ\x90\x00")
    (docs / ".secret.txt").write_text("hidden")
    (docs / ".git" / "config.txt").write_text("never read")
    return docs


async def test_create_add_folder_list_search_and_delete(url: str, tmp_path: Path) -> None:
    out = ok(await kb(url, ADMIN, "create", "notes", "--description", "kitchen notes", "--chunk-tokens", "100"))
    assert re.fullmatch(r"created notes \(kb_[0-9a-f]+, local/all-MiniLM-L6-v2\)\n", out)

    docs = folder(tmp_path)
    r = await kb(url, ADMIN, "add", "notes", str(docs), "--batch-files", "3", "--quiet")
    assert ok(r).splitlines() == ["added 5, replaced 0, unchanged 0, duplicate 0, failed 0"]
    assert "skipped: 1 unsupported, 2 hidden" in r.stderr and "warning" not in r.stderr

    listed = (await kb(url, ADMIN, "docs", "notes", "--json"))
    sources = sorted(d["source"] for d in json.loads(ok(listed))["data"])  # paths below the folder: no collision
    assert sources == ["guide.md", "tea/coffee.txt", "tea/green/manual.pdf", "tea/green/notes.docx", "tea/guide.md"]

    # Again, with the progress bar and one file changed: the rest is unchanged.
    (docs / "guide.md").write_text(GUIDE + "\n\nOolong sits in between.")
    assert ok(await kb(url, ADMIN, "add", "notes", str(docs))).splitlines() == [
        "added 0, replaced 1, unchanged 4, duplicate 0, failed 0"]

    # A file named explicitly is sent under its own name, whatever its type; here the same bytes as
    # tea/coffee.txt, so a duplicate; the server's refusal of the other is a failure: exit 1.
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"not a pdf at all")
    r = await kb(url, ADMIN, "add", "notes", str(bad), str(docs / "tea" / "coffee.txt"), "-q")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[0] == "added 0, replaced 0, unchanged 0, duplicate 1, failed 1"
    assert lines[1].startswith(f"  failed {bad}: ") and lines[1].endswith("(415)") and "not one" in lines[1]

    table = ok(await kb(url, ADMIN, "list")).splitlines()
    assert table[0].split() == ["ID", "NAME", "ACCESS", "DOCUMENTS", "CHUNKS", "PENDING", "MODEL"]
    assert table[1].split()[1:4] == ["notes", "admin", "5"]
    shown = ok(await kb(url, ADMIN, "show", "notes"))
    assert "description:     kitchen notes" in shown and "chunk_tokens:    100" in shown

    found = ok(await kb(url, ADMIN, "search", "notes", "-q", "how long is green tea steeped", "--top-k", "2"))
    first = found.splitlines()
    assert re.fullmatch(r" 1\. \d\.\d{3}  guide\.md", first[0]) and "Tea guide" in first[1]
    assert "80 degrees" in found
    raw = json.loads(ok(await kb(url, ADMIN, "search", "notes", "-q", "kettle", "--mode", "keyword", "--json")))
    assert raw["data"][0]["source"] == "tea/green/manual.pdf" and "p.1" in ok(
        await kb(url, ADMIN, "search", "notes", "-q", "kettle", "--mode", "keyword"))

    doc_id = next(d["id"] for d in json.loads(ok(await kb(url, ADMIN, "docs", "notes", "--json")))["data"]
                  if d["source"] == "tea/coffee.txt")
    assert ok(await kb(url, ADMIN, "rm-doc", "notes", doc_id)) == f"removed {doc_id}\n"
    r = await kb(url, ADMIN, "rm-doc", "notes", doc_id)
    assert r.exit_code == 2 and f"error: document '{doc_id}' not found" in r.stderr

    assert ok(await kb(url, ADMIN, "delete", "notes", "--yes")) == "deleted notes\n"
    r = await kb(url, ADMIN, "show", "notes")
    assert r.exit_code == 2 and "error: knowledge base 'notes' not found" in r.stderr


async def test_share_contribute_review_and_search_across(url: str, tmp_path: Path) -> None:
    alice = await member(url, "alice@example.com")
    bob = await member(url, "bob@example.com")
    ok(await kb(url, alice, "create", "wiki"))
    ok(await kb(url, bob, "create", "own"))
    shared = ok(await kb(url, alice, "share", "wiki", "--user", "bob@example.com", "--access", "read"))
    share_id = re.search(r"share id (\d+)", shared)
    assert share_id is not None and "(read)" in shared

    page = tmp_path / "coffee.txt"
    page.write_text(COFFEE)
    r = await kb(url, bob, "add", "wiki", str(page), "-q")
    assert ok(r).splitlines() == ["added 1, replaced 0, unchanged 0, duplicate 0, failed 0",
                                  "1 document waits for review by an owner of wiki."]
    assert "No results." in ok(await kb(url, bob, "search", "wiki", "-q", "espresso"))
    pending = json.loads(ok(await kb(url, alice, "docs", "wiki", "--status", "pending", "--json")))["data"]
    assert [d["source"] for d in pending] == ["coffee.txt"]
    r = await kb(url, bob, "review", "wiki", pending[0]["id"], "--approve")
    assert r.exit_code == 2 and "this needs admin" in r.stderr
    assert ok(await kb(url, alice, "review", "wiki", pending[0]["id"], "--approve")) == "coffee.txt: approved\n"

    own = tmp_path / "tea.md"
    own.write_text(GUIDE)
    ok(await kb(url, bob, "add", "own", str(own), "-q"))
    found = ok(await kb(url, bob, "search", "wiki", "own", "-q", "espresso or green tea"))
    assert "coffee.txt  [wiki]" in found and "tea.md  [own]" in found
    r = await kb(url, alice, "search", "wiki", "own", "-q", "tea")
    assert r.exit_code == 2 and "error: knowledge base 'own' not found" in r.stderr

    listing = ok(await kb(url, alice, "shares", "wiki"))
    assert share_id.group(1) in listing and "read" in listing
    assert ok(await kb(url, alice, "unshare", "wiki", share_id.group(1))) == f"removed share {share_id.group(1)}\n"
    r = await kb(url, bob, "show", "wiki")
    assert r.exit_code == 2 and "not found" in r.stderr


async def test_settings_from_the_environment_and_errors(url: str, tmp_path: Path) -> None:
    env = {"THINKTANK_URL": url, "THINKTANK_API_KEY": ADMIN}
    assert ok(await kb(url, ADMIN, "list", env=env)).startswith("No knowledge bases yet")
    r = await kb(url, "wrong-key", "list")
    assert r.exit_code == 2 and r.stderr.startswith("error: ")
    r = await kb("http://127.0.0.1:9", ADMIN, "list")
    assert r.exit_code == 2 and "cannot reach a thinktank server at http://127.0.0.1:9 " in r.stderr
    r = await kb(url, ADMIN, "create", "bad name")
    assert r.exit_code == 2 and "error: name:" in r.stderr
    r = await kb(url, ADMIN, "share", "x")
    assert r.exit_code == 2 and "--user or --team" in r.stderr
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    r = await kb(url, ADMIN, "add", "x", str(empty), "-q")
    assert r.exit_code == 2 and "no files to upload" in r.stderr and "skipped: 1 hidden" in r.stderr


def test_batches_by_count_and_size(tmp_path: Path) -> None:
    from thinktank.cli.kb import batches

    sizes = [10, 10, 10, 100, 5, 5]
    paths = []
    for i, size in enumerate(sizes):
        p = tmp_path / f"f{i}.txt"
        p.write_bytes(b"x" * size)
        paths.append(p)
    groups: list[list[Any]] = [[p.name for p in b] for b in batches(paths, max_files=2, max_bytes=25)]
    assert groups == [["f0.txt", "f1.txt"], ["f2.txt"], ["f3.txt"], ["f4.txt", "f5.txt"]]


def test_local_creates_and_lists_in_this_machines_data(local_env: Path) -> None:
    r = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["kb", "create", "notes", "--local"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("created notes (kb_")
    listed = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["kb", "list", "--local"])
    assert listed.exit_code == 0 and listed.stdout.splitlines()[1].split()[1:3] == ["notes", "admin"]
