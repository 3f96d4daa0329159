"""The ``alerts:`` section of the YAML configuration: when to alert (budget thresholds, cooldowns) and where to
(a signed webhook, email over SMTP).

Where alerts go is the operator's choice alone: the webhook URL and the SMTP server come from this file, never
from a request. Secrets (the webhook's signing secret, the SMTP password) are not written here: the file names
the environment variables that hold them (``secret_env``, ``password_env``), the way ``api_key_env`` names a
provider's key, and they are read when the app is built (a variable that is not set is a configuration error).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import ConfigError

__all__ = ["AlertsConfig", "EmailConfig", "RetryConfig", "WebhookConfig", "resolve_env"]

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def resolve_env(where: str, name: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of environment variable ``name``; a :class:`ConfigError` naming ``where`` if it is not set."""
    env = os.environ if environ is None else environ
    value = env.get(name)
    if not value:
        raise ConfigError(f"{where}: environment variable {name} is not set")
    return value


class RetryConfig(_In):
    """A delivery that fails (no answer, a timeout, a 5xx or a 429) is tried again ``retries`` times, waiting
    ``backoff`` seconds, then twice as long each time, at most ``backoff_max``; then it is given up (and logged)."""

    retries: int = Field(default=3, ge=0, le=10)
    backoff: float = Field(default=1.0, ge=0, le=600)
    backoff_max: float = Field(default=60.0, ge=0, le=3600)


class WebhookConfig(RetryConfig):
    """An HTTP POST of the alert as JSON, signed with HMAC-SHA256 (header ``x-thinktank-signature``)."""

    url: str = Field(min_length=8, max_length=2048)
    """Any http(s) address the operator chooses, private and loopback ones included."""
    secret_env: str = Field(pattern=_ENV_NAME)
    """The environment variable holding the shared signing secret."""
    timeout: float = Field(default=10.0, gt=0, le=300)
    """Seconds for one attempt (connect, send, answer)."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if any(c.isspace() for c in v):
            raise ValueError("must not contain spaces")
        return v


class EmailConfig(RetryConfig):
    """A plain-text mail over SMTP (sent from a thread: the standard library's ``smtplib``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)
    """``from`` in the file is ``sender`` here (a Python keyword); a dumped config (``sender``) reads back too."""

    host: str = Field(min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    """Default: 587 for ``starttls``, 465 for ``ssl``, 25 for ``none``."""
    security: Literal["starttls", "ssl", "none"] = "starttls"
    """``starttls``: plain connection upgraded to TLS (refused if the server cannot); ``ssl``: TLS from the
    start; ``none``: no encryption (only for a relay on the same host or network)."""
    ca_file: str | None = None
    """A CA bundle (PEM) to verify the server's certificate with, for a server with a private CA (default: the
    system's). Certificates are always verified."""
    username: str | None = Field(default=None, min_length=1, max_length=320)
    password_env: str | None = Field(default=None, pattern=_ENV_NAME)
    """The environment variable holding the SMTP password (with ``username``)."""
    sender: str = Field(alias="from", max_length=320)
    to: list[str] = Field(min_length=1, max_length=50)
    subject_prefix: str = Field(default="[thinktank]", max_length=100)
    timeout: float = Field(default=30.0, gt=0, le=600)
    """Seconds for each step of the conversation with the server."""

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str) -> str:
        if not _ADDRESS.match(v):
            raise ValueError(f"{v!r} is not an email address")
        return v

    @field_validator("to")
    @classmethod
    def _to(cls, v: list[str]) -> list[str]:
        for address in v:
            if not _ADDRESS.match(address):
                raise ValueError(f"{address!r} is not an email address")
        return v

    @field_validator("subject_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if any(c in v for c in "\r\n"):
            raise ValueError("must be one line")
        return v

    @model_validator(mode="after")
    def _auth(self) -> EmailConfig:
        if (self.username is None) != (self.password_env is None):
            raise ValueError("give both username and password_env (or neither)")
        if self.username is not None and self.security == "none":
            raise ValueError("a password is never sent without encryption: use security starttls or ssl")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or {"starttls": 587, "ssl": 465, "none": 25}[self.security]


class AlertsConfig(_In):
    """When to alert and where to send alerts."""

    budget_thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0], max_length=20)
    """Fractions of a budget (each above 0 and at most 1) whose crossing is told once per budget and period, for
    key, user, team and global budgets. Empty: no budget alerts."""
    cooldowns: bool = True
    """Tell when a deployment starts cooling down after failures (once per episode: until it answers again)."""
    cooldown_interval: float = Field(default=900.0, ge=0, le=7 * 86400)
    """At most one cooldown alert per deployment in this many seconds, across all workers (a flapping
    deployment does not flood)."""
    max_pending: int = Field(default=100, ge=1, le=10_000)
    """Alerts being delivered at once at most; more are dropped (and logged)."""
    webhook: WebhookConfig | None = None
    email: EmailConfig | None = None

    @field_validator("budget_thresholds")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        for t in v:
            if not 0 < t <= 1:
                raise ValueError(f"{t:g} is not a fraction of a budget: each must be above 0 and at most 1")
        return sorted(set(v))

    @model_validator(mode="after")
    def _somewhere(self) -> AlertsConfig:
        if self.webhook is None and self.email is None:
            raise ValueError("alerts need somewhere to go: give webhook or email (or both)")
        return self
