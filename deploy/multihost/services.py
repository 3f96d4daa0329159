"""What the simulated hosts share, each run as a real server on loopback: PostgreSQL (a private one that can be
stopped and started again, or a fresh database on a server given by URL), Redis (likewise), HAProxy, and a mock
upstream. Each has ``close()``; the private ones also ``stop()`` and ``start()`` (an outage and its end).

The private PostgreSQL is PostgreSQL 16 with pgvector from the ``pgserver`` package (its binaries; thinktank's
dev extras install it), listening on a loopback TCP port that stays the same across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Coroutine
from pathlib import Path
from string import Template
from typing import Any, Literal, Protocol

__all__ = [
    "HERE",
    "Database",
    "ExternalPostgres",
    "ExternalRedis",
    "HAProxy",
    "MockUpstream",
    "PrivatePostgres",
    "PrivateRedis",
    "Redis",
    "ServiceError",
    "free_port",
    "wait_for",
]

HERE = Path(__file__).resolve().parent
"""deploy/multihost: the templates (haproxy.cfg, thinktank.yaml) and HAProxy's error files.

Every process here starts in a session of its own: a Ctrl-C in the terminal reaches the script alone, which then
stops them in order (the hosts first, while the database they write their last usage rows to still runs)."""


class ServiceError(RuntimeError):
    """A shared service did not start, or cannot do what was asked (a server it does not own cannot be stopped)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, timeout: float, interval: float = 0.1) -> None:
    """Until ``check()`` is true, or a :class:`ServiceError` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ServiceError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def _accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a loop of its own in a thread: callable from plain code and from inside a running loop."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = asyncio.run(coro)
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


async def _pg_execute(url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


class Database(Protocol):
    url: str
    """What the hosts get as ``THINKTANK_DATABASE_URL``."""

    @property
    def running(self) -> bool: ...
    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None: ...
    def start(self) -> None: ...
    def close(self) -> None: ...


class Redis(Protocol):
    url: str

    @property
    def running(self) -> bool: ...
    def stop(self) -> None: ...
    def start(self) -> None: ...
    def close(self) -> None: ...


class PrivatePostgres:
    """A PostgreSQL 16 (with pgvector) of its own, in a fresh data directory, with a database ``thinktank``.

    ``stop("fast")`` ends every session (clients see ``AdminShutdownError``), ``stop("immediate")`` kills the
    server as a crash would; ``start()`` brings it back on the same port. As root, PostgreSQL runs as the user
    ``pgserver`` (made if missing, as the pgserver package does)."""

    def __init__(self, *, database: str = "thinktank") -> None:
        with warnings.catch_warnings():  # importing pgserver warns when XDG_RUNTIME_DIR is not set (unused here)
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH

        self._bin = Path(POSTGRES_BIN_PATH)
        # Not under a private temporary folder (pytest's is 0700): the server's user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="tt-multihost-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.port = free_port()
        self._user: str | None = None
        if os.geteuid() == 0:
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            entry = ensure_user_exists("pgserver")
            assert entry is not None
            ensure_prefix_permissions(self._bin)
            self.data.mkdir()
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
            self._user = "pgserver"
        self._pg("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--encoding=utf8", "--no-sync")
        self.start()
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        _run_coroutine(_pg_execute(admin, f'CREATE DATABASE "{database}"'))
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _pg(self, program: str, *args: str) -> None:
        done = subprocess.run(  # noqa: S603 (our arguments)
            [str(self._bin / program), *args], user=self._user, capture_output=True, text=True, check=False,
            timeout=60, start_new_session=True)
        if done.returncode != 0:
            raise ServiceError(f"{program} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        # Loopback TCP, the socket in the data directory; fsync off (a throw-away server); room for every host's pool.
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.data} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=300")
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-t", "30",
                 "-o", options, "start")

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "-m", mode, "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        if self.running:
            with contextlib.suppress(ServiceError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class ExternalPostgres:
    """A fresh database on a server given by an admin URL (``postgresql://postgres@127.0.0.1:5432/postgres``),
    dropped at ``close()``. The server is not ours: it cannot be stopped."""

    def __init__(self, admin_url: str) -> None:
        self._admin = admin_url
        self.name = f"tt_multihost_{secrets.token_hex(4)}"
        _run_coroutine(_pg_execute(admin_url, f'CREATE DATABASE "{self.name}"'))
        self.url = admin_url.rsplit("/", 1)[0] + "/" + self.name

    @property
    def running(self) -> bool:
        return True

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        raise ServiceError("the database server was given by URL: only a private PostgreSQL can be stopped")

    def start(self) -> None:
        raise ServiceError("the database server was given by URL: only a private PostgreSQL can be started")

    def close(self) -> None:
        _run_coroutine(_pg_execute(self._admin, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


def _redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class PrivateRedis:
    """A ``redis-server`` of its own on a loopback port, keeping nothing on disk: ``stop()`` kills it (its counters
    go with it), ``start()`` brings an empty one back on the same port."""

    def __init__(self, executable: str = "redis-server") -> None:
        found = shutil.which(executable)
        if found is None:
            raise ServiceError(f"{executable} not found: install Redis (Debian: apt-get install redis-server) or "
                               "give a Redis URL")
        self._exe = found
        self.root = Path(tempfile.mkdtemp(prefix="tt-multihost-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = (self.root / "redis.log").open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 (our arguments)
            [self._exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.root)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: _redis_pings(self.port), f"redis-server on port {self.port}", 15)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.running and self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class ExternalRedis:
    """A Redis server given by URL: shared, not ours to stop (every key thinktank writes is under ``tt``)."""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def running(self) -> bool:
        return True

    def stop(self) -> None:
        raise ServiceError("Redis was given by URL: only a private Redis can be stopped")

    def start(self) -> None:
        raise ServiceError("Redis was given by URL: only a private Redis can be started")

    def close(self) -> None:
        return None


class MockUpstream:
    """``thinktank mock-upstream``: an OpenAI-compatible fake (answers echo the question) as a process."""

    def __init__(self, root: Path, *, latency: float = 0.0, stream_delay: float = 0.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = (root / "mock-upstream.log").open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 (our arguments)
            [sys.executable, "-m", "thinktank", "mock-upstream", "--port", str(self.port), "--latency", str(latency),
             "--stream-delay", str(stream_delay)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: _accepts(self.port), "the mock upstream", 30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


ServerState = str
"""HAProxy's view of a server: ``UP``, ``DOWN``, ``UP 1/2`` (going down), ``DOWN 1/2`` (coming up), ``no check``."""


class HAProxy:
    """HAProxy (Debian's ``haproxy``) in the foreground with ``haproxy.cfg`` rendered for ``ports``."""

    def __init__(self, root: Path, ports: list[int], *, bind: str = "127.0.0.1", port: int | None = None,
                 executable: str = "haproxy") -> None:
        found = shutil.which(executable) or (f"/usr/sbin/{executable}" if Path(f"/usr/sbin/{executable}").exists()
                                             else None)
        if found is None:
            raise ServiceError("haproxy not found: install it (Debian: apt-get install haproxy)")
        self._exe = found
        self.port = port or free_port()
        self.stats_port = free_port()
        self.url = f"http://{'127.0.0.1' if bind in ('0.0.0.0', '::') else bind}:{self.port}"  # noqa: S104
        self.config = root / "haproxy.cfg"
        self.config.write_text(render_haproxy(ports, bind=bind, port=self.port, stats_port=self.stats_port))
        checked = subprocess.run([self._exe, "-c", "-q", "-f", str(self.config)],  # noqa: S603 (our arguments)
                                 capture_output=True, text=True, check=False)
        if checked.returncode != 0:
            raise ServiceError(f"haproxy refuses {self.config}: {checked.stderr.strip()}")
        self._log = root / "haproxy.log"
        log = self._log.open("ab")
        self.proc = subprocess.Popen([self._exe, "-db", "-f", str(self.config)],  # noqa: S603 (our arguments)
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self.proc.poll() is None and _accepts(self.stats_port), "HAProxy", 15)

    def states(self) -> dict[str, ServerState]:
        """Each server's state in the backend (``host1`` ... and the unchecked backups ``host1-open`` ...)."""
        import httpx

        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: r["status"] for r in rows
                if r["pxname"] == "thinktank" and r["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_state(self, server: str, state: str, timeout: float = 30) -> None:
        """Until HAProxy reports ``server`` as ``state`` (``UP`` or ``DOWN``)."""
        wait_for(lambda: self.states().get(server) == state, f"HAProxy to see {server} {state}", timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def render_haproxy(ports: list[int], *, bind: str = "127.0.0.1", port: int = 8000, stats_port: int = 8404,
                   errors: Path | None = None) -> str:
    """``haproxy.cfg`` for hosts on ``ports`` (on loopback): ``host1`` ... checked, ``host1-open`` ... as backups."""
    servers = "\n".join(f"    server host{i} 127.0.0.1:{p} check" for i, p in enumerate(ports, 1))
    backups = "\n".join(f"    server host{i}-open 127.0.0.1:{p} backup" for i, p in enumerate(ports, 1))
    template = Template((HERE / "haproxy.cfg").read_text())
    return template.substitute(servers=servers, backups=backups, bind=bind, lb_port=port, stats_port=stats_port,
                               errors=errors or HERE / "errors")
