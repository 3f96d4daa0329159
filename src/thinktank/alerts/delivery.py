"""Sending an alert: a signed webhook (HTTP POST of JSON) or a plain-text mail over SMTP, each tried again with
backoff when it fails, a bounded number of times.

A webhook's body is signed with HMAC-SHA256 over ``<timestamp>.<body>`` with the shared secret, in the header
``x-thinktank-signature: t=<timestamp>,v1=<hex digest>`` (each attempt signs anew, with its own timestamp). A
receiver recomputes the digest over the raw body it got, compares in constant time, and refuses a timestamp too
far from its own clock (see docs/alerts.md).

Failures are logged with the destination's host alone (a webhook URL can hold a token in its path), the kind
of error and the status: never the secret, the password or the URL in full.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import smtplib
import ssl
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import orjson

from .. import __version__
from ..clock import Clock
from ..gateway.health import scrub_message
from .config import EmailConfig, RetryConfig, WebhookConfig
from .events import Alert

if TYPE_CHECKING:
    import httpx

__all__ = ["SIGNATURE_HEADER", "EmailSender", "Sender", "WebhookSender", "sign"]

log = logging.getLogger("thinktank.alerts")

SIGNATURE_HEADER = "x-thinktank-signature"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``x-thinktank-signature`` header's value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class _Permanent(Exception):
    """A failure trying again will not mend (a 4xx answer other than 408 and 429)."""


class Sender(Protocol):
    name: str

    async def send(self, alert: Alert) -> bool:
        """Deliver ``alert``, trying again as configured; True if delivered. Never raises but on cancellation."""
        ...

    async def close(self) -> None: ...


async def _with_retries(name: str, where: str, alert: Alert, retry: RetryConfig, clock: Clock,
                        attempt_once: Callable[[], Awaitable[None]], *, hide: str = "") -> bool:
    """``attempt_once`` until it succeeds, at most ``retries + 1`` times. ``hide``: text never logged (a URL)."""
    attempts = retry.retries + 1
    wait = retry.backoff
    for attempt in range(1, attempts + 1):
        try:
            await attempt_once()
            return True
        except asyncio.CancelledError:
            raise
        except _Permanent as exc:
            log.warning("%s alert %s (%s) to %s refused: %s; not tried again", name, alert.id, alert.kind, where, exc)
            return False
        except Exception as exc:
            text = str(exc).replace(hide, where) if hide else str(exc)
            why = f"{type(exc).__name__}: {scrub_message(text)}" if text else type(exc).__name__
            last = attempt == attempts
            log.warning("%s alert %s (%s) to %s failed (attempt %d of %d): %s%s", name, alert.id, alert.kind,
                        where, attempt, attempts, why, "; given up" if last else "")
            if last:
                return False
        await clock.sleep(min(wait, retry.backoff_max))
        wait *= 2
    return False


class WebhookSender:
    """POSTs each alert as JSON to the configured URL, signed with the shared secret."""

    name = "webhook"

    def __init__(self, config: WebhookConfig, secret: str, clock: Clock) -> None:
        self._config = config
        self._secret = secret.encode()
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        parts = urlsplit(config.url)
        self._where = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            # No redirects: the body and its signature go to the configured address or nowhere.
            self._client = httpx.AsyncClient(timeout=self._config.timeout, follow_redirects=False)
        return self._client

    async def _post(self, body: bytes) -> None:
        timestamp = int(self._clock.time())
        headers = {
            "content-type": "application/json", "user-agent": f"thinktank/{__version__}",
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        resp = await self._http().post(self._config.url, content=body, headers=headers)
        status = resp.status_code
        if 200 <= status < 300:
            return
        if 400 <= status < 500 and status not in (408, 429):
            raise _Permanent(f"status {status}")
        raise RuntimeError(f"status {status}")

    async def send(self, alert: Alert) -> bool:
        body = orjson.dumps(alert.payload)
        return await _with_retries("webhook", self._where, alert, self._config, self._clock,
                                   lambda: self._post(body), hide=self._config.url)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _one_line(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _text(alert: Alert) -> str:
    lines = [alert.summary, ""]
    for key, value in alert.payload.items():
        if key != "message":
            lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


class EmailSender:
    """Mails each alert as plain text, with :mod:`smtplib` in a thread (the event loop never waits on SMTP)."""

    name = "email"

    def __init__(self, config: EmailConfig, password: str | None, clock: Clock) -> None:
        self._config = config
        self._password = password
        self._clock = clock
        self._where = f"smtp://{config.host}:{config.effective_port}"

    def _message(self, alert: Alert) -> EmailMessage:
        c = self._config
        msg = EmailMessage()
        msg["From"] = c.sender
        msg["To"] = ", ".join(c.to)
        msg["Subject"] = _one_line(f"{c.subject_prefix} {alert.summary}".strip())[:250]
        msg["Date"] = formatdate(self._clock.time(), usegmt=True)
        msg["Message-ID"] = make_msgid(idstring=alert.id, domain=c.sender.rsplit("@", 1)[1])
        msg.set_content(_text(alert))
        return msg

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self._config.ca_file)

    def _deliver(self, msg: EmailMessage) -> None:
        """Blocking: run in a thread."""
        c = self._config
        smtp: smtplib.SMTP
        if c.security == "ssl":
            smtp = smtplib.SMTP_SSL(c.host, c.effective_port, timeout=c.timeout, context=self._tls())
        else:
            smtp = smtplib.SMTP(c.host, c.effective_port, timeout=c.timeout)
        with smtp:
            smtp.ehlo()
            if c.security == "starttls":
                smtp.starttls(context=self._tls())  # raises if the server does not offer it
                smtp.ehlo()
            if c.username is not None and self._password is not None:
                smtp.login(c.username, self._password)
            refused = smtp.send_message(msg)
        if refused:
            log.warning("email alert: %d of %d recipients refused", len(refused), len(c.to))

    async def _attempt(self, msg: EmailMessage) -> None:
        try:
            await asyncio.to_thread(self._deliver, msg)
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600:  # a permanent refusal (authentication, a recipient, the sender)
                raise _Permanent(f"SMTP {exc.smtp_code}") from None
            raise RuntimeError(f"SMTP {exc.smtp_code}") from None
        except smtplib.SMTPRecipientsRefused:
            raise _Permanent("every recipient refused") from None
        except smtplib.SMTPNotSupportedError:
            raise _Permanent("the server does not offer STARTTLS (or AUTH)") from None

    async def send(self, alert: Alert) -> bool:
        msg = self._message(alert)
        return await _with_retries("email", self._where, alert, self._config, self._clock,
                                   lambda: self._attempt(msg))

    async def close(self) -> None:
        return None


