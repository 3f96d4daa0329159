"""The chat page: threads, the model picker, streamed answers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..session import UserPage
from .common import pages

__all__ = ["router"]

router = APIRouter()


@router.get("/chat")
async def chat(request: Request, user: UserPage) -> Response:
    return pages(request).render(request, "section.html", user, title="Chat")
