"""Text and structure out of uploaded files: txt, md, html, pdf, docx, csv, json.

Every parser works on bytes already bounded by the upload limit, and bounds what it produces:
a PDF is read up to ``max_pages`` pages, a DOCX's XML is refused when it would inflate beyond
``max_inflated_bytes`` (a zip bomb), and extracted text stops at ``max_chars``. What was cut is
said in ``warnings``; a file that is not what it claims to be, or has no text, is a clear client
error (415, 422), never a crash.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from ..errors import UnprocessableError, UnsupportedMediaTypeError
from .chunking import Block, markdown_blocks, text_blocks

__all__ = ["SUPPORTED", "Extracted", "Limits", "decode_text", "detect_kind", "extract", "safe_filename"]

SUPPORTED: dict[str, str] = {
    ".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html",
    ".pdf": "pdf", ".docx": "docx", ".csv": "csv", ".json": "json",
}
_CONTENT_TYPES: dict[str, str] = {
    "text/plain": "text", "text/markdown": "markdown", "text/x-markdown": "markdown", "text/html": "html",
    "application/xhtml+xml": "html", "application/pdf": "pdf", "text/csv": "csv", "application/json": "json",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
}


@dataclass(frozen=True, slots=True)
class Limits:
    max_pages: int = 2000
    max_chars: int = 5_000_000
    max_inflated_bytes: int = 50_000_000
    max_csv_rows: int = 100_000


@dataclass(slots=True)
class Extracted:
    blocks: list[Block]
    title: str | None = None
    pages: int | None = None
    warnings: list[str] = field(default_factory=list)


def safe_filename(name: str) -> str:
    """A file name fit to show and store: the last path component, without control characters or
    NUL bytes; never ``..``, never empty."""
    cleaned = "".join(ch for ch in name if ch.isprintable() and ch not in "\x00")
    base = PurePosixPath(cleaned.replace("\\", "/")).name.strip()
    if base in ("", ".", ".."):
        return "document"
    return base[:255]


def detect_kind(filename: str | None, content_type: str | None, data: bytes) -> str:
    """The parser for a file, from its name, its declared type and its first bytes; 415 if none. For a
    URL the server's Content-Type comes first, then the suffix of the URL's path (not its query)."""
    kind = None
    by_type = _CONTENT_TYPES.get(content_type.split(";")[0].strip().lower()) if content_type else None
    if filename and filename.lower().startswith(("http://", "https://")):
        kind = by_type or SUPPORTED.get(PurePosixPath(urlsplit(filename).path).suffix.lower())
    elif filename:
        kind = SUPPORTED.get(PurePosixPath(safe_filename(filename)).suffix.lower())
    if kind is None:
        kind = by_type
    if kind is None:
        raise UnsupportedMediaTypeError(
            f"Unsupported file type ({filename or content_type or 'unknown'}); supported: "
            + ", ".join(sorted(SUPPORTED))
        )
    # The bytes must agree with the claim: a renamed binary is refused, not parsed as text.
    if kind == "pdf" and not data.lstrip()[:5].startswith(b"%PDF-"):
        raise UnsupportedMediaTypeError("The file is named or typed as a PDF but is not one.")
    if kind == "docx" and not data.startswith(b"PK\x03\x04"):
        raise UnsupportedMediaTypeError("The file is named or typed as a DOCX but is not one.")
    if kind not in ("pdf", "docx") and b"\x00" in data[:8192] and not _is_utf16(data):
        raise UnsupportedMediaTypeError(f"The file is named or typed as {kind} but holds binary data.")
    return kind


def extract(data: bytes, kind: str, limits: Limits | None = None) -> Extracted:
    lim = limits or Limits()
    parser: Callable[[bytes, Limits], Extracted] = _PARSERS[kind]
    out = parser(data, lim)
    out.title = valid_unicode(out.title) if out.title is not None else None
    out.blocks = [b if (text := valid_unicode(b.text)) is b.text else replace(b, text=text) for b in out.blocks]
    total = 0
    for i, block in enumerate(out.blocks):
        total += len(block.text)
        if total > lim.max_chars:
            out.blocks = out.blocks[:i]
            out.warnings.append(f"The text was cut at {lim.max_chars:,} characters.")
            break
    if not any(b.text.strip() for b in out.blocks if b.kind != "heading"):
        if kind == "pdf":
            raise UnprocessableError("The PDF has no text layer (a scan?); there is nothing to index.")
        raise UnprocessableError("The file holds no text.")
    return out


# -- text ----------------------------------------------------------------------------------------

def valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate (a JSON escape such as ``\\ud800``) as U+FFFD: the tokenizer, the
    database and the pages take only text that encodes as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _is_utf16(data: bytes) -> bool:
    return data.startswith((b"\xff\xfe", b"\xfe\xff"))


def decode_text(data: bytes) -> tuple[str, list[str]]:
    """UTF-8 (with or without BOM), UTF-16 with a BOM, else Windows-1252 when that decodes and
    UTF-8 with replacement characters otherwise; a warning says when it was not clean UTF-8."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif _is_utf16(data):
        return data.decode("utf-16", errors="replace"), []
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), ["The text is not UTF-8; it was read as Windows-1252."]
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), ["The text is not valid UTF-8; bad bytes were replaced."]


