"""The Knowledge pages in a real browser: a knowledge base made with the page's form, a whole folder
uploaded through the folder picker (each file's progress and outcome shown), then the search
playground and the passage a result links to; the same on a phone's width with several files."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from .harness import MEMBER_PASSWORD, E2EServer, PageWatch, login, screenshot
from .test_pages_a11y import OVERFLOW, UNNAMED_CONTROLS

HERON = "# Herons\n\nThe grey heron nests in tall reeds beside the quiet river and hunts fish at dawn.\n"
VOLCANO = "# Volcanoes\n\nVolcanoes form where tectonic plates meet; magma rises through the crust.\n"
BREAD = "Sourdough bread needs a starter culture, flour, water and a long slow rise.\n"
HOSTILE = "<img src=x onerror=alert(1)>.md"


def _folder(root: Path) -> Path:
    folder = root / "field-notes"
    (folder / "geology").mkdir(parents=True)
    (folder / "herons.md").write_text(HERON)
    (folder / "geology" / "volcanoes.md").write_text(VOLCANO)
    (folder / "bread.txt").write_text(BREAD)
    (folder / "tool.exe").write_bytes(b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\xff\xff\x00\x00\xb8")
    return folder


def _fits(page: Page) -> None:
    """Nothing sticks out at a phone's width, and the page does not scroll sideways."""
    assert page.evaluate(OVERFLOW) == []
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390


def _create(page: Page, name: str) -> None:
    page.goto("/knowledge")
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Create").click()
    page.wait_for_url(re.compile(r"/knowledge/kb_\w+$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text(name)


def _outcome(page: Page, name: str) -> str:
    label = page.locator(".name", has_text=re.compile(f"^{re.escape(name)}$"))
    item = page.locator("#upload-list li").filter(has=label)
    expect(item).to_have_count(1)
    return item.get_attribute("data-outcome") or ""


def test_a_folder_upload_shows_each_files_outcome_then_search_finds_the_passage(
    page: Page, server: E2EServer, watch: PageWatch, tmp_path: Path,
) -> None:
    server.make_member("e2e-kb-desktop@example.com")
    login(page, server, "e2e-kb-desktop@example.com", MEMBER_PASSWORD)
    _create(page, "field-notes")
    expect(page.locator("#no-docs")).to_be_visible()
    assert page.evaluate(UNNAMED_CONTROLS) == []

    folder = _folder(tmp_path)
    page.locator("#folder").set_input_files(folder)
    expect(page.locator("#upload-summary")).to_contain_text("4 of 4 done", timeout=60_000)
    names = ("field-notes/herons.md", "field-notes/geology/volcanoes.md", "field-notes/bread.txt",
             "field-notes/tool.exe")
    assert [_outcome(page, n) for n in names] == ["added", "added", "added", "refused"]
    # the same folder again: nothing changed; then a copy of a file under another name
    page.locator("#folder").set_input_files(folder)
    expect(page.locator("#upload-summary")).to_contain_text("8 of 8 done", timeout=60_000)
    expect(page.locator("#upload-list li[data-outcome=unchanged]")).to_have_count(3)
    copy = tmp_path / "herons-copy.md"
    copy.write_text(HERON)
    page.locator("#files").set_input_files(copy)
    expect(page.locator("#upload-summary")).to_contain_text("9 of 9 done", timeout=60_000)
    for outcome, count in (("added", 3), ("unchanged", 3), ("refused", 2), ("duplicate", 1)):
        expect(page.locator(f"#upload-list li[data-outcome={outcome}]")).to_have_count(count)
        expect(page.locator("#upload-summary")).to_contain_text(f"{count} {outcome}")
    refused = page.locator("#upload-list li[data-outcome=refused] .outcome")
    expect(refused.first).to_contain_text(re.compile(r"refused: \S"))
    expect(page.locator("#upload-list li[data-outcome=duplicate] .outcome")).to_contain_text(
        "same content as field-notes/herons.md")
    for bar in page.locator("#upload-list progress").all():
        assert bar.evaluate("b => b.value") == 100
    # a web page by URL: one on this machine is refused, and says why
    page.get_by_label("Or a web page").fill("http://127.0.0.1:9/private")
    page.get_by_role("button", name="Fetch and add").click()
    expect(page.locator("#upload-summary")).to_contain_text("10 of 10 done")
    fetched = page.locator("#upload-list li").last
    expect(fetched).to_have_attribute("data-outcome", "refused")
    expect(fetched.locator(".name")).to_have_text("http://127.0.0.1:9/private")
    expect(fetched.locator(".outcome")).to_contain_text(re.compile(r"refused: .*\S"))
    # the refused file's 4xx answer is the one error the console may show
    errors = watch.take_console_errors()
    assert all("status of 4" in e and re.search(r"/(documents|urls)\b", e) for e in errors), errors
    screenshot(page, "knowledge-upload")

    page.get_by_role("link", name="Show the updated document list").click()
    expect(page.locator(".docs td.doc-name a")).to_have_text(
        ["field-notes/bread.txt", "field-notes/geology/volcanoes.md", "field-notes/herons.md"])

    page.get_by_role("searchbox", name="Query").fill("where do herons nest by the river")
    page.get_by_role("button", name="Search").click()
    first = page.locator("#results li.result").first
    expect(first.locator(".passage")).to_contain_text("nests in tall reeds")
    for part in (".score-fused", ".score-keyword", ".score-vector"):
        assert float(first.locator(part).inner_text()) > 0
    screenshot(page, "knowledge-search")

    first.locator("a.doc-link").click()
    page.wait_for_url(re.compile(r"/documents/doc_\w+\?chunk=\d+#chunk-\d+$"))
    cited = page.locator("li.passage-item:target")
    expect(cited).to_have_count(1)
    expect(cited.locator(".passage")).to_contain_text("nests in tall reeds")
    screenshot(page, "knowledge-document")


def test_several_files_on_a_phone_and_hostile_names_stay_text(
    phone_page: Page, server: E2EServer, watch: PageWatch, tmp_path: Path,
) -> None:
    page = phone_page
    server.make_member("e2e-kb-phone@example.com")
    login(page, server, "e2e-kb-phone@example.com", MEMBER_PASSWORD)
    _create(page, "pocket")
    files = []
    for name, text in (("volcanoes.md", VOLCANO), ("bread.txt", BREAD), (HOSTILE, "<script>alert(2)</script> heron")):
        path = tmp_path / name
        path.write_text(text)
        files.append(path)
    page.on("dialog", lambda d: (_ for _ in ()).throw(AssertionError(f"a dialog opened: {d.message}")))
    page.locator("#files").set_input_files(files)
    expect(page.locator("#upload-summary")).to_contain_text("3 of 3 done", timeout=60_000)
    expect(page.locator("#upload-list li[data-outcome=added]")).to_have_count(3)
    expect(page.locator("#upload-list .name").nth(2)).to_have_text(HOSTILE)
    _fits(page)
    screenshot(page, "knowledge-upload")

    page.reload()
    expect(page.locator(".docs td.doc-name a", has_text=HOSTILE)).to_have_count(1)
    page.get_by_role("searchbox", name="Query").fill("magma")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#results li.result").first.locator("a.doc-link")).to_have_text("Volcanoes")
    _fits(page)
    assert page.locator("img").count() == 0
    screenshot(page, "knowledge-search")

    page.goto("/knowledge")
    expect(page.get_by_role("link", name="pocket")).to_be_visible()
    _fits(page)
    screenshot(page, "knowledge-list")
    assert watch.problems() == []
