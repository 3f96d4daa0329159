"""Persistence: SQLAlchemy 2 (async) over SQLite (embedded default) or PostgreSQL, Alembic migrations."""

from .db import Database, default_database_url

__all__ = ["Database", "default_database_url"]