def _text(data: bytes, _: Limits) -> Extracted:
    text, warnings = decode_text(data)
    return Extracted(text_blocks(text), warnings=warnings)


def _markdown(data: bytes, _: Limits) -> Extracted:
    text, warnings = decode_text(data)
    blocks = markdown_blocks(text)
    title = next((b.text for b in blocks if b.kind == "heading" and b.level == 1), None)
    return Extracted(blocks, title=title, warnings=warnings)


# -- HTML ----------------------------------------------------------------------------------------

_HTML_BLOCKS = {"h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "td", "th", "dt", "dd",
                "figcaption", "caption"}
_HTML_DROP = "script, style, noscript, template, svg, nav, footer, header, aside, form, iframe, head"


def _html(data: bytes, _: Limits) -> Extracted:
    from selectolax.lexbor import LexborHTMLParser

    text, warnings = decode_text(data)
    tree = LexborHTMLParser(text)
    title_node = tree.css_first("title")
    title = " ".join(title_node.text().split()) if title_node else None
    for node in tree.css(_HTML_DROP):
        node.decompose()
    root = tree.body or tree.root
    blocks: list[Block] = []
    if root is not None:
        for node in root.traverse(include_text=False):
            tag = node.tag
            if tag not in _HTML_BLOCKS:
                continue
            if tag in ("p", "li", "td", "th", "dd", "dt") and _has_block_parent(node):
                continue  # its text is in the enclosing block already
            if tag == "pre":
                body = node.text(deep=True, separator="")
                if body.strip():
                    blocks.append(Block("code", body.strip("\n")))
                continue
            body = " ".join(node.text(deep=True, separator=" ").split())
            if not body:
                continue
            if tag[0] == "h" and tag[1:].isdigit():
                blocks.append(Block("heading", body, level=int(tag[1:])))
            else:
                blocks.append(Block("list" if tag == "li" else "paragraph", body))
        if not blocks:  # a page of bare text without block elements
            blocks = text_blocks(root.text(deep=True, separator="\n"))
    return Extracted(blocks, title=title or None, warnings=warnings)


def _has_block_parent(node: object) -> bool:
    parent = getattr(node, "parent", None)
    while parent is not None:
        if getattr(parent, "tag", None) in _HTML_BLOCKS:
            return True
        parent = getattr(parent, "parent", None)
    return False


# -- PDF -----------------------------------------------------------------------------------------

def _pdf(data: bytes, lim: Limits) -> Extracted:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # it warns on every malformed object
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise UnprocessableError("The PDF is encrypted; send it without a password.")
        pages = len(reader.pages)
    except PdfReadError as exc:
        raise UnprocessableError(f"The PDF cannot be read: {exc}") from None
    out = Extracted([], pages=pages)
    if pages > lim.max_pages:
        out.warnings.append(f"The PDF has {pages:,} pages; only the first {lim.max_pages:,} were read.")
    chars = 0
    for number in range(min(pages, lim.max_pages)):
        try:
            text = reader.pages[number].extract_text() or ""
        except Exception as exc:  # pypdf raises many kinds on a broken page: that page is skipped
            out.warnings.append(f"Page {number + 1} could not be read ({type(exc).__name__}).")
            continue
        out.blocks.extend(text_blocks(text, page=number + 1))
        chars += len(text)
        if chars > lim.max_chars:
            break
    meta = reader.metadata
    out.title = str(meta.title) if meta is not None and meta.title else None
    return out


