"""``fetch_url``: a public page or document through the SSRF-safe fetcher (public addresses only), as title
and text (HTML, PDF, text, Markdown, JSON, CSV, DOCX, with the knowledge parsers)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..errors import ThinktankError, UnsupportedMediaTypeError
from .arguments import Args, cut_text, object_schema
from .tools import ToolContext, ToolError, ToolOutput, ToolSpec

if TYPE_CHECKING:
    from ..knowledge.ingest import Source
    from ..knowledge.parsers import Extracted
    from ..knowledge.urls import UrlFetcher

__all__ = ["DEFAULT_FETCH_CHARS", "MAX_FETCH_CHARS", "FetchUrl"]

DEFAULT_FETCH_CHARS = 8000
"""What ``fetch_url`` returns of a page's text unless asked for more."""
MAX_FETCH_CHARS = 20_000
"""The most ``fetch_url`` returns (the loop cuts any tool result at ``MAX_RESULT_CHARS`` anyway)."""
_MAX_PDF_PAGES = 200


class FetchUrl:
    """``fetch_url``: a public page or document through the SSRF-safe fetcher, as title and text."""

    def __init__(self, fetcher: UrlFetcher) -> None:
        self.spec = ToolSpec(
            "fetch_url", "fetch_url",
            "Fetch a public web page or document (http or https: HTML, PDF, text, Markdown, JSON, CSV, DOCX) and "
            f"return its title and text, cut to max_chars characters (default {DEFAULT_FETCH_CHARS}). Private "
            "and local addresses are refused.",
            object_schema({
                "url": {"type": "string", "minLength": 1, "maxLength": 1024, "description": "An http(s) URL."},
                "max_chars": {"type": "integer", "minimum": 100, "maximum": MAX_FETCH_CHARS,
                              "description": f"The most characters of text to return (default {DEFAULT_FETCH_CHARS})."},
            }, ["url"]),
        )
        self.fetcher = fetcher

    async def call(self, arguments: dict[str, Any], tc: ToolContext) -> ToolOutput:
        args = Args(arguments, self.spec)
        url = args.required_text("url", max_chars=1024)
        max_chars = args.integer("max_chars", low=100, high=MAX_FETCH_CHARS, default=DEFAULT_FETCH_CHARS)
        try:
            source = await self.fetcher.fetch(url)
            extracted = await asyncio.to_thread(_extract, source)
        except ThinktankError as exc:
            raise ToolError(f"fetch_url: {exc.message}") from None
        text, cut = cut_text(_as_text(extracted), max_chars)
        final = (source.metadata or {}).get("final_url", source.name)
        head = [f"Title: {extracted.title}"] if extracted.title else []
        head.append(f"URL: {final}")
        if cut:
            text += f"\n[... cut at {max_chars} characters]"
        return ToolOutput("\n".join(head) + "\n\n" + text, data={
            "url": final, "title": extracted.title, "content_type": source.content_type, "truncated": cut})


def _extract(source: Source) -> Extracted:
    """The document's text (in a worker thread: PDF parsing is CPU-bound). The parsers' text limit cuts
    whole blocks, so it is not set to ``max_chars`` (one long paragraph would leave nothing); the body is
    already bounded by the fetcher's ``max_bytes``, and PDFs are read up to ``_MAX_PDF_PAGES``."""
    from ..knowledge.parsers import Limits, detect_kind, extract

    try:
        kind = detect_kind(source.name, source.content_type, source.data)
    except UnsupportedMediaTypeError:
        kind = _sniff(source)
    return extract(source.data, kind, Limits(max_pages=_MAX_PDF_PAGES))


def _sniff(source: Source) -> str:
    """A kind for a document whose type the parsers do not know (no or a generic Content-Type)."""
    from ..knowledge.parsers import detect_kind

    head = source.data.lstrip()[:512].lower()
    if head.startswith(b"%pdf-"):
        return "pdf"
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    declared = (source.content_type or "").split(";")[0].strip().lower()
    if declared.startswith("text/") or declared.endswith(("+xml", "/xml")):
        return detect_kind(None, "text/plain", source.data)  # refuses binary data
    raise UnsupportedMediaTypeError(f"the document's type ({declared or 'unknown'}) cannot be read as text")


def _as_text(extracted: Extracted) -> str:
    lines: list[str] = []
    page: int | None = None
    for block in extracted.blocks:
        if block.page is not None and block.page != page:
            page = block.page
            lines.append(f"[page {page}]")
        if block.kind == "heading":
            lines.append("#" * max(1, min(block.level, 6)) + " " + block.text)
        elif block.kind == "list":
            lines.append("- " + block.text)
        else:
            lines.append(block.text)
    return "\n\n".join(lines)
