"""Where alerts go in tests: a webhook receiver (aiohttp on loopback) that checks signatures the way
docs/alerts.md tells a receiver to, with the standard library alone, and an SMTP server (aiosmtpd) that keeps
the mail it gets."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import orjson
from aiohttp import web

from ..fakes.server import serve_aiohttp

SECRET = "whsec-test-0123456789abcdef"
TOLERANCE = 300


def verify(secret: str, header: str, body: bytes, now: float, tolerance: float = TOLERANCE) -> bool:
    """The recipe of docs/alerts.md: t and v1 from the header, HMAC-SHA256 over ``t.body``, compared in constant
    time, and a timestamp no further than ``tolerance`` seconds from now."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given) and abs(now - timestamp) <= tolerance


@dataclass
class WebhookReceiver:
    """Counts deliveries: the valid ones in ``alerts``, every attempt in ``attempts``, bad signatures in
    ``rejected``. ``status`` (a callable of the attempt number) says what to answer a valid delivery."""

    secret: str = SECRET
    status: Callable[[int], int] = lambda _n: 204
    clock: Callable[[], float] = time.time
    alerts: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    rejected: int = 0
    url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hooks/{token}", self._handle)
        self._runner, base = await serve_aiohttp(app, shutdown_timeout=0.1)
        self.url = f"{base}/hooks/path-token-Zq8"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if not verify(self.secret, request.headers.get("x-thinktank-signature", ""), body, self.clock()):
            self.rejected += 1
            self.arrived.set()
            return web.Response(status=401, text="bad signature")
        status = self.status(self.attempts)
        if 200 <= status < 300:
            self.alerts.append(orjson.loads(body))
        self.arrived.set()
        return web.Response(status=status)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts if a["kind"] == kind]

    async def wait_for(self, check: Callable[[], bool], timeout: float = 20.0) -> None:
        """Until ``check()`` holds (a deadline against a hang, not a timing assertion)."""
        async with asyncio.timeout(timeout):
            while not check():
                self.arrived.clear()
                await self.arrived.wait()


@dataclass
class Mailbox:
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        msg = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        return "250 OK"


@contextmanager
def smtp_server(mailbox: Mailbox, **options: Any) -> Iterator[int]:
    """aiosmtpd on 127.0.0.1 in its own thread; yields its port. ``options`` go to its Controller (TLS, auth)."""
    from aiosmtpd.controller import Controller

    from ..fakes.process import free_port

    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
