"""Templates: one Jinja environment per app (autoescaped), the filters pages share, and the page response."""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from .. import __version__
from .session import WebUser

__all__ = ["NAV", "Pages", "RenderedMarkdown", "money", "when"]

TEMPLATES = Path(__file__).parent / "templates"

NAV: tuple[tuple[str, str, bool], ...] = (
    ("Chat", "/chat", False),
    ("Compare", "/compare", False),
    ("Arena", "/arena", False),
    ("Leaderboard", "/leaderboard", False),
    ("Debate", "/debate", False),
    ("Evaluations", "/evals", False),
    ("Knowledge", "/knowledge", False),
    ("Me", "/me", False),
    ("Admin", "/admin", True),
)
"""(label, path, admins only): the navigation every page shows."""


def money(value: float | None) -> str:
    """A cost in USD: small amounts keep their significant digits (``$0.00042``)."""
    if value is None or not math.isfinite(value):
        return "—"
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.6f}".rstrip("0").rstrip(".")


def when(ts: float | None) -> str:
    """An epoch time as UTC, to the minute."""
    if ts is None or not math.isfinite(ts):
        return "—"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(ts: float | None) -> str:
    if ts is None or not math.isfinite(ts):
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


class RenderedMarkdown:
    """Markdown rendered once per text: a thread page shows the same stored answers on every visit, and
    rendering is pure Python (about 0.2 to 1.5 s a megabyte). An LRU bounded by the characters it holds."""

    def __init__(self, max_chars: int = 16_000_000) -> None:
        self._max_chars = max_chars
        self._chars = 0
        self._done: OrderedDict[tuple[str, int], Markup] = OrderedDict()
        self._lock = threading.Lock()  # long texts are rendered in worker threads (views/compare.py)

    def __call__(self, text: str | None, citations: int = 0) -> Markup:
        from .markdown import render_markdown

        key = (text or "", citations)
        with self._lock:
            found = self._done.get(key)
            if found is not None:
                self._done.move_to_end(key)
                return found
        html = render_markdown(key[0], citations=citations)
        size = len(key[0]) + len(html)
        if size <= self._max_chars // 4:
            with self._lock:
                if key not in self._done:
                    self._done[key] = html
                    self._chars += size
                while self._chars > self._max_chars:
                    (old_text, _), old_html = self._done.popitem(last=False)
                    self._chars -= len(old_text) + len(old_html)
        return html

    def __len__(self) -> int:
        return len(self._done)


class Pages:
    """Renders templates into responses with what every page needs (the user, the CSRF token, the nav)."""

    def __init__(self) -> None:
        env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                          trim_blocks=True, lstrip_blocks=True, auto_reload=False)
        self.markdown = RenderedMarkdown()
        env.filters.update(money=money, when=when, iso=iso, markdown=self.markdown)
        env.globals.update(version=__version__, nav=NAV)
        self.env = env

    def render(self, request: Request, name: str, user: WebUser | None = None, *, status: int = 200,
               title: str = "", **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(
            request=request, user=user, csrf=user.csrf if user else "", path=request.url.path, title=title,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def fragment(self, name: str, **context: Any) -> str:
        """A piece of a page (a template without the layout), for views that build a page from parts."""
        return self.env.get_template(name).render(**context)
