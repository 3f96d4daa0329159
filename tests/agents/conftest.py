"""Real MCP servers for the agents' tests: the reference servers of @modelcontextprotocol (Node.js, installed
from tests/agents/mcp_servers/package-lock.json with ``npm ci`` the first time), ``mcp-server-git`` (Python)
and two servers of our own in tests/agents/mcp_servers/ (one on the SDK, one that misbehaves on purpose)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from thinktank.agents.config import McpServerConfig
from thinktank.agents.mcp_client import McpClients

from ..fakes.clock import FakeClock
from ..fakes.process import free_port
from .mcp_servers.npm import ensure_installed

SERVERS = Path(__file__).parent / "mcp_servers"
RAW_SERVER = SERVERS / "raw_server.py"
SDK_SERVER = SERVERS / "sdk_server.py"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """tests/agents/mcp_servers/node_modules, installed with ``npm ci`` (from the committed lock) if missing."""
    return ensure_installed()


def node_server(modules: Path, package: str, *args: str) -> list[str]:
    """The command line that runs the reference server ``package`` (its dist/index.js, never npx)."""
    node = shutil.which("node")
    assert node is not None
    return [node, str(modules / "@modelcontextprotocol" / package / "dist" / "index.js"), *args]


class Background:
    """A server process on a loopback port, ready once the port accepts connections."""

    def __init__(self, command: list[str], *, port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{command} exited: {log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"{command} did not listen on {port}: {log.read_text(errors='replace')}")
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def everything_urls(node_modules: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """server-everything over streamable HTTP and over SSE (its port comes from ``PORT``): transport → URL."""
    logs = tmp_path_factory.mktemp("everything")
    servers: list[Background] = []
    try:
        urls = {}
        for mode, transport, path in (("streamableHttp", "streamable_http", "/mcp"), ("sse", "sse", "/sse")):
            port = free_port()
            servers.append(Background(node_server(node_modules, "server-everything", mode), port=port,
                                      log=logs / f"{mode}.log", env={"PORT": str(port)}))
            urls[transport] = f"http://127.0.0.1:{port}{path}"
        yield urls
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def sdk_http_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """sdk_server.py over streamable HTTP (it speaks 2026-07-28)."""
    port = free_port()
    server = Background([sys.executable, str(SDK_SERVER), "http", str(port)], port=port,
                        log=tmp_path_factory.mktemp("sdk") / "server.log")
    yield f"http://127.0.0.1:{port}/mcp"
    server.stop()


@pytest.fixture
async def mcp_clients(clock: FakeClock) -> AsyncIterator[Callable[..., McpClients]]:
    """Makes :class:`McpClients` for the given servers (closed after the test)."""
    made: list[McpClients] = []

    def make(*servers: McpServerConfig, retry_after: float = 10.0) -> McpClients:
        clients = McpClients(servers, clock=clock, retry_after=retry_after)
        made.append(clients)
        return clients

    yield make
    for clients in made:
        await clients.close()


def raw_server(name: str = "raw", **options: object) -> McpServerConfig:
    return McpServerConfig.model_validate({"name": name, "command": [sys.executable, str(RAW_SERVER)], **options})


def sdk_server(name: str = "sdk", **options: object) -> McpServerConfig:
    return McpServerConfig.model_validate({"name": name, "command": [sys.executable, str(SDK_SERVER)], **options})


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts: it was not reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children(marker: str) -> list[int]:
    """This process's child processes whose command line contains ``marker`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and marker in cmdline:
            found.append(int(entry.name))
    return found
