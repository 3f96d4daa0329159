"""Parsers on real files: each format, and the bad inputs (wrong type, bombs, huge PDFs, no text)."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile

import pytest

from thinktank.errors import UnprocessableError, UnsupportedMediaTypeError
from thinktank.knowledge.chunking import Block
from thinktank.knowledge.parsers import Limits, decode_text, detect_kind, extract, safe_filename

from ..fakes.documents import docx, pdf


def kinds(blocks: list[Block]) -> list[tuple[str, str]]:
    return [(b.kind, b.text) for b in blocks]


def test_pdf_text_pages_and_title() -> None:
    out = extract(pdf(["Intro to the topic.", "", "Third page."], title="Report"), "pdf")
    assert out.title == "Report" and out.pages == 3
    assert [(b.page, b.text) for b in out.blocks] == [(1, "Intro to the topic."), (3, "Third page.")]


def test_a_pdf_without_text_says_so() -> None:
    with pytest.raises(UnprocessableError, match="no text layer"):
        extract(pdf(["", ""]), "pdf")


def test_a_ten_thousand_page_pdf_is_bounded() -> None:
    data = pdf(["Same page."] * 10_000)  # 2.9 MB; memory is bounded by the upload limit on the bytes
    out = extract(data, "pdf", Limits(max_pages=50))
    assert out.pages == 10_000 and len(out.blocks) == 50
    assert "only the first 50 were read" in out.warnings[0]


def test_a_damaged_or_disguised_pdf_is_refused() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="not one"):
        detect_kind("x.pdf", None, b"hello, not a pdf")
    with pytest.raises(UnprocessableError):
        extract(b"%PDF-1.4\n garbage without objects", "pdf")


def test_docx_headings_lists_and_paragraphs() -> None:
    data = docx([("Title", "Handbook"), ("Heading2", "Leave"), (None, "Ask  your manager."), ("Heading2", "Pay"),
                 (None, "Monthly.")])
    out = extract(data, "docx")
    assert kinds(out.blocks) == [("heading", "Handbook"), ("heading", "Leave"), ("paragraph", "Ask your manager."),
                                 ("heading", "Pay"), ("paragraph", "Monthly.")]
    assert out.blocks[1].level == 2 and out.title == "Handbook"


def test_a_docx_zip_bomb_is_refused_without_inflating_it() -> None:
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", b"<a>" + b" " * 60_000_000 + b"</a>")
    data = bomb.getvalue()
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(UnprocessableError, match="inflates"):
            extract(data, "docx", Limits(max_inflated_bytes=10_000_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000


def test_docx_xml_entity_expansion_is_refused() -> None:
    evil = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            b"<d>&b;</d>")
    with pytest.raises(UnprocessableError, match="XML"):
        extract(docx([], document_xml=evil), "docx")


def test_html_keeps_structure_and_drops_scripts_and_navigation() -> None:
    html = b"""<html><head><title>The  Page</title><style>p{}</style></head><body>
    <nav><a href="/">Home</a></nav><h1>Main</h1><p>First <b>bold</b> para.</p><script>alert(1)</script>
    <ul><li>one</li><li>two <p>nested</p></li></ul><pre>code  line\n  indented</pre>
    <footer>c 2024</footer></body></html>"""
    out = extract(html, "html")
    assert out.title == "The Page"
    assert kinds(out.blocks) == [("heading", "Main"), ("paragraph", "First bold para."), ("list", "one"),
                                 ("list", "two nested"), ("code", "code  line\n  indented")]


def test_markdown_text_csv_and_json() -> None:
    md = extract(b"# Title\n\nBody text.\n", "markdown")
    assert md.title == "Title" and kinds(md.blocks) == [("heading", "Title"), ("paragraph", "Body text.")]
    assert kinds(extract(b"a\nb\n\n\nc", "text").blocks) == [("paragraph", "a b"), ("paragraph", "c")]
    rows = extract(b"name;city\nAda;London\nAlan;\n", "csv")
    assert kinds(rows.blocks) == [("paragraph", "name: Ada; city: London"), ("paragraph", "name: Alan")]
    data = json.dumps([{"q": "Why?", "a": {"short": "Because", "refs": [1, 2]}}, {"q": None}]).encode()
    assert kinds(extract(data, "json").blocks) == [
        ("paragraph", "q: Why?; a.short: Because; a.refs[0]: 1; a.refs[1]: 2"),
    ]
    with pytest.raises(UnprocessableError, match="not valid"):
        extract(b"{nope", "json")


def test_undecodable_text_is_read_with_a_warning() -> None:
    assert decode_text("café".encode()) == ("café", [])
    assert decode_text(b"\xef\xbb\xbfbom") == ("bom", [])
    assert decode_text("naïve".encode("utf-16")) == ("naïve", [])
    text, warnings = decode_text("café".encode("cp1252"))
    assert text == "café" and "Windows-1252" in warnings[0]
    text, warnings = decode_text(b"bad \x81\x8d\x8f\x90\x9d bytes")
    assert "bad" in text and "\ufffd" in text and "replaced" in warnings[0]
    assert extract(b"caf\xe9 au lait", "text").warnings


def test_empty_files_and_unknown_types() -> None:
    with pytest.raises(UnprocessableError, match="no text"):
        extract(b"  \n\n ", "text")
    with pytest.raises(UnsupportedMediaTypeError, match="Unsupported"):
        detect_kind("tool.exe", "application/octet-stream", b"MZ\x90\x00")
    with pytest.raises(UnsupportedMediaTypeError, match="binary"):
        detect_kind("notes.txt", None, b"\x00\x01\x02 binary")
    assert detect_kind(None, "text/markdown; charset=utf-8", b"# x") == "markdown"
    assert detect_kind("REPORT.PDF", None, b"%PDF-1.7 ...") == "pdf"


@pytest.mark.parametrize(("given", "expected"), [
    ("../x", "x"), ("../../etc/passwd", "passwd"), ("a\x00b.txt", "ab.txt"), ("..", "document"), ("", "document"),
    ("C:\\\\Users\\\\me\\\\notes.md", "notes.md"), ("/abs/path/r.pdf", "r.pdf"), ("name\nwith\rcontrols.txt",
                                                                                "namewithcontrols.txt"),
])
def test_file_names_never_carry_paths_or_control_characters(given: str, expected: str) -> None:
    assert safe_filename(given) == expected


def test_extracted_text_is_bounded() -> None:
    out = extract(b"\n\n".join([b"x" * 1000] * 100), "text", Limits(max_chars=10_500))
    assert len(out.blocks) == 10 and "cut at 10,500" in out.warnings[0]
