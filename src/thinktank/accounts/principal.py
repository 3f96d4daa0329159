"""Who is calling: the admin key, a user's session, or a virtual API key.

``Authenticator.resolve`` turns a bearer token into a ``Principal``. Lookups are cached for a few
seconds (the hot path must not hit the database on every request); revocations made through this
process drop the cached entries at once, other processes see them within ``cache_ttl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import select

from ..auth import AdminKey, hash_key
from ..clock import Clock
from ..errors import AuthenticationError, ModelNotFoundError
from ..store.db import Database
from ..store.tables import SYSTEM_USER_ID, ApiKey, Session, Team, User
from .budget_stores import BudgetSpec
from .secrets import KEY_PREFIX, SESSION_PREFIX

__all__ = ["Authenticator", "Principal"]

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
    key_rpm: int | None = None
    key_tpm: int | None = None
    user_rpm: int | None = None
    user_tpm: int | None = None
    expires_at: float | None = None
    budgets: tuple[BudgetSpec, ...] = field(default_factory=tuple)
    """The key's, the user's and the team's budgets (each with a limit)."""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

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


class Authenticator:
    def __init__(self, db: Database, admin_key: AdminKey, clock: Clock, *, cache_ttl: float = 5.0) -> None:
        self._db = db
        self._admin_key = admin_key
        self._clock = clock
        self._ttl = cache_ttl
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        """By the SHA-256 of the token (the digest of :func:`hash_key`, as the admin key check uses)."""
        self._admin = Principal(user_id=SYSTEM_USER_ID, role="admin", is_admin_key=True)

    def _cached(self, digest: bytes) -> Principal | None:
        hit = self._cache.get(digest)
        if hit is None:
            return None
        principal, until = hit
        if self._clock.monotonic() >= until:
            del self._cache[digest]
            return None
        return principal

    def forget(self, *, user_id: str | None = None, key_id: str | None = None, session_id: str | None = None) -> None:
        """Drop cached principals after a revocation (this process sees it at once)."""
        for digest, (p, _) in list(self._cache.items()):
            if (user_id and p.user_id == user_id) or (key_id and p.key_id == key_id) or (
                session_id and p.session_id == session_id
            ):
                del self._cache[digest]

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
        principal: Principal | None = None
        if token.startswith(SESSION_PREFIX):
            principal = await self._session(digest.hex())
        elif token.startswith(KEY_PREFIX):
            principal = await self._key(digest.hex())
        if principal is None:
            raise AuthenticationError("The API key is not valid.")
        self._cache[digest] = (principal, self._clock.monotonic() + self._ttl)
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
            allowed_models=_intersect(user.allowed_models, None), user_rpm=user.rpm, user_tpm=user.tpm,
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
            session_id=sess.id, allowed_models=_intersect(user.allowed_models, None), user_rpm=user.rpm,
            user_tpm=user.tpm, expires_at=sess.expires_at, budgets=tuple(_user_budgets(user, team)),
        )

    async def _key(self, digest: str) -> Principal | None:
        async with self._db.session() as s:
            row = (await s.execute(
                select(ApiKey, User, Team).join(User, ApiKey.owner_id == User.id)
                .outerjoin(Team, User.team_id == Team.id)
                .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None), User.revoked_at.is_(None))
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
            key_rpm=key.rpm, key_tpm=key.tpm, user_rpm=user.rpm, user_tpm=user.tpm, expires_at=key.expires_at,
            budgets=tuple(budgets),
        )
