"""Virtual API keys: created, listed, rotated, revoked; stored hashed; never worth more than their creator."""

from __future__ import annotations

from sqlalchemy import select

from ..clock import Clock
from ..errors import NotFoundError, PermissionDeniedError
from ..store.db import Database
from ..store.tables import ApiKey, new_id
from .principal import Authenticator, Principal
from .schemas import KeyCreate, KeyCreated, KeyPublic
from .secrets import KEY_PREFIX, new_token, token_hash
from .tool_access import covers

__all__ = ["KeyService", "key_public"]

PREFIX_LEN = len(KEY_PREFIX) + 8


def key_public(k: ApiKey) -> KeyPublic:
    return KeyPublic(
        id=k.id, name=k.name, prefix=k.prefix, owner_id=k.owner_id, models=k.allowed_models, tools=k.allowed_tools,
        budget_usd=k.budget_usd, budget_period=k.budget_period, rpm=k.rpm, tpm=k.tpm, expires_at=k.expires_at,
        metadata=k.metadata_, created_at=k.created_at, revoked_at=k.revoked_at, cache_ttl=k.cache_ttl,
    )


def _bounded(data: KeyCreate, creator: Principal) -> KeyCreate:
    """``data`` with the creator's limits filled in; PermissionDenied when it asks for more than they hold."""
    update: dict[str, object] = {}
    if creator.allowed_models is not None:
        if data.models is None:
            update["models"] = sorted(creator.allowed_models)
        elif not set(data.models) <= creator.allowed_models:
            extra = ", ".join(sorted(set(data.models) - creator.allowed_models))
            raise PermissionDeniedError(f"A key cannot allow models its creator may not use: {extra}.",
                                        param="models")
    if creator.allowed_tools is not None:
        if data.tools is None:
            update["tools"] = sorted(creator.allowed_tools)
        else:
            wider = [t for t in data.tools if not covers(creator.allowed_tools, t)]
            if wider:
                raise PermissionDeniedError(
                    f"A key cannot allow tools its creator may not use: {', '.join(wider)} "
                    "(GET /api/v1/me lists the tools you may use).", param="tools")
    limited = [(b.limit_usd, b) for b in creator.budgets if b.limit_usd is not None]
    if limited:
        limit, tightest = min(limited, key=lambda pair: pair[0])
        if data.budget_usd is None:
            update["budget_usd"], update["budget_period"] = limit, tightest.period
        elif data.budget_usd > limit:
            raise PermissionDeniedError(
                f"A key cannot have a larger budget than its creator's {tightest.label} "
                f"(${limit:g} per {tightest.period}).", param="budget_usd")
    for field, held in (("rpm", creator.key_rpm or creator.user_rpm), ("tpm", creator.key_tpm or creator.user_tpm)):
        wanted = getattr(data, field)
        if held is not None:
            if wanted is None:
                update[field] = held
            elif wanted > held:
                raise PermissionDeniedError(f"A key cannot allow more than its creator's {field} ({held}).",
                                            param=field)
    if creator.key_id is not None and creator.expires_at is not None:
        if data.expires_at is None:
            update["expires_at"] = creator.expires_at
        elif data.expires_at > creator.expires_at:
            raise PermissionDeniedError("A key cannot outlive the key that creates it.", param="expires_at")
    return data.model_copy(update=update)


class KeyService:
    def __init__(self, db: Database, clock: Clock, auth: Authenticator) -> None:
        self._db = db
        self._clock = clock
        self._auth = auth

    async def create(self, creator: Principal, data: KeyCreate) -> KeyCreated:
        data = _bounded(data, creator)
        secret = new_token(KEY_PREFIX)
        row = ApiKey(
            id=new_id("key"), name=data.name, prefix=secret[:PREFIX_LEN], key_hash=token_hash(secret),
            owner_id=creator.user_id, created_by_key=creator.key_id, allowed_models=data.models,
            allowed_tools=data.tools, budget_usd=data.budget_usd, budget_period=data.budget_period, rpm=data.rpm,
            tpm=data.tpm, expires_at=data.expires_at, metadata_=data.metadata, created_at=self._clock.time(),
            cache_ttl=data.cache_ttl,
        )
        async with self._db.session() as s:
            s.add(row)
        return KeyCreated(**key_public(row).model_dump(), key=secret)

    async def list(self, principal: Principal, *, include_revoked: bool = False) -> list[ApiKey]:
        q = select(ApiKey).order_by(ApiKey.created_at)
        if not principal.is_admin:
            q = q.where(ApiKey.owner_id == principal.user_id)
        if not include_revoked:
            q = q.where(ApiKey.revoked_at.is_(None))
        async with self._db.session() as s:
            return list((await s.execute(q)).scalars())

    async def get(self, principal: Principal, key_id: str) -> ApiKey:
        """The key, if ``principal`` may see it; another user's key is 'not found', never 'forbidden'."""
        async with self._db.session() as s:
            row = await s.get(ApiKey, key_id)
        if row is None or (not principal.is_admin and row.owner_id != principal.user_id):
            raise NotFoundError("No such key.")
        return row

    async def revoke(self, principal: Principal, key_id: str) -> ApiKey:
        row = await self.get(principal, key_id)
        async with self._db.session() as s:
            live = await s.get(ApiKey, row.id)
            assert live is not None
            if live.revoked_at is None:
                live.revoked_at = self._clock.time()
            row = live
        self._auth.forget(key_id=key_id)
        return row

    async def rotate(self, principal: Principal, key_id: str) -> KeyCreated:
        """A new secret for the same grants; the old secret stops working at once."""
        row = await self.get(principal, key_id)
        if row.revoked_at is not None:
            raise NotFoundError("No such key.")
        secret = new_token(KEY_PREFIX)
        async with self._db.session() as s:
            live = await s.get(ApiKey, row.id)
            assert live is not None
            live.key_hash, live.prefix = token_hash(secret), secret[:PREFIX_LEN]
            row = live
        self._auth.forget(key_id=key_id)
        return KeyCreated(**key_public(row).model_dump(), key=secret)
