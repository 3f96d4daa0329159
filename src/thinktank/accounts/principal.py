"""Who is calling: the admin key, a user's session, or a virtual API key.

``Authenticator.resolve`` turns a bearer token into a ``Principal``. Lookups are cached for a few
seconds (the hot path must not hit the database on every request); revocations made through this
process drop the cached entries at once, other processes see them within ``cache_ttl``. A token
in use is looked up again in the background during the last fifth of its time in the cache, so a
busy key never waits for the database (and never sends every request in flight to it at once when
its entry runs out); an entry is never trusted past ``cache_ttl`` all the same.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import select

from ..clock import Clock
from ..errors import AuthenticationError, ModelNotFoundError
from ..store.db import Database
from ..store.tables import SYSTEM_USER_ID, ApiKey, Session, Team, User
from .admin_key import AdminKey, hash_key
from .budget_backends import BudgetSpec
from .secrets import KEY_PREFIX, SESSION_PREFIX
from .tool_access import intersect_tools

__all__ = ["Authenticator", "Principal"]

log = logging.getLogger(__name__)

Period = Literal["day", "month", "total"]


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: str
    email: str | None = None
    team_id: str | None = None
    tier: str | None = None
    key_id: str | None = None
    session_id: str | None = None
    is_admin_key: bool = False
    allowed_models: frozenset[str] | None = None
    """None: every model."""
    allowed_tools: frozenset[str] | None = None
    """The agent tools this caller's agents may use: built-in tool names, ``server`` or ``server.*`` (every tool
    of an MCP server) or ``server.tool``; a key's and its user's lists together (:func:`.tool_access.intersect_tools`).
    None: every tool."""
    key_rpm: int | None = None
    key_tpm: int | None = None
    user_rpm: int | None = None
    user_tpm: int | None = None
    expires_at: float | None = None
    budgets: tuple[BudgetSpec, ...] = field(default_factory=tuple)
    """The key's, the user's and the team's budgets (each with a limit)."""
    cache_ttl: float | None = None
    """The key's response cache setting: seconds its answers are kept (0: never; None: as configured)."""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

    def may_use_tool(self, qualified: str) -> bool:
        """Whether an agent working for this caller may see and call tool ``qualified`` (``knowledge_search``,
        ``git.git_log``)."""
        if self.allowed_tools is None:
            return True
        if qualified in self.allowed_tools:
            return True
        server = qualified.split(".", 1)[0] if "." in qualified else None
        return server is not None and (server in self.allowed_tools or f"{server}.*" in self.allowed_tools)

    def check_model(self, model: str) -> None:
        if not self.may_use(model):
            # The same answer as for a model that does not exist: a key does not learn what it may not use.
            raise ModelNotFoundError(
                f"The model '{model}' does not exist here. GET /v1/models lists the models you can use.",
                param="model",
            )


def _intersect(a: list[str] | None, b: list[str] | None) -> frozenset[str] | None:
    if a is None and b is None:
        return None
    if a is None:
        return frozenset(b or [])
    if b is None:
        return frozenset(a)
    return frozenset(a) & frozenset(b)


def _user_budgets(user: User, team: Team | None) -> list[BudgetSpec]:
    out = []
    if user.budget_usd is not None:
        out.append(BudgetSpec("user", user.id, user.budget_usd, user.budget_period,  # type: ignore[arg-type]
                               f"user {user.email}"))
    if team is not None and team.budget_usd is not None:
        out.append(BudgetSpec("team", team.id, team.budget_usd, team.budget_period,  # type: ignore[arg-type]
                               f"team '{team.name}'"))
    return out


@dataclass(slots=True)
class _Cached:
    principal: Principal
    until: float
    """Monotonic time after which it is not trusted."""
    refresh_at: float
    """Monotonic time from which the next use starts one background lookup."""
    session: bool
    """A session token (else an API key)."""


#: The share of ``cache_ttl`` at the end of which a used entry is looked up again in the background.
REFRESH_SHARE = 0.2


