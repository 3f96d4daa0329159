"""Delivery: a webhook that is down is tried again with backoff, then given up, and requests go on unaffected; a
receiver with another secret refuses the signature (and is not asked again); mail arrives over plain SMTP,
STARTTLS with a login and TLS from the start; failures are logged without secrets."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from thinktank.accounts.budget_backends import BudgetSpec
from thinktank.alerts.config import EmailConfig
from thinktank.alerts.delivery import EmailSender
from thinktank.alerts.events import budget_alert

from ..fakes.clock import FakeClock
from ..fakes.process import free_port
from .conftest import SECRET_ENV, Env, model_config, settled, webhook
from .receivers import SECRET, Mailbox, smtp_server


async def _budget_app(env: Env, tmp_path: Path, alerts: dict[str, Any]) -> tuple[str, Any]:
    from ..fakes.databases import make_sqlite

    db_url = await asyncio.to_thread(make_sqlite, tmp_path)
    return await env.start(model_config(env.upstream.fake.url, alerts), database_url=db_url)


async def test_a_webhook_that_is_down_is_retried_then_given_up(alert_env: Env, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    env = alert_env
    env.receiver.status = lambda _n: 503
    url, app = await _budget_app(env, tmp_path, {"webhook": webhook(env.receiver.url, retries=2)})
    _, key = await env.key(url, 1.0)
    with caplog.at_level(logging.INFO, logger="thinktank"):
        assert (await env.ask(url, key, 0.6)).status_code == 200
        await settled(app)
    assert env.receiver.attempts == 3 and env.receiver.alerts == []  # one try and two more, then given up
    assert (await env.ask(url, key, 0.1)).status_code == 200  # requests are unaffected
    log = caplog.text
    assert "given up" in log and "status 503" in log and "attempt 3 of 3" in log
    assert SECRET not in log and "path-token-Zq8" not in log and key not in log

    # It comes back: the next threshold is delivered at the first try.
    env.receiver.status = lambda _n: 204
    assert (await env.ask(url, key, 0.2)).status_code == 200
    await settled(app)
    assert [a["threshold"] for a in env.receiver.alerts] == [0.8] and env.receiver.attempts == 4


async def test_nothing_listening_is_given_up_without_leaking_the_url(alert_env: Env, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    env = alert_env
    hook = f"http://127.0.0.1:{free_port()}/hooks/sekret-path-token"
    url, app = await _budget_app(env, tmp_path, {"webhook": webhook(hook, retries=1, timeout=2)})
    _, key = await env.key(url, 1.0)
    with caplog.at_level(logging.INFO, logger="thinktank"):
        assert (await env.ask(url, key, 0.9)).status_code == 200
        await settled(app)
    assert "given up" in caplog.text and "attempt 2 of 2" in caplog.text
    assert "sekret-path-token" not in caplog.text and SECRET not in caplog.text


async def test_a_wrong_secret_fails_verification_and_is_not_retried(alert_env: Env, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    env = alert_env
    monkeypatch.setenv(SECRET_ENV, "not-the-receivers-secret")
    url, app = await _budget_app(env, tmp_path, {"webhook": webhook(env.receiver.url)})
    _, key = await env.key(url, 1.0)
    assert (await env.ask(url, key, 0.6)).status_code == 200
    await settled(app)
    assert (env.receiver.rejected, env.receiver.attempts, env.receiver.alerts) == (1, 1, [])


async def test_mail_through_the_app(alert_env: Env, tmp_path: Path) -> None:
    env = alert_env
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        email = {"host": "127.0.0.1", "port": port, "security": "none", "from": "thinktank@example.com",
                 "to": ["ops@example.com", "oncall@example.com"], "backoff": 0.01}
        url, app = await _budget_app(env, tmp_path, {"email": email, "budget_thresholds": [0.5]})
        _, key = await env.key(url, 2.0, name="nightly")
        assert (await env.ask(url, key, 1.5)).status_code == 200
        await settled(app)
    assert len(mailbox.messages) == 1
    msg = mailbox.messages[0]
    assert mailbox.envelopes == [("thinktank@example.com", ["ops@example.com", "oncall@example.com"])]
    assert msg["Subject"].startswith("[thinktank] key 'nightly'") and "crossed 50%" in msg["Subject"]
    body = msg.get_content()
    assert msg.get_content_type() == "text/plain" and "threshold: 0.5" in body and "limit_usd: 2.0" in body
    assert key[12:] not in msg.as_string()


@pytest.fixture(scope="module")
def tls() -> Iterator[tuple[ssl.SSLContext, str]]:
    """A server context for 127.0.0.1 signed by a CA of this test's own, and that CA's PEM file."""
    import tempfile

    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ca.pem"
        ca.cert_pem.write_to_path(str(path))
        yield server, str(path)


def _alert() -> Any:
    spec = BudgetSpec("team", "team_1", 10.0, "month", "team 'ml'")
    return budget_alert(spec, "2026-11", 0.8, 8.5, 1_790_000_000.0)


def _sender(port: int, ca_file: str | None, password: str | None = None, **extra: Any) -> EmailSender:
    config = EmailConfig.model_validate({"host": "127.0.0.1", "port": port, "from": "tt@example.com",
                                         "to": ["ops@example.com"], "ca_file": ca_file, "backoff": 0.0,
                                         "timeout": 5, **extra})
    return EmailSender(config, password, FakeClock())


async def test_starttls_with_a_login(tls: tuple[ssl.SSLContext, str]) -> None:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    server_ctx, ca_file = tls
    mailbox = Mailbox()

    def authenticate(_server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"alerts", b"hunter2-smtp")
        if ok:
            mailbox.logins.append(data.login.decode())
        return AuthResult(success=ok)

    with smtp_server(mailbox, tls_context=server_ctx, require_starttls=True, authenticator=authenticate,
                     auth_require_tls=True) as port:
        assert await _sender(port, ca_file, "hunter2-smtp", username="alerts", password_env="X").send(_alert())
        # a wrong password is a permanent refusal: given up at once
        assert not await _sender(port, ca_file, "wrong", username="alerts", password_env="X", retries=3).send(
            _alert())
        # the system's CAs do not know this server: the certificate check refuses it
        assert not await _sender(port, None, "hunter2-smtp", username="alerts", password_env="X", retries=0).send(
            _alert())
    assert mailbox.logins == ["alerts"] and len(mailbox.messages) == 1
    assert "team 'ml'" in mailbox.messages[0]["Subject"]


async def test_tls_from_the_start(tls: tuple[ssl.SSLContext, str]) -> None:
    server_ctx, ca_file = tls
    mailbox = Mailbox()
    with smtp_server(mailbox, ssl_context=server_ctx) as port:
        assert await _sender(port, ca_file, security="ssl").send(_alert())
    assert len(mailbox.messages) == 1


async def test_starttls_refused_by_a_server_without_it() -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        assert not await _sender(port, None, retries=1).send(_alert())  # never falls back to plain text
    assert mailbox.messages == []
