"""The Compare pages."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..session import UserPage
from .common import pages

__all__ = ["router"]

router = APIRouter()


@router.get("/compare")
async def compare_page(request: Request, user: UserPage) -> Response:
    return pages(request).render(request, "section.html", user, title="Compare")


@router.get("/arena")
async def arena_page(request: Request, user: UserPage) -> Response:
    return pages(request).render(request, "section.html", user, title="Arena")


@router.get("/leaderboard")
async def leaderboard_page(request: Request, user: UserPage) -> Response:
    return pages(request).render(request, "section.html", user, title="Leaderboard")
