"""What every view module uses: the app's page renderer, owned-object lookups as 404s."""

from __future__ import annotations

from fastapi import Request

from ..render import Pages

__all__ = ["pages"]


def pages(request: Request) -> Pages:
    """The web app's renderer (built once, with the app)."""
    renderer: Pages = request.app.state.pages
    return renderer
