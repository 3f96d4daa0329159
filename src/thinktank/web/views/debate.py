"""The Debate pages."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..session import UserPage
from .common import pages

__all__ = ["router"]

router = APIRouter()


@router.get("/debate")
async def debate_page(request: Request, user: UserPage) -> Response:
    return pages(request).render(request, "section.html", user, title="Debate")
