from __future__ import annotations

import pytest
from markupsafe import Markup
from selectolax.lexbor import LexborHTMLParser as HTMLParser
from selectolax.lexbor import LexborNode as Node

from thinktank.web.markdown import MARKDOWN_CSS, pygments_css, render_inline, render_markdown

# Every tag and attribute the sanitiser may let through; anything else in the output is a failure.
ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "s", "del", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "span",
}  # fmt: skip
ALLOWED_ATTRS = {"href", "title", "rel", "class", "start", "data-cite"}
SAFE_SCHEMES = ("http://", "https://", "mailto:", "#cite-")


def parse(html: str) -> Node:
    body = HTMLParser(f"<html><body>{html}</body></html>").body
    assert body is not None
    return body


def first(root: Node, selector: str) -> Node:
    node = root.css_first(selector)
    assert node is not None, selector
    return node


def elements(root: Node) -> list[Node]:
    return [n for n in root.traverse() if n.tag not in ("-text", "body")]


def assert_safe(html: str) -> Node:
    root = parse(html)
    for node in elements(root):
        assert node.tag in ALLOWED_TAGS, node.html
        for name, value in node.attributes.items():
            assert name in ALLOWED_ATTRS, node.html
            assert not name.startswith("on")
            if name == "href":
                assert value is not None
                assert value.startswith(SAFE_SCHEMES), value
        if node.tag == "a" and "href" in node.attributes and node.attributes.get("class") != "cite":
            assert node.attributes["rel"] == "noopener noreferrer nofollow"
    return root


def render(text: str, citations: int = 0) -> Node:
    out = render_markdown(text, citations=citations)
    assert isinstance(out, Markup)
    return assert_safe(str(out))


def test_plain_markdown_renders() -> None:
    root = render("# Title\n\nSome **bold**, *em*, ~~gone~~ and `code`.\n\n- one\n- two\n\n> quoted")
    assert first(root, "h1").text() == "Title"
    assert first(root, "strong").text() == "bold"
    assert first(root, "em").text() == "em"
    assert first(root, "s").text() == "gone"
    assert first(root, "p code").text() == "code"
    assert [li.text() for li in root.css("ul li")] == ["one", "two"]
    assert first(root, "blockquote p").text() == "quoted"


def test_script_tag_is_text() -> None:
    root = render("hello <script>alert(1)</script> world")
    assert root.css("script") == []
    assert "<script>alert(1)</script>" in root.text()


@pytest.mark.parametrize(
    "text",
    [
        "<img src=x onerror=alert(1)>",
        '<iframe src="https://evil.example"></iframe>',
        '<svg onload="alert(1)"><circle r="1"/></svg>',
        '<p style="color:red" onclick="alert(1)">styled</p>',
        "<div>\n\n*inside html block*\n\n</div>",
        "<a href='javascript:alert(1)'>x</a>",
        "<math><mi xlink:href='javascript:alert(1)'>x</mi></math>",
        "<style>body{display:none}</style>",
        "<!-- comment --><object data='x'></object><embed src='x'>",
        '<form action="https://evil"><input name="q"><button>go</button></form>',
    ],
)
def test_embedded_html_never_becomes_markup(text: str) -> None:
    root = render(text)
    tags = {n.tag for n in elements(root)}
    assert tags <= {"p", "em"}, tags
    # The HTML shows as the text the model wrote.
    assert text.split(">", maxsplit=1)[0] in root.text()


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "java&#115;cript:alert(1)",
        "&#106;avascript:alert(1)",
        "java%73cript:alert(1)",
        " javascript:alert(1)",
        "javascript&colon;alert(1)",
        "jav\tascript:alert(1)",
        "<javascript:alert(1)>",
        "vbscript:msgbox(1)",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "data:image/png;base64,AAAA",
        "file:///etc/passwd",
        "/relative/path",
        "//evil.example/x",
    ],
)
def test_unsafe_link_targets_are_dropped(url: str) -> None:
    for text in (f"[click]({url})", f"![pic]({url})", f"<{url}>", f"[ref]\n\n[ref]: {url}"):
        root = render(text)
        for a in root.css("a"):
            href = a.attributes.get("href")
            assert href is None or href.startswith(("http://", "https://")), (text, href)
        assert "javascript" not in " ".join(str(a.attributes.get("href")) for a in root.css("a")).lower()


def test_safe_links_and_autolinks() -> None:
    root = render("[site](https://example.com/a?b=1) <https://auto.example/x> <me@example.com> [m](mailto:x@y.z)")
    hrefs = [a.attributes.get("href") for a in root.css("a")]
    assert hrefs == ["https://example.com/a?b=1", "https://auto.example/x", "mailto:me@example.com", "mailto:x@y.z"]
    for a in root.css("a"):
        assert "target" not in a.attributes


def test_links_cannot_set_target_or_attributes() -> None:
    root = render('[x](https://example.com "title\\" target=\\"_blank\\" onclick=\\"alert(1)")')
    a = first(root, "a")
    assert set(a.attributes) == {"href", "title", "rel"}


def test_images_become_links_and_never_load() -> None:
    root = render('![a <b>cat</b>](https://img.example/cat.png "t") ![](https://img.example/x.png)')
    assert root.css("img") == []
    links = root.css("a.md-image")
    assert [a.attributes.get("href") for a in links] == ["https://img.example/cat.png", "https://img.example/x.png"]
    assert links[0].text() == "a <b>cat</b>"
    assert links[1].text() == "https://img.example/x.png"


