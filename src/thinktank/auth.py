"""Moved to :mod:`thinktank.accounts.admin_key`; this name stays while ``api/state.py`` imports it."""

from __future__ import annotations

from .accounts.admin_key import AdminKey, hash_key

__all__ = ["AdminKey", "hash_key"]
