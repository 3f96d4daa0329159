from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from thinktank.providers._http import HttpClient
from thinktank.providers.base import ProviderContext
from thinktank.store.db import Database

from .fakes import openai as openai_fmt
from .fakes.clock import FakeClock
from .fakes.process import Server, clean_env
from .fakes.upstream import FakeUpstream, served_in_thread

if TYPE_CHECKING:
    from thinktank.knowledge.embeddings import LocalEmbedder


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any connection that is not to loopback: no test reaches the internet."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"test tried to reach {host}: only loopback is allowed")
        return real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def local_embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEmbedder]:
    """The real local model (int8), built once per test session."""
    from thinktank.knowledge.embeddings import LocalEmbedder

    embedder = LocalEmbedder(Path(tmp_path_factory.mktemp("data")) / "models")  # where the CLI looks
    yield embedder
    embedder.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    yield client
    await client.close()


@pytest.fixture
def ctx(http: HttpClient, clock: FakeClock) -> ProviderContext:
    return ProviderContext(http=http, clock=clock)


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(openai_fmt.default_handler)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def fake_ollama_url() -> Iterator[str]:
    """A thread-served fake of Ollama's /api/tags (discovery probes it synchronously)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"models": [{"name": "llama3.2:latest", "size": 1}]}).encode()
            self.send_response(200 if self.path == "/api/tags" else 404)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def fake_upstream_thread() -> Iterator[str]:
    """The OpenAI fake served from its own thread and loop, for tests that run thinktank as a process."""
    with served_in_thread(openai_fmt.default_handler) as fake:
        yield fake.url


def _run_in_thread(coro: Any) -> Any:
    """Run a coroutine to completion on a loop of its own (callable from inside a running loop)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    from .fakes.databases import drop_pg, make_pg_template

    name: str = _run_in_thread(make_pg_template())
    yield name
    _run_in_thread(drop_pg(name))


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated, empty database: SQLite file, then a real PostgreSQL database."""
    from .fakes.databases import clone_pg, drop_pg, make_sqlite

    if request.param == "sqlite":
        import asyncio

        yield await asyncio.to_thread(make_sqlite, tmp_path)
        return
    template = request.getfixturevalue("pg_template")
    name, url = await clone_pg(template)
    try:
        yield url
    finally:
        await drop_pg(name)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    yield database
    await database.close()


@pytest.fixture
async def redis_url() -> str:
    """The local Redis, with a key prefix of this test's own (it is shared with other tests)."""
    import redis.asyncio as aioredis

    url = os.environ.get("THINKTANK_TEST_REDIS", "redis://127.0.0.1:6379/0")
    client = aioredis.from_url(url)
    try:
        await client.ping()
    except OSError as exc:
        raise RuntimeError(f"Redis is needed for these tests and does not answer at {url} ({exc})") from exc
    finally:
        await client.aclose()
    return url


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clean_env(tmp_path)


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[type[Server]]:
    started: list[Server] = []

    class Tracked(Server):
        def __init__(self, args: list[str], env: dict[str, str]) -> None:
            super().__init__(args, env)
            started.append(self)

    yield Tracked
    for s in started:
        if s.proc.poll() is None:
            s.stop()


