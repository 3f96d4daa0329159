"""Markdown rendered on the server for model answers and user text.

The pipeline is: clean the text of characters that cannot be encoded (lone surrogates), parse it with
markdown-it-py (CommonMark plus tables and strikethrough; raw HTML is *not* recognised, so it stays text),
highlight fenced code with Pygments (CSS classes, never inline styles), render, and pass the result through
nh3 with an explicit allow-list. Nothing the model wrote reaches the page without going through nh3.

Citations ``[k]`` (1 <= k <= ``citations``) outside code and links are marked in the token stream with
private-use sentinels that survive sanitising as plain text and are then replaced by a fixed anchor whose
only variable part is the number, so the citation link cannot carry anything the model wrote.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

__all__ = ["MARKDOWN_CSS", "pygments_css", "render_inline", "render_markdown"]

# Fenced blocks longer than this are shown as plain (escaped) text: highlighting is the slow part.
HIGHLIGHT_LIMIT = 100_000
# Language names are looked up only when they look like one (Pygments aliases: letters, digits, + - # . _).
_LANG_RE = re.compile(r"[A-Za-z0-9_+#.\-]{1,40}")
_CITE_RE = re.compile(r"\[([1-9][0-9]{0,5})\]")
_OPEN, _CLOSE = "\ue000", "\ue001"
_SENTINEL_RE = re.compile(_OPEN + r"([0-9]+)" + _CLOSE)
_ALIGN = {"text-align:left": "align-left", "text-align:center": "align-center", "text-align:right": "align-right"}

_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "s", "del", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "span",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
_CLASSES = {
    "pre": {"hl"},
    "span": {c for c in STANDARD_TYPES.values() if c},
    "a": {"md-image"},
    "th": set(_ALIGN.values()),
    "td": set(_ALIGN.values()),
}

MARKDOWN_CSS = """\
.align-left { text-align: left; }
.align-center { text-align: center; }
.align-right { text-align: right; }
"""


def _clean_text(text: str) -> str:
    """Lone surrogates (which cannot be encoded as UTF-8) become U+FFFD; valid pairs are joined."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _lexer(lang: str) -> Lexer | None:
    if not _LANG_RE.fullmatch(lang):
        return None
    try:
        lexer: Lexer = get_lexer_by_name(lang, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return None
    return lexer


def _highlight(code: str, lang: str, _attrs: str) -> str:
    """Every fence becomes ``<pre class="hl"><code>``; Pygments output is token spans with classes."""
    lexer = _lexer(lang) if lang and len(code) <= HIGHLIGHT_LIMIT else None
    body = escapeHtml(code) if lexer is None else str(highlight(code, lexer, HtmlFormatter(nowrap=True)))
    return f'<pre class="hl"><code>{body}</code></pre>'


def _render_image(self: Any, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    """An image is shown as a link to it: the page never fetches remote content by itself."""
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = self.renderInlineAsText(token.children or [], options, env) or src or "image"
    return f'<a class="md-image" href="{escapeHtml(src)}">{escapeHtml(alt)}</a>'


@cache
def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False, "highlight": _highlight})
    md.enable(["table", "strikethrough"])
    md.add_render_rule("image", _render_image)
    return md


@cache
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=_TAGS,
        clean_content_tags={"script", "style"},
        attributes=_ATTRIBUTES,
        allowed_classes=_CLASSES,
        url_schemes={"http", "https", "mailto"},
        url_relative="deny",
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def _mark_citations(children: list[Token], citations: int) -> None:
    depth = 0
    for child in children:
        if child.type == "link_open":
            depth += 1
        elif child.type == "link_close":
            depth -= 1
        elif child.type == "text" and depth == 0 and "[" in child.content:

            def mark(m: re.Match[str]) -> str:
                k = int(m.group(1))
                return f"{_OPEN}{k}{_CLOSE}" if 1 <= k <= citations else m.group(0)

            child.content = _CITE_RE.sub(mark, child.content)


def _adjust(tokens: list[Token], citations: int) -> None:
    for token in tokens:
        if token.type in ("th_open", "td_open"):
            style = token.attrs.pop("style", None)
            cls = _ALIGN.get(str(style)) if style is not None else None
            if cls:
                token.attrSet("class", cls)
        elif token.type == "inline" and citations > 0 and token.children:
            _mark_citations(token.children, citations)


def _cite(m: re.Match[str]) -> str:
    k = int(m.group(1))
    return f'<a class="cite" href="#cite-{k}" data-cite="{k}">[{k}]</a>'


def render_markdown(text: str, *, citations: int = 0) -> Markup:
    """Render untrusted Markdown to sanitised HTML. ``[k]`` for 1 <= k <= ``citations`` links to ``#cite-k``."""
    text = _clean_text(text)
    if citations > 0:
        text = text.replace(_OPEN, "\ufffd").replace(_CLOSE, "\ufffd")
    md = _parser()
    env: EnvType = {}
    tokens = md.parse(text, env)
    _adjust(tokens, citations)
    html = _cleaner().clean(md.renderer.render(tokens, md.options, env))
    if citations > 0:
        html = _SENTINEL_RE.sub(_cite, html)
    return Markup(html)  # noqa: S704 - the output of nh3 with the allow-list above


def render_inline(text: str) -> Markup:
    """Inline Markdown only (emphasis, code, links), for short strings such as titles."""
    md = _parser()
    return Markup(_cleaner().clean(md.renderInline(_clean_text(text))))  # noqa: S704 - sanitised by nh3


def _style_defs(style: str) -> str:
    formatter = HtmlFormatter(style=style)
    return "\n".join([*formatter.get_background_style_defs(".hl"), *formatter.get_token_style_defs(".hl")])


def pygments_css(light: str = "default", dark: str = "github-dark") -> str:
    """The stylesheet for highlighted code: ``light`` by default, ``dark`` under prefers-color-scheme: dark."""
    dark_rules = "\n".join("  " + line for line in _style_defs(dark).splitlines())
    return f"{_style_defs(light)}\n@media (prefers-color-scheme: dark) {{\n{dark_rules}\n}}\n"