# -- DOCX ----------------------------------------------------------------------------------------

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def _docx(data: bytes, lim: Limits) -> Extracted:
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        info = archive.getinfo("word/document.xml")
    except (zipfile.BadZipFile, KeyError):
        raise UnprocessableError("The DOCX is damaged: it has no word/document.xml.") from None
    if info.file_size > lim.max_inflated_bytes:
        raise UnprocessableError(
            f"The DOCX inflates to {info.file_size:,} bytes, more than the {lim.max_inflated_bytes:,} allowed."
        )
    with archive.open(info) as handle:
        raw = handle.read(lim.max_inflated_bytes + 1)  # the declared size can lie: read no more than allowed
    if len(raw) > lim.max_inflated_bytes:
        raise UnprocessableError(f"The DOCX inflates to more than the {lim.max_inflated_bytes:,} bytes allowed.")
    try:
        root = ElementTree.fromstring(raw)
    except (ElementTree.ParseError, DefusedXmlException) as exc:
        raise UnprocessableError(f"The DOCX's XML cannot be read: {exc}") from None
    blocks: list[Block] = []
    for para in root.iter(f"{_W}p"):
        body = "".join(t.text or "" for t in para.iter(f"{_W}t")).strip()
        if not body:
            continue
        style = para.find(f"{_W}pPr/{_W}pStyle")
        name = (style.get(f"{_W}val") or "") if style is not None else ""
        level = name[7:]  # "Heading2"; ASCII digits only ("Heading²" is isdigit but not int), and few of them
        if name.lower().startswith("heading") and level.isascii() and level.isdigit() and len(level) <= 2:
            blocks.append(Block("heading", body, level=int(level)))
        elif name.lower() == "title":
            blocks.append(Block("heading", body, level=1))
        elif para.find(f"{_W}pPr/{_W}numPr") is not None:
            blocks.append(Block("list", body))
        else:
            blocks.append(Block("paragraph", " ".join(body.split())))
    return Extracted(blocks, title=next((b.text for b in blocks if b.kind == "heading"), None))


# -- CSV and JSON --------------------------------------------------------------------------------

def _csv(data: bytes, lim: Limits) -> Extracted:
    text, warnings = decode_text(data)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = csv.reader(io.StringIO(text), dialect)
    out = Extracted([], warnings=warnings)
    try:  # a field over the csv module's limit (128 KiB), say
        header = next(rows, None)
        if header is None:
            return out
        for n, row in enumerate(rows):
            if n >= lim.max_csv_rows:
                out.warnings.append(f"Only the first {lim.max_csv_rows:,} rows were read.")
                break
            pairs = [f"{h.strip()}: {v.strip()}" for h, v in zip(header, row, strict=False) if v.strip()]
            if pairs:
                out.blocks.append(Block("paragraph", "; ".join(pairs)))
    except csv.Error as exc:
        raise UnprocessableError(f"The CSV cannot be read: {exc}.") from None
    if not out.blocks:  # a header and nothing else: the header is the text
        out.blocks.append(Block("paragraph", ", ".join(header)))
    return out


def _json(data: bytes, _: Limits) -> Extracted:
    text, warnings = decode_text(data)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnprocessableError(f"The JSON is not valid: {exc}") from None
    except RecursionError:
        raise UnprocessableError("The JSON is nested too deeply to read.") from None
    blocks: list[Block] = []
    items = value if isinstance(value, list) else [value]
    for item in items:
        lines: list[str] = []
        _flatten(item, "", lines, depth=0)
        if lines:
            blocks.append(Block("paragraph", "; ".join(lines)))
    return Extracted(blocks, warnings=warnings)


def _flatten(value: object, prefix: str, out: list[str], depth: int) -> None:
    if depth > 32:  # deeply nested data: what is below is dropped, not recursed into for ever
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}[{i}]", out, depth + 1)
    elif value is not None and str(value).strip():
        out.append(f"{prefix}: {value}" if prefix else str(value))


_PARSERS: dict[str, Callable[[bytes, Limits], Extracted]] = {
    "text": _text, "markdown": _markdown, "html": _html, "pdf": _pdf, "docx": _docx, "csv": _csv, "json": _json,
}
