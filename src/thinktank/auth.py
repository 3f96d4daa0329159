"""The admin key: from THINKTANK_ADMIN_KEY, or generated at first start and stored hashed.

Keys are random and long, so one SHA-256 is the right hash (a slow password hash would only
slow every request); comparison is constant-time. The plaintext is never written anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from .config import Settings

__all__ = ["AdminKey", "hash_key"]

_FILE = "admin_key.sha256"


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class AdminKey:
    def __init__(self, digest: bytes) -> None:
        self._digest = digest

    def verify(self, presented: str) -> bool:
        return hmac.compare_digest(hash_key(presented), self._digest)

    def verify_digest(self, presented: bytes) -> bool:
        """``verify`` for a key already hashed with :func:`hash_key` (a caller that needs the digest anyway)."""
        return hmac.compare_digest(presented, self._digest)

    @classmethod
    def from_settings(cls, settings: Settings) -> tuple[AdminKey, str | None]:
        """The admin key, and the new plaintext key if one was generated just now (show it once)."""
        if settings.admin_key is not None and settings.admin_key.get_secret_value():
            return cls(hash_key(settings.admin_key.get_secret_value())), None
        path = settings.data_dir / _FILE
        if path.exists():
            digest = bytes.fromhex(path.read_text(encoding="ascii").strip())
            return cls(digest), None
        key = "tt-admin-" + secrets.token_urlsafe(32)
        _write_private(path, hash_key(key).hex())
        return cls(hash_key(key)), key


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text + "\n")
    os.replace(tmp, path)
