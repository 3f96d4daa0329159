"""The admin pages: users, teams, keys, usage, model health, budgets."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..session import AdminPage
from .common import pages

__all__ = ["router"]

router = APIRouter()


@router.get("/admin")
async def admin_page(request: Request, user: AdminPage) -> Response:
    return pages(request).render(request, "section.html", user, title="Admin")
