"""Users, teams and sessions."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ..clock import Clock
from ..errors import AuthenticationError, ConflictError, InvalidRequestError, NotFoundError
from ..store.db import Database
from ..store.tables import SYSTEM_USER_ID, ApiKey, Session, Team, User, new_id
from .principal import Authenticator
from .schemas import TeamCreate, TeamPublic, UserCreate, UserPublic
from .secrets import SESSION_PREFIX, PasswordHashing, new_token, token_hash

__all__ = ["UserService", "team_public", "user_public"]


def user_public(u: User) -> UserPublic:
    return UserPublic(
        id=u.id, email=u.email, role=u.role, team_id=u.team_id, tier=u.tier, models=u.allowed_models,
        tools=u.allowed_tools, budget_usd=u.budget_usd, budget_period=u.budget_period, rpm=u.rpm, tpm=u.tpm,
        created_at=u.created_at, revoked_at=u.revoked_at,
    )


def team_public(t: Team) -> TeamPublic:
    return TeamPublic(id=t.id, name=t.name, budget_usd=t.budget_usd, budget_period=t.budget_period,
                      created_at=t.created_at)


def configured_tier(tier: str | None, tiers: Collection[str]) -> str | None:
    """``tier`` if it is one the config defines under ``tiers:`` (or None: no tier); else a 400 naming them."""
    if tier is not None and tier not in tiers:
        known = ", ".join(sorted(tiers)) or "none are configured"
        raise InvalidRequestError(f"There is no tier '{tier}' (tiers: {known}).", param="tier")
    return tier


class UserService:
    def __init__(self, db: Database, clock: Clock, passwords: PasswordHashing, auth: Authenticator,
                 *, session_ttl: float = 7 * 86400) -> None:
        self._db = db
        self._clock = clock
        self._passwords = passwords
        self._auth = auth
        self._session_ttl = session_ttl

    async def create_user(self, data: UserCreate) -> User:
        email = data.email.lower()
        password_hash = await self._passwords.hash(data.password)
        user = User(
            id=new_id("usr"), email=email, password_hash=password_hash, role=data.role, team_id=data.team_id,
            tier=data.tier, allowed_models=data.models, allowed_tools=data.tools,
            budget_usd=data.budget_usd, budget_period=data.budget_period,
            rpm=data.rpm, tpm=data.tpm, created_at=self._clock.time(),
        )
        try:
            async with self._db.session() as s:
                if data.team_id is not None and await s.get(Team, data.team_id) is None:
                    raise InvalidRequestError(f"There is no team '{data.team_id}'.", param="team_id")
                s.add(user)
        except IntegrityError:
            raise ConflictError(f"A user with the email {email} exists already.", param="email") from None
        return user

    async def has_users(self) -> bool:
        """Whether any account exists (the web app's first-run page shows until one does)."""
        async with self._db.session() as s:
            return (await s.execute(select(User.id).where(User.id != SYSTEM_USER_ID).limit(1))).first() is not None

    async def ensure_admin(self, email: str, password: str) -> bool:
        """Create the first admin from the environment unless that user exists; True if created."""
        async with self._db.session() as s:
            exists = (await s.execute(select(User.id).where(User.email == email.lower()))).first()
        if exists:
            return False
        try:
            await self.create_user(UserCreate(email=email, password=password, role="admin"))
        except ConflictError:  # another worker of this server made it at the same moment
            return False
        return True

    async def list_users(self) -> list[User]:
        async with self._db.session() as s:
            rows = await s.execute(select(User).where(User.id != SYSTEM_USER_ID).order_by(User.created_at))
            return list(rows.scalars())

    async def get_user(self, user_id: str) -> User:
        async with self._db.session() as s:
            user = await s.get(User, user_id)
        if user is None or user.id == SYSTEM_USER_ID:
            raise NotFoundError("No such user.")
        return user

    async def revoke_user(self, user_id: str) -> User:
        """Revoke a user and, at once, every session and key they hold."""
        now = self._clock.time()
        async with self._db.session() as s:
            user = await s.get(User, user_id)
            if user is None or user.id == SYSTEM_USER_ID:
                raise NotFoundError("No such user.")
            if user.revoked_at is None:
                user.revoked_at = now
            await s.execute(update(Session).where(Session.user_id == user_id, Session.revoked_at.is_(None))
                            .values(revoked_at=now))
            await s.execute(update(ApiKey).where(ApiKey.owner_id == user_id, ApiKey.revoked_at.is_(None))
                            .values(revoked_at=now))
        self._auth.forget(user_id=user_id)
        return user

    async def set_tier(self, user_id: str, tier: str | None) -> User:
        """Put a user in a rate-limit tier (None: no tier); their cached sessions and keys see it at once."""
        return await self._set(user_id, tier=tier)

    async def set_tools(self, user_id: str, tools: list[str] | None) -> User:
        """Set the agent tools a user's agents may use (None: all); their cached sessions and keys see it at once
        (each key keeps its own list, and is allowed what both lists allow)."""
        return await self._set(user_id, allowed_tools=tools)

    async def _set(self, user_id: str, **values: Any) -> User:
        """Change a user (404 for none, and for the system user); their cached sessions and keys see it at once."""
        async with self._db.session() as s:
            user = await s.get(User, user_id)
            if user is None or user.id == SYSTEM_USER_ID:
                raise NotFoundError("No such user.")
            for name, value in values.items():
                setattr(user, name, value)
        self._auth.forget(user_id=user_id)
        return user

    async def login(self, email: str, password: str) -> tuple[str, Session, User]:
        async with self._db.session() as s:
            user = (await s.execute(select(User).where(User.email == email.lower()))).scalar_one_or_none()
        ok = await self._passwords.verify(user.password_hash if user else None, password)
        if user is None or not ok or user.revoked_at is not None:
            raise AuthenticationError("Wrong email or password.", code="invalid_credentials")
        token = new_token(SESSION_PREFIX)
        now = self._clock.time()
        session = Session(id=new_id("ses"), token_hash=token_hash(token), user_id=user.id, created_at=now,
                          expires_at=now + self._session_ttl)
        async with self._db.session() as s:
            s.add(session)
        return token, session, user

    async def logout(self, session_id: str) -> None:
        async with self._db.session() as s:
            await s.execute(update(Session).where(Session.id == session_id, Session.revoked_at.is_(None))
                            .values(revoked_at=self._clock.time()))
        self._auth.forget(session_id=session_id)

    async def list_sessions(self, user_id: str) -> list[Session]:
        async with self._db.session() as s:
            rows = await s.execute(select(Session).where(
                Session.user_id == user_id, Session.revoked_at.is_(None), Session.expires_at > self._clock.time()
            ).order_by(Session.created_at))
            return list(rows.scalars())

    async def revoke_session(self, user_id: str, session_id: str) -> None:
        """End one of the user's sessions; another user's session is 'not found'."""
        async with self._db.session() as s:
            session = await s.get(Session, session_id)
            if session is None or session.user_id != user_id or session.revoked_at is not None:
                raise NotFoundError("No such session.")
            session.revoked_at = self._clock.time()
        self._auth.forget(session_id=session_id)

    async def create_team(self, data: TeamCreate) -> Team:
        team = Team(id=new_id("team"), name=data.name, budget_usd=data.budget_usd, budget_period=data.budget_period,
                    created_at=self._clock.time())
        try:
            async with self._db.session() as s:
                s.add(team)
        except IntegrityError:
            raise ConflictError(f"A team named '{data.name}' exists already.", param="name") from None
        return team

    async def list_teams(self) -> list[Team]:
        async with self._db.session() as s:
            return list((await s.execute(select(Team).order_by(Team.created_at))).scalars())
