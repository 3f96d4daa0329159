"""The admin key: chosen with THINKTANK_ADMIN_KEY or generated at first start, kept as a hash.

The key in force is the one whose hash is stored in the data directory (``admin_key.sha256``). It
stays in force from start to start, with or without THINKTANK_ADMIN_KEY: the variable changes it
only when it gives a different key (which then replaces the stored one, and the start says so);
``thinktank admin-key reset`` makes a new one. The plaintext is never written anywhere; the file
keeps the SHA-256 and, on a second line, a short prefix to recognise the key by.

Keys are random and long, so one SHA-256 is the right hash (a slow password hash would only slow
every request); comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import Settings
from ..errors import ConfigError

__all__ = ["FILE", "AdminKey", "AdminKeyStatus", "generate", "hash_key", "key_path", "read_stored", "reset"]

FILE = "admin_key.sha256"
_GENERATED = "tt-admin-"

How = Literal["generated", "stored", "environment", "saved", "replaced", "unstored"]


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def generate() -> str:
    return _GENERATED + secrets.token_urlsafe(32)


def key_path(data_dir: Path) -> Path:
    return data_dir / FILE


def _prefix(key: str) -> str | None:
    """What may be shown of a key: a generated key's first characters; nothing of a short one."""
    if key.startswith(_GENERATED):
        return key[: len(_GENERATED) + 4]
    return key[:6] if len(key) >= 24 else None


@dataclass(frozen=True)
class Stored:
    digest: bytes
    prefix: str | None


def read_stored(path: Path) -> Stored | None:
    """The stored key's hash (and prefix), or None when there is none yet."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the stored admin key ({exc})") from None
    try:
        digest = bytes.fromhex(lines[0].strip()) if lines else b""
    except ValueError:
        digest = b""
    if len(digest) != hashlib.sha256().digest_size:
        raise ConfigError(f"{path}: not a stored admin key; remove it (or run `thinktank admin-key reset`)")
    prefix = lines[1].strip() if len(lines) > 1 and lines[1].strip() else None
    return Stored(digest, prefix)


def _store(path: Path, key: str) -> None:
    _write_private(path, hash_key(key).hex() + "\n" + (_prefix(key) or ""))


def reset(data_dir: Path) -> str:
    """A new admin key, stored in place of the old one; the plaintext is returned to be shown once."""
    key = generate()
    _store(key_path(data_dir), key)
    return key


@dataclass(frozen=True)
class AdminKeyStatus:
    """Which admin key a start put in force, and how: said at every start."""

    how: How
    path: Path
    prefix: str | None
    key: str | None = None
    """The plaintext, only when the key was generated just now (to be shown this once)."""
    problem: str | None = None
    """Why THINKTANK_ADMIN_KEY could not be stored (``unstored``)."""

    def describe(self) -> str:
        shown = f" ({self.prefix}…)" if self.prefix else ""
        if self.how == "generated":
            return (
                "\n  thinktank generated an admin API key. It is shown only this once; store it now:\n\n"
                f"      {self.key}\n\n"
                f"  (Only its hash is kept, in {self.path}. Set THINKTANK_ADMIN_KEY to choose your own;\n"
                "  `thinktank admin-key reset` makes a new one.)\n"
            )
        if self.how == "stored":
            which = shown.strip() or "(the one printed at the first start, or last given as THINKTANK_ADMIN_KEY)"
            return f"admin key: the one stored in {self.path} {which}"
        if self.how == "environment":
            return f"admin key: THINKTANK_ADMIN_KEY{shown}, the one stored in {self.path}"
        if self.how == "unstored":
            return (f"admin key: THINKTANK_ADMIN_KEY{shown}, in force while the variable is set: it could not be "
                    f"stored in {self.path} ({self.problem})")
        if self.how == "saved":
            return (f"admin key: THINKTANK_ADMIN_KEY{shown}, now stored (hashed) in {self.path}: it stays in force "
                    "when the variable is not set")
        return (f"admin key: THINKTANK_ADMIN_KEY{shown} replaces the one stored in {self.path}; the previous "
                "admin key no longer works")


class AdminKey:
    def __init__(self, digest: bytes) -> None:
        self._digest = digest

    @classmethod
    def of(cls, key: str) -> AdminKey:
        """This key, for this process alone (nothing stored)."""
        return cls(hash_key(key))

    def verify(self, presented: str) -> bool:
        return hmac.compare_digest(hash_key(presented), self._digest)

    def verify_digest(self, presented: bytes) -> bool:
        """``verify`` for a key already hashed with :func:`hash_key` (a caller that needs the digest anyway)."""
        return hmac.compare_digest(presented, self._digest)

    @classmethod
    def from_settings(cls, settings: Settings) -> tuple[AdminKey, AdminKeyStatus]:
        """The admin key in force: THINKTANK_ADMIN_KEY when given (stored if it is new), else the stored
        one, else a new one (generated and stored; its plaintext is in the status, to show once)."""
        path = key_path(settings.data_dir)
        stored = read_stored(path)
        given = settings.admin_key.get_secret_value() if settings.admin_key is not None else ""
        if given:
            digest = hash_key(given)
            how: How
            if stored is None:
                how = "saved"
            elif hmac.compare_digest(stored.digest, digest):
                how = "environment"
            else:
                how = "replaced"
            if how != "environment" or stored is None or stored.prefix != _prefix(given):
                try:
                    _store(path, given)  # (the same key is stored again only to add its prefix to an older file)
                except OSError as exc:  # a read-only data directory: the variable still says which key it is
                    if how != "environment":
                        return cls(digest), AdminKeyStatus("unstored", path, _prefix(given), problem=_reason(exc))
            return cls(digest), AdminKeyStatus(how, path, _prefix(given))
        if stored is not None:
            return cls(stored.digest), AdminKeyStatus("stored", path, stored.prefix)
        key = generate()
        try:
            _store(path, key)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot store a new admin key ({_reason(exc)}): make the data directory "
                              "writable (THINKTANK_DATA_DIR) or set THINKTANK_ADMIN_KEY") from None
        return cls(hash_key(key)), AdminKeyStatus("generated", path, _prefix(key), key)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text + "\n")
    os.replace(tmp, path)
