"""The web app: server-rendered pages over the same services as the API.

Nothing here is imported until a page is first asked for (``is_page``), so the gateway's cold start,
hot path and memory do not carry Jinja, Markdown or the page code.
"""

from __future__ import annotations

__all__ = ["PAGE_SEGMENTS", "is_page"]

PAGE_SEGMENTS = frozenset({
    "", "login", "logout", "setup", "chat", "compare", "arena", "leaderboard", "debate", "runs", "knowledge", "me",
    "admin", "evals", "static", "favicon.ico",
})
"""The first path segments the web app answers (the API lives under ``/v1``, ``/api`` and the ops routes)."""


def is_page(path: str) -> bool:
    """Whether ``path`` is one of the web app's (``/``, ``/chat/…``, ``/static/…``)."""
    if not path.startswith("/"):
        return False
    end = path.find("/", 1)
    return (path[1:] if end < 0 else path[1:end]) in PAGE_SEGMENTS
