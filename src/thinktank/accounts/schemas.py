"""Input and public models of the accounts API (input models forbid unknown fields)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from ..bounds import MAX_SAFE_INT, MAX_UNIX_TIME, RateLimit, Usd
from ..cache.config import MAX_TTL as MAX_CACHE_TTL
from .tool_access import ToolList

__all__ = [
    "KeyCreate",
    "KeyCreated",
    "KeyPublic",
    "LoginIn",
    "LoginOut",
    "TeamCreate",
    "TeamPublic",
    "UserCreate",
    "UserPublic",
    "UserTier",
    "UserTools",
]

Period = Literal["day", "month", "total"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LoginIn(_In):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class UserCreate(_In):
    email: EmailStr
    password: str = Field(min_length=8, max_length=1024)
    role: Literal["admin", "member"] = "member"
    team_id: str | None = Field(default=None, max_length=32)
    tier: str | None = Field(default=None, max_length=50)
    models: list[str] | None = Field(default=None, max_length=1000)
    tools: ToolList | None = None
    """Agent tools and MCP servers their agents may use (``knowledge_search``, ``git``, ``git.*``,
    ``git.git_log``); null: all."""
    budget_usd: Usd | None = None
    budget_period: Period = "month"
    rpm: RateLimit | None = None
    tpm: RateLimit | None = None


class UserTier(_In):
    tier: str | None = Field(max_length=50)
    """A tier configured under ``tiers:``; null for none."""


class UserTools(_In):
    tools: ToolList | None
    """The agent tools and MCP servers the user's agents may use; null: all, ``[]``: none."""


class UserPublic(BaseModel):
    id: str
    email: str
    role: str
    team_id: str | None
    tier: str | None
    models: list[str] | None
    tools: list[str] | None
    budget_usd: float | None
    budget_period: str
    rpm: int | None
    tpm: int | None
    created_at: float
    revoked_at: float | None


class LoginOut(BaseModel):
    token: str
    expires_at: float
    user: UserPublic


class TeamCreate(_In):
    name: str = Field(min_length=1, max_length=200)
    budget_usd: Usd | None = None
    budget_period: Period = "month"


class TeamPublic(BaseModel):
    id: str
    name: str
    budget_usd: float | None
    budget_period: str
    created_at: float


class KeyCreate(_In):
    name: str = Field(default="", max_length=200)
    models: list[str] | None = Field(default=None, max_length=1000)
    """Models the key may call (default: all its creator may call)."""
    tools: ToolList | None = None
    """Agent tools and MCP servers its agents may use (default: all its creator may use)."""
    budget_usd: Usd | None = None
    budget_period: Period = "month"
    rpm: RateLimit | None = None
    tpm: RateLimit | None = None
    expires_at: float | None = Field(default=None, gt=0, le=MAX_UNIX_TIME)
    """Unix seconds."""
    metadata: dict[str, str | int | float | bool | None] | None = None
    cache_ttl: float | None = Field(default=None, ge=0, le=MAX_CACHE_TTL)
    """Seconds the key's answers are cached (0: never; null: as the server's ``cache:`` configuration says)."""

    @field_validator("metadata", mode="before")
    @classmethod
    def _exact_integers(cls, v: Any) -> Any:
        # Before the union: a larger integer would otherwise become an inexact float.
        if isinstance(v, dict) and any(isinstance(x, int) and not isinstance(x, bool) and abs(x) > MAX_SAFE_INT
                                       for x in v.values()):
            raise ValueError(f"metadata integers are at most {MAX_SAFE_INT} in size")
        return v

    @field_validator("metadata")
    @classmethod
    def _small(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and (len(v) > 50 or any(len(k) > 100 for k in v)):
            raise ValueError("at most 50 metadata entries with names of at most 100 characters")
        return v


class KeyPublic(BaseModel):
    id: str
    name: str
    prefix: str
    owner_id: str
    models: list[str] | None
    tools: list[str] | None
    budget_usd: float | None
    budget_period: str
    rpm: int | None
    tpm: int | None
    expires_at: float | None
    metadata: dict[str, Any] | None
    created_at: float
    revoked_at: float | None
    cache_ttl: float | None = None


class KeyCreated(KeyPublic):
    key: str
    """The full key: shown this once, never again."""
