"""What the Me and Admin views' plain HTML forms share: reading a posted form (after its CSRF check),
optional numbers, readable validation errors, and the fixed notices a redirect may name."""

from __future__ import annotations

import math

from fastapi import Request
from pydantic import ValidationError

from ...api.credentials import CSRF_FIELD
from ...errors import InvalidRequestError
from ..session import WebUser, check_form_csrf

__all__ = ["NOTICES", "checked_form", "first_error", "notice", "optional_float"]

NOTICES: dict[str, str] = {
    "memory_saved": "The memory was saved.",
    "memory_deleted": "The memory was deleted.",
    "memory_cleared": "Everything thinktank learned about you was deleted.",
    "memory_on": "Memory is on: thinktank learns from your conversations.",
    "memory_off": "Memory is off: nothing more is learned and nothing is added to your prompts.",
    "session_revoked": "The session was signed out.",
    "key_revoked": "The key was revoked; it stops working at once.",
    "user_created": "The user was created.",
    "user_revoked": "The user was revoked with all their sessions and keys.",
    "tier_changed": "The tier was changed.",
    "tools_changed": "The agent tools were changed.",
    "team_created": "The team was created.",
}
"""The messages a page shows after a redirect (``?done=<name>``): a fixed set, so a link cannot make a page
say anything else."""


def notice(request: Request) -> str:
    return NOTICES.get(request.query_params.get("done", ""), "")


async def checked_form(request: Request, user: WebUser) -> dict[str, str]:
    """The posted form's text fields, once its origin and CSRF token are checked (403 otherwise)."""
    form = await request.form()
    check_form_csrf(request, user, form.get(CSRF_FIELD))
    return {k: v for k, v in form.items() if isinstance(v, str)}


def optional_float(value: str | None, name: str) -> float | None:
    """An optional number field: empty is None; anything else must be a finite number."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        raise InvalidRequestError(f"{name}: enter a number.", param=name) from None
    if not math.isfinite(number):
        raise InvalidRequestError(f"{name}: enter a number.", param=name)
    return number


def first_error(exc: ValidationError) -> str:
    """The first problem of a validation error, as one readable line."""
    errors = exc.errors()
    if not errors:
        return "The form is not valid."
    first = errors[0]
    where = ".".join(str(x) for x in first.get("loc", ()))
    msg = str(first.get("msg", "not valid"))
    return f"{where}: {msg}" if where else msg
