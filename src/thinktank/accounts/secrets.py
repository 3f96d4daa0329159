"""Hashing of what thinktank hands out (API keys, session tokens) and of passwords.

Keys and tokens are long random strings: one SHA-256 identifies them and a slow hash would only
slow every request. Passwords are chosen by people: argon2id, in a worker thread so the event
loop keeps serving while a hash is computed.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .admin_key import hash_key

__all__ = ["PasswordHashing", "new_token", "token_hash"]

KEY_PREFIX = "tt-"
SESSION_PREFIX = "tt-sess-"


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hash_key(token).hex()


class PasswordHashing:
    def __init__(self, *, time_cost: int = 2, memory_cost: int = 19456, parallelism: int = 1) -> None:
        # OWASP's argon2id minimum (19 MiB, 2 iterations); tests may pass cheaper settings.
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when ``password`` matches; always spends one verification, even with no stored hash."""
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(16))
        target = stored or self._dummy
        try:
            ok = await asyncio.to_thread(self._hasher.verify, target, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return bool(ok) and stored is not None