class Authenticator:
    def __init__(self, db: Database, admin_key: AdminKey, clock: Clock, *, cache_ttl: float = 5.0) -> None:
        self._db = db
        self._admin_key = admin_key
        self._clock = clock
        self._ttl = cache_ttl
        self._cache: dict[bytes, _Cached] = {}
        """By the SHA-256 of the token (the digest of :func:`hash_key`, as the admin key check uses)."""
        self._admin = Principal(user_id=SYSTEM_USER_ID, role="admin", is_admin_key=True)
        self._generation = 0
        """Moves on every ``forget``: a lookup that began before one must not cache what it found."""
        self._refreshes: set[asyncio.Task[None]] = set()

    def _remember(self, digest: bytes, principal: Principal, session: bool) -> None:
        now = self._clock.monotonic()
        self._cache[digest] = _Cached(principal, now + self._ttl, now + self._ttl * (1 - REFRESH_SHARE), session)

    def _cached(self, digest: bytes) -> Principal | None:
        hit = self._cache.get(digest)
        if hit is None:
            return None
        now = self._clock.monotonic()
        if now >= hit.until:
            del self._cache[digest]
            return None
        if now >= hit.refresh_at:
            hit.refresh_at = hit.until  # one refresh per entry
            task = asyncio.get_running_loop().create_task(self._refresh(digest, hit))
            self._refreshes.add(task)
            task.add_done_callback(self._refreshes.discard)
        return hit.principal

    async def _refresh(self, digest: bytes, hit: _Cached) -> None:
        generation = self._generation
        try:
            principal = await (self._session(digest.hex()) if hit.session else self._key(digest.hex()))
        except Exception:  # the entry runs out as usual; the request after that looks it up itself
            log.warning("refreshing a cached principal failed", exc_info=True)
            return
        if generation != self._generation or self._cache.get(digest) is not hit:
            return  # forgotten (revoked here) or replaced meanwhile
        if principal is None:
            del self._cache[digest]  # revoked elsewhere
        else:
            self._remember(digest, principal, hit.session)

    def forget(self, *, user_id: str | None = None, key_id: str | None = None, session_id: str | None = None) -> None:
        """Drop cached principals after a revocation (this process sees it at once)."""
        self._generation += 1
        for digest, hit in list(self._cache.items()):
            p = hit.principal
            if (user_id and p.user_id == user_id) or (key_id and p.key_id == key_id) or (
                session_id and p.session_id == session_id
            ):
                del self._cache[digest]

    async def close(self) -> None:
        """Stop the background lookups still running."""
        for task in list(self._refreshes):
            task.cancel()
        await asyncio.gather(*self._refreshes, return_exceptions=True)

    def _check_expiry(self, principal: Principal) -> Principal:
        if principal.expires_at is not None and principal.expires_at <= self._clock.time():
            raise AuthenticationError("The API key or session has expired.", code="expired")
        return principal

    def known_admin(self) -> Principal:
        """The admin principal (what the admin key acts as)."""
        return self._admin

    def known(self, token: str) -> Principal | None:
        """The principal for the admin key or a recently seen token, without touching the database."""
        if not token:
            return None
        digest = hash_key(token)  # one hash serves the admin key check and the cache
        if self._admin_key.verify_digest(digest):
            return self._admin
        principal = self._cached(digest)
        if principal is None:
            return None
        return principal if principal.expires_at is None else self._check_expiry(principal)

    async def resolve(self, token: str) -> Principal:
        known = self.known(token)
        return known if known is not None else await self.lookup(token)

    async def lookup(self, token: str) -> Principal:
        """Look a token up in the database (after ``known`` missed) and cache what it finds."""
        if not token:
            raise AuthenticationError("No API key: send 'Authorization: Bearer <key>'.")
        digest = hash_key(token)
        generation = self._generation
        principal: Principal | None = None
        session = token.startswith(SESSION_PREFIX)
        if session:
            principal = await self._session(digest.hex())
        elif token.startswith(KEY_PREFIX):
            principal = await self._key(digest.hex())
        if principal is None:
            raise AuthenticationError("The API key is not valid.")
        if generation == self._generation:  # else a revocation came meanwhile: what was read may be stale
            self._remember(digest, principal, session)
        return self._check_expiry(principal)

    async def principal_of(self, user_id: str) -> Principal | None:
        """The principal of a user acting directly (the CLI, acting for them)."""
        async with self._db.session() as s:
            row = (await s.execute(
                select(User, Team).outerjoin(Team, User.team_id == Team.id)
                .where(User.id == user_id, User.revoked_at.is_(None))
            )).first()
        if row is None:
            return None
        user, team = row
        return Principal(
            user_id=user.id, role=user.role, email=user.email, team_id=user.team_id, tier=user.tier,
            allowed_models=_intersect(user.allowed_models, None),
            allowed_tools=intersect_tools(user.allowed_tools, None), user_rpm=user.rpm, user_tpm=user.tpm,
            budgets=tuple(_user_budgets(user, team)),
        )

    async def _session(self, digest: str) -> Principal | None:
        async with self._db.session() as s:
            row = (await s.execute(
                select(Session, User, Team).join(User, Session.user_id == User.id)
                .outerjoin(Team, User.team_id == Team.id)
                .where(Session.token_hash == digest, Session.revoked_at.is_(None), User.revoked_at.is_(None))
            )).first()
        if row is None:
            return None
        sess, user, team = row
        return Principal(
            user_id=user.id, role=user.role, email=user.email, team_id=user.team_id, tier=user.tier,
            session_id=sess.id, allowed_models=_intersect(user.allowed_models, None),
            allowed_tools=intersect_tools(user.allowed_tools, None), user_rpm=user.rpm,
            user_tpm=user.tpm, expires_at=sess.expires_at, budgets=tuple(_user_budgets(user, team)),
        )

    async def principal_for(self, user_id: str, key_id: str | None) -> Principal | None:
        """The principal work started by ``user_id`` (with key ``key_id``, if a key) goes on as: its models,
        tools and budgets as they are now; None if the user or the key has been revoked (or has expired)."""
        if key_id is None:
            return self._admin if user_id == self._admin.user_id else await self.principal_of(user_id)
        principal = await self._key(key_id, by_id=True)
        if principal is None or principal.user_id != user_id:
            return None
        if principal.expires_at is not None and principal.expires_at <= self._clock.time():
            return None
        return principal

    async def _key(self, digest: str, *, by_id: bool = False) -> Principal | None:
        which = ApiKey.id == digest if by_id else ApiKey.key_hash == digest
        async with self._db.session() as s:
            row = (await s.execute(
                select(ApiKey, User, Team).join(User, ApiKey.owner_id == User.id)
                .outerjoin(Team, User.team_id == Team.id)
                .where(which, ApiKey.revoked_at.is_(None), User.revoked_at.is_(None))
            )).first()
        if row is None:
            return None
        key, user, team = row
        budgets = []
        if key.budget_usd is not None:
            budgets.append(BudgetSpec("key", key.id, key.budget_usd, key.budget_period,  # type: ignore[arg-type]
                                       f"key '{key.name or key.id}' ({key.prefix}…)"))
        budgets += _user_budgets(user, team)
        return Principal(
            user_id=user.id, role=user.role, email=user.email, team_id=user.team_id, tier=user.tier,
            key_id=key.id, allowed_models=_intersect(user.allowed_models, key.allowed_models),
            allowed_tools=intersect_tools(user.allowed_tools, key.allowed_tools),
            key_rpm=key.rpm, key_tpm=key.tpm, user_rpm=user.rpm, user_tpm=user.tpm, expires_at=key.expires_at,
            budgets=tuple(budgets), cache_ttl=key.cache_ttl,
        )