def test_fenced_code_is_highlighted_with_classes() -> None:
    root = render("```python\ndef f(x):\n    return '<script>'\n```")
    pre = first(root, "pre.hl")
    assert pre is not None
    spans = pre.css("code span")
    assert spans
    assert all(s.attributes.get("class") for s in spans)
    assert "k" in {s.attributes.get("class") for s in spans}  # `def`, `return` are keywords
    assert pre.text() == "def f(x):\n    return '<script>'\n"
    assert pre.css("script") == []


def test_unknown_language_and_indented_code_are_plain() -> None:
    root = render("```no-such-language\n<b>x</b>\n```\n\n    indented <i>\n")
    pres = root.css("pre")
    assert len(pres) == 2
    assert pres[0].css("span") == [] and pres[0].text() == "<b>x</b>\n"
    assert pres[1].text() == "indented <i>\n"


def test_hostile_language_name() -> None:
    root = render('```"><script>alert(1)</script>\ncode\n```')
    assert first(root, "pre code").text() == "code\n"


def test_unterminated_fence_while_streaming() -> None:
    root = render("Intro\n\n```python\nfor i in range(3):\n    print(i)")
    assert first(root, "p").text() == "Intro"
    pre = first(root, "pre.hl")
    assert pre.text() == "for i in range(3):\n    print(i)\n"
    assert pre.css("span")


def test_tables_render_with_alignment_classes() -> None:
    root = render("| name | n |\n|:-----|--:|\n| <b>a</b> | 1 |\n| b | 2 |")
    assert [th.text() for th in root.css("table thead th")] == ["name", "n"]
    rows = [[td.text() for td in tr.css("td")] for tr in root.css("table tbody tr")]
    assert rows == [["<b>a</b>", "1"], ["b", "2"]]
    assert first(root, "th").attributes.get("class") == "align-left"
    assert first(root, "td:nth-child(2)").attributes.get("class") == "align-right"
    assert all("style" not in n.attributes for n in elements(root))
    assert ".align-right" in MARKDOWN_CSS


def test_citations_link_only_in_range() -> None:
    root = render("Fact [1], other [2][3], far [99], zero [0], `[1]` and [x [2]](https://e.example).", citations=2)
    cites = root.css("a.cite")
    assert [(a.attributes.get("href"), a.attributes.get("data-cite"), a.text()) for a in cites] == [
        ("#cite-1", "1", "[1]"),
        ("#cite-2", "2", "[2]"),
    ]
    text = root.text()
    assert "[3]" in text and "[99]" in text and "[0]" in text
    assert first(root, "code").text() == "[1]"
    assert first(root, "a:not(.cite)").text() == "x [2]"


def test_citations_off_by_default() -> None:
    root = render("Fact [1].")
    assert root.css("a") == []
    assert root.text().strip() == "Fact [1]."


def test_citation_sentinels_in_input_cannot_inject() -> None:
    text = '\ue000"><script>alert(1)</script>\ue001 \ue0001\ue001 [1]'
    root = render(text, citations=3)
    assert [a.attributes.get("href") for a in root.css("a")] == ["#cite-1"]
    assert root.css("script") == []


@pytest.mark.parametrize(
    "text",
    [
        "lone \ud800 surrogate",
        "\udfff",
        "pair \ud83d\ude00 joined",
        "nul \x00 byte",
        "\u202e rtl \ufeff bom \U0010ffff",
    ],
)
def test_odd_unicode_does_not_raise(text: str) -> None:
    root = render(text, citations=1)
    assert root.css("p")
    str(render_inline(text))


def test_surrogate_pair_is_joined() -> None:
    assert "\U0001f600" in str(render_markdown("\ud83d\ude00"))


def test_huge_input_renders() -> None:
    chunk = "Some *text* with [1], `code` and a [link](https://x.example).\n\n```python\nx = 1\n```\n\n"
    text = chunk * (1_000_000 // len(chunk))
    root = render(text, citations=1)
    assert len(root.css("pre.hl")) == text.count("```python")
    assert len(root.css("a.cite")) == text.count("[1]")


def test_render_inline() -> None:
    out = str(render_inline("**Bold** <script>x</script> [l](javascript:alert(1))"))
    root = assert_safe(out)
    assert first(root, "strong").text() == "Bold"
    assert root.css("p") == [] and root.css("script") == []


def test_pygments_css_has_light_and_dark() -> None:
    css = pygments_css()
    light, dark = css.split("@media (prefers-color-scheme: dark)")
    assert ".hl .k" in light and ".hl .k" in dark
    assert "{" in dark and dark.rstrip().endswith("}")
    assert "pre {" not in css  # only rules under .hl, nothing that restyles the page


def test_rendered_markdown_is_kept_and_bounded() -> None:
    from thinktank.web.render import RenderedMarkdown

    cache = RenderedMarkdown(max_chars=4_000)
    first = cache("**bold** [1]", 1)
    assert cache("**bold** [1]", 1) is first  # the same text again: not rendered again
    assert cache("**bold** [1]", 0) is not first  # other citations: another rendering
    assert str(cache("**bold** [1]", 0)).count("cite") == 0
    for i in range(200):  # far more than 4,000 characters of texts: the oldest go
        cache(f"text number {i} " * 5)
    assert 0 < len(cache) < 200
    assert cache("**bold** [1]", 1) is not first  # evicted, rendered anew, and still right
    assert str(cache("**bold** [1]", 1)) == str(first)
    huge = "x" * 2_000  # more than a quarter of the bound: rendered, never kept
    before = len(cache)
    assert "x" * 100 in str(cache(huge))
    assert len(cache) <= before
