"""``/ready``: the database, Redis and each upstream reported apart; 503 naming what is down; bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import Settings, parse_config

from ..fakes.databases import PG_ADMIN_URL, drop_pg, make_empty_pg
from ..fakes.server import serving
from ..fakes.upstream import FakeUpstream, Reply
from .conftest import AUTH

KEY = "sk-upstream-secret-0123456789"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deployment(name: str, base: str) -> dict[str, Any]:
    return {"name": name, "provider": "openai", "model": "fake-model", "base_url": f"{base}/v1?tenant=acme",
            "api_key": KEY}


@contextlib.asynccontextmanager
async def started(settings: Settings, config: dict[str, Any]) -> AsyncIterator[tuple[str, ThinktankApp,
                                                                                      httpx.AsyncClient]]:
    app = create_app(settings, parse_config(config))
    async with serving(app) as url, httpx.AsyncClient(timeout=30) as http:
        yield url, app, http


async def ready(http: httpx.AsyncClient, url: str) -> tuple[int, dict[str, Any]]:
    r = await http.get(url + "/ready")
    assert "x-request-id" in r.headers
    return r.status_code, r.json()


async def test_sqlite_and_an_upstream_up(settings: Settings, upstream: FakeUpstream) -> None:
    config = {"models": [deployment("gpt", upstream.url), {"name": "m", "provider": "mock"}]}
    async with started(settings, config) as (url, _app, http):
        status, body = await ready(http, url)
    assert status == 200 and body["status"] == "ready" and body["models"] == 2
    checks = body["checks"]
    assert checks["database"]["status"] == "ok" and checks["database"]["latency_ms"] >= 0
    assert "redis" not in checks
    assert checks["upstreams"]["gpt"]["status"] == "ok" and checks["upstreams"]["gpt"]["reachable"] is True
    assert checks["upstreams"]["m"] == {"status": "ok", "reachable": True, "probe": "none"}
    port = upstream.url.rsplit(":", 1)[1]
    text = str(body)
    assert port not in text and "acme" not in text and KEY not in text  # ids only: no URL, query or key


async def test_real_redis(settings: Settings) -> None:
    s = settings.model_copy(update={"redis_url": "redis://127.0.0.1:6379/0"})
    async with started(s, {"models": []}) as (url, _app, http):
        status, body = await ready(http, url)
    assert status == 200, body
    assert body["checks"]["redis"]["status"] == "ok"


async def test_redis_down_is_503_naming_redis(settings: Settings) -> None:
    port = closed_port()
    s = settings.model_copy(update={"redis_url": f"redis://:hunter2secret@127.0.0.1:{port}/0",
                                    "ready_timeout": 1.0})
    async with started(s, {"models": []}) as (url, _app, http):
        status, body = await ready(http, url)
    assert status == 503 and body["status"] == "not_ready"
    assert body["checks"]["redis"]["status"] == "error" and body["checks"]["database"]["status"] == "ok"
    assert "hunter2secret" not in str(body)
    # /ready answers anyone: the kind of failure, not where the server is (that goes to the log)
    assert str(port) not in str(body["checks"]) and "127.0.0.1" not in str(body["checks"])


async def test_upstreams_up_and_down(settings: Settings, upstream: FakeUpstream) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    config = {"models": [deployment("up", upstream.url), deployment("down", dead)]}
    async with started(settings, config) as (url, app, http):
        readiness = app.state.readiness
        assert readiness is not None
        status, body = await ready(http, url)
        ups = body["checks"]["upstreams"]
        assert ups["down"]["status"] == "unreachable" and ups["down"]["reachable"] is False and ups["down"]["error"]
        assert ups["up"]["status"] == "ok"
        assert status == 200  # one provider down: the others are still served (ready_upstreams: any)
        readiness.upstreams = "all"
        status, body = await ready(http, url)
        assert status == 503 and body["checks"]["upstreams"]["down"]["status"] == "unreachable"
        readiness.upstreams = "any"
        readiness.probe_ttl = 0.0  # see the next change at once
        await upstream.close()
        status, body = await ready(http, url)
        assert status == 503 and body["checks"]["upstreams"]["up"]["status"] == "unreachable"
        readiness.upstreams = "none"
        status, body = await ready(http, url)
        assert status == 200 and body["checks"]["upstreams"]["up"]["reachable"] is False


async def test_a_failing_upstream_is_reported_cooling_down(settings: Settings, upstream: FakeUpstream) -> None:
    config = {"models": [deployment("gpt", upstream.url)],
              "router": {"num_retries": 0, "allowed_fails": 1, "cooldown": 60}}
    upstream.queue(Reply(status=500, json={"error": {"message": "boom"}}))
    async with started(settings, config) as (url, _app, http):
        r = await http.post(url + "/v1/chat/completions", headers=AUTH,
                            json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code >= 500
        status, body = await ready(http, url)
    gpt = body["checks"]["upstreams"]["gpt"]
    assert status == 200 and gpt["status"] == "cooling_down" and gpt["reachable"] is True
    assert gpt["cooldown_remaining_s"] > 0 and gpt["consecutive_failures"] == 1


async def test_postgresql_at_a_closed_port(settings: Settings) -> None:
    s = settings.model_copy(update={"database_url": f"postgresql://postgres:pw@127.0.0.1:{closed_port()}/x",
                                    "ready_timeout": 2.0})
    app = create_app(s, parse_config({"models": []}))
    readiness = app.state.readiness
    assert readiness is not None
    ok, checks = await readiness.check()
    assert not ok and checks["database"]["status"] == "error" and "pw@" not in str(checks)
    assert "127.0.0.1" not in str(checks) and checks["database"]["error"].isidentifier()
    await readiness.close()
    await app.state.db.close()


async def test_a_hung_database_does_not_hang_ready(settings: Settings) -> None:
    """A server that accepts and never answers: the check gives up after ``ready_timeout``."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    hole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = hole.sockets[0].getsockname()[1]
    s = settings.model_copy(update={"database_url": f"postgresql://postgres@127.0.0.1:{port}/x", "ready_timeout": 0.3})
    app = create_app(s, parse_config({"models": []}))
    assert app.state.readiness is not None
    ok, checks = await asyncio.wait_for(app.state.readiness.check(), 30)
    assert not ok and checks["database"] == {"status": "error", "error": "no answer within 0.3 s",
                                             "latency_ms": checks["database"]["latency_ms"]}
    for w in held:
        w.close()
    hole.close()
    await app.state.db.close()


class Proxy:
    """A TCP proxy to PostgreSQL on loopback that can be cut (PostgreSQL going down under a running server)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        self._server = None


async def test_postgresql_going_down_makes_ready_503(settings: Settings) -> None:
    name, pg_url = await make_empty_pg()
    host_port = PG_ADMIN_URL.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = Proxy((host, int(port)))
    await proxy.start()
    via_proxy = pg_url.replace(host_port, f"127.0.0.1:{proxy.port}")
    try:
        s = settings.model_copy(update={"database_url": via_proxy, "ready_timeout": 2.0})
        async with started(s, {"models": []}) as (url, _app, http):
            status, body = await ready(http, url)
            assert status == 200 and body["checks"]["database"]["status"] == "ok"
            await proxy.cut()
            status, body = await ready(http, url)
            assert status == 503 and body["checks"]["database"]["status"] == "error", body
            assert body["status"] == "not_ready"
    finally:
        await drop_pg(name)


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
