"""My API keys on the Me page: create and rotate (the secret is shown once, on the response page), revoke.
Only my own keys, even for an admin (every key is on the admin pages)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from ...accounts.schemas import KeyCreate, KeyCreated
from ...accounts.tool_access import parse_tool_list
from ...api.deps import StateDep
from ...api.state import AppState
from ...errors import NotFoundError, ThinktankError
from ...store.tables import ApiKey
from ..session import UserPage, WebUser
from .common import pages
from .forms import checked_form, first_error, optional_float

__all__ = ["router"]

router = APIRouter()

DAY = 86400.0


async def _own_key(state: AppState, user: WebUser, key_id: str) -> ApiKey:
    key = await state.keys.get(user.principal, key_id)
    if key.owner_id != user.id:  # an admin's Me page holds their own keys only
        raise NotFoundError("No such key.")
    return key


def _reveal(request: Request, user: WebUser, created: KeyCreated, *, rotated: bool) -> Response:
    """The one page that ever shows the secret (not stored, not logged; pages are never cached)."""
    return pages(request).render(request, "me/key_secret.html", user, title="Your new API key",
                                 status=200 if rotated else 201, key=created, rotated=rotated)


async def _error(request: Request, user: WebUser, state: AppState, message: str, status: int) -> Response:
    from .me import render_me

    return await render_me(request, user, state, error=message, status=status)


@router.post("/me/keys")
async def key_create(request: Request, user: UserPage, state: StateDep) -> Response:
    form = await checked_form(request, user)
    try:
        days = optional_float(form.get("expires_days"), "expires_days")
        data = KeyCreate.model_validate({
            "name": form.get("name", "").strip(),
            "budget_usd": optional_float(form.get("budget_usd"), "budget_usd"),
            "budget_period": form.get("budget_period") or "month",
            "expires_at": None if days is None else state.clock.time() + days * DAY,
            "tools": parse_tool_list(form["tools"]) if "tools" in form else None,
        })
        if days is not None and days <= 0:
            raise ValueError("expires_days: a key must live more than 0 days")
        created = await state.keys.create(user.principal, data)
    except ValidationError as exc:
        return await _error(request, user, state, first_error(exc), 400)
    except ValueError as exc:
        return await _error(request, user, state, str(exc), 400)
    except ThinktankError as exc:
        return await _error(request, user, state, exc.message, exc.status)
    return _reveal(request, user, created, rotated=False)


@router.post("/me/keys/{key_id}/rotate")
async def key_rotate(key_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    await checked_form(request, user)
    key = await _own_key(state, user, key_id)
    return _reveal(request, user, await state.keys.rotate(user.principal, key.id), rotated=True)


@router.post("/me/keys/{key_id}/revoke")
async def key_revoke(key_id: str, request: Request, user: UserPage, state: StateDep) -> Response:
    await checked_form(request, user)
    key = await _own_key(state, user, key_id)
    await state.keys.revoke(user.principal, key.id)
    return RedirectResponse("/me?done=key_revoked#keys", status_code=303)
