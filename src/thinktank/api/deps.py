"""FastAPI dependencies: the app state and who is calling (authentication happens here, per route)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from ..accounts.principal import Principal
from ..bounds import MAX_INT32
from ..errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from .credentials import CSRF_HEADER, credential
from .state import AppState

__all__ = ["AdminDep", "PrincipalDep", "ResumeDep", "StateDep", "client_ip"]


# Dependencies are ``async def`` even when they do not await: FastAPI runs a plain ``def``
# dependency in its thread pool, a thread hand-off (about 0.1 ms of CPU) for every request.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.thinktank
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def current_principal(request: Request, state: StateDep) -> Principal:
    h = request.headers
    token = credential(h.get("authorization"), h.get("x-api-key"), h.get("cookie"), request.method,
                       h.get(CSRF_HEADER), h.get("origin"), h.get("host"))
    return await state.authenticate(token, client_ip(request))


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def admin_principal(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise PermissionDeniedError("Only admins may use this route.")
    return principal


AdminDep = Annotated[Principal, Depends(admin_principal)]


def session_of(principal: Principal) -> str:
    if principal.session_id is None:
        raise AuthenticationError("Log out needs the session token from /api/v1/auth/login.")
    return principal.session_id


async def resume_after(
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_INT32,
                                       description="Resume after this event (as Last-Event-ID)")] = None,
) -> int:
    """The event an SSE client resumes after: ``?after=``, else its ``Last-Event-ID`` (0: from the start)."""
    if after is not None:
        return after
    if last_event_id:
        value = last_event_id.strip()
        if not (value.isascii() and value.isdigit() and len(value) <= 10 and int(value) <= MAX_INT32):
            raise InvalidRequestError("Last-Event-ID must be an event number.", param="Last-Event-ID")
        return int(value)
    return 0


ResumeDep = Annotated[int, Depends(resume_after)]
