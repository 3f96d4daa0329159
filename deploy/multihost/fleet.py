"""A simulated multi-host deployment of thinktank on one machine, as a library.

``with fleet(root) as f:`` starts

- PostgreSQL (a private PostgreSQL 16 with pgvector that ``f.db`` can stop and start, or a fresh database on a
  server given by URL) and Redis (a private ``redis-server``, or one given by URL);
- an upstream: ``thinktank mock-upstream``, unless one is given (a test's fake);
- N ``thinktank serve`` processes, the "hosts", each with its own port, data directory and ``HOME``, all with
  the same config file, admin key, database and Redis;
- HAProxy in front of them (``haproxy.cfg``: round robin, health checks on ``/ready``, SSE-friendly timeouts,
  connection failures retried on another host);

and yields a :class:`Fleet`: the load balancer's URL, the admin key, each host (``kill(i)``, ``stop(i)``,
``start(i)``), the database and Redis handles, HAProxy's view of the hosts. Everything stops when the block ends.
``deploy/multihost/run.py`` is the command-line face of it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import httpx

from deploy.multihost.services import (
    HERE,
    Database,
    ExternalPostgres,
    ExternalRedis,
    HAProxy,
    MockUpstream,
    PrivatePostgres,
    PrivateRedis,
    Redis,
    ServiceError,
    free_port,
    wait_for,
)

__all__ = ["Fleet", "Host", "ServiceError", "fleet", "render_config"]

#: Seconds a host may take to answer /ready 200 (imports, migrations; several hosts start at once on few cores).
START_TIMEOUT = 90.0


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(eq=False)
class Host:
    """One ``thinktank serve`` process: its own port, data directory and ``HOME``; ``server.log`` its output."""

    index: int
    """1-based, as HAProxy names it (``host1`` ...)."""
    port: int
    home: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _prefix: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"host{self.index}"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        """Start the process (without waiting for it: see :meth:`wait_ready`)."""
        if self.alive:
            raise ServiceError(f"{self.name} is already running")
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "thinktank", "serve"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self._prefix = None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            if not self.alive:
                raise ServiceError(f"{self.name} exited (code {self.proc.returncode if self.proc else None}); "
                                   f"its log: {self.log}\n{self.log.read_text()[-3000:]}")
            return _ready(self.url)

        wait_for(ready, f"{self.name} to be ready", timeout, interval=0.2)

    def request_prefix(self) -> str:
        """What every ``x-request-id`` this process makes starts with (a random prefix per process): tells which
        host served a response that came through the load balancer."""
        if self._prefix is None:
            rid = httpx.get(self.url + "/health", timeout=5).headers["x-request-id"]
            self._prefix = rid.rsplit("-", 1)[0] + "-"
        return self._prefix

    def kill(self) -> None:
        """``kill -9``: no shutdown at all (what a crashed host or a lost machine looks like to the others)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM: a graceful stop (requests finish, runs are recorded, leases handed back). Its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@dataclass
class Fleet:
    lb: HAProxy
    hosts: list[Host]
    db: Database
    redis: Redis
    admin_key: str
    admin_email: str
    admin_password: str
    upstream_url: str
    config: Path
    root: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The load balancer: where clients go."""
        return self.lb.url

    @property
    def db_url(self) -> str:
        return self.db.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def host(self, i: int) -> Host:
        """Host ``i`` (0-based index into :attr:`hosts`)."""
        return self.hosts[i]

    def kill(self, i: int, *, wait_lb: bool = True) -> None:
        """``kill -9`` host ``i``; with ``wait_lb``, until HAProxy has taken it out."""
        self.hosts[i].kill()
        if wait_lb:
            self.lb.wait_state(self.hosts[i].name, "DOWN")

    def stop(self, i: int, *, wait_lb: bool = True) -> int | None:
        """Stop host ``i`` gracefully (SIGTERM); its exit code."""
        code = self.hosts[i].stop()
        if wait_lb:
            self.lb.wait_state(self.hosts[i].name, "DOWN")
        return code

    def start(self, i: int, *, wait_lb: bool = True) -> None:
        """(Re)start host ``i`` on its port with its data directory; until it is ready (and back in HAProxy)."""
        host = self.hosts[i]
        host.launch()
        host.wait_ready()
        if wait_lb:
            self.lb.wait_state(host.name, "UP")

    def served_by(self, response: httpx.Response) -> Host | None:
        """The host whose process made ``response`` (by its ``x-request-id``), if one of the running ones did."""
        rid = response.headers.get("x-request-id", "")
        return next((h for h in self.hosts if h.alive and rid.startswith(h.request_prefix())), None)

    def restart(self, i: int) -> None:
        self.hosts[i].kill()
        self.start(i)

    def wait_all_up(self, timeout: float = 60) -> None:
        """Until every host is ready and HAProxy sees each of them UP."""
        for host in self.hosts:
            host.wait_ready(timeout)
        for host in self.hosts:
            self.lb.wait_state(host.name, "UP", timeout)

    def logs(self) -> str:
        """The end of every host's log (for a failing test's message)."""
        return "\n".join(f"== {h.name} ==\n{h.log.read_text()[-4000:] if h.log.exists() else ''}" for h in self.hosts)


def _stop_all(hosts: list[Host], timeout: float = 60) -> None:
    """SIGTERM to every host at once, then wait for each (a graceful stop writes usage and hands leases back)."""
    for host in hosts:
        if host.alive and host.proc is not None:
            host.proc.terminate()
    for host in hosts:
        host.stop(timeout)


def render_config(upstream_url: str, template: str | None = None) -> str:
    """The hosts' config: ``template`` (default ``deploy/multihost/thinktank.yaml``) with ``$upstream`` filled in."""
    text = template if template is not None else (HERE / "thinktank.yaml").read_text()
    return Template(text).safe_substitute(upstream=upstream_url.rstrip("/"))


def _host_env(base: Mapping[str, str], home: Path, port: int, shared: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("THINKTANK_")}
    return {**env, **shared, "HOME": str(home), "THINKTANK_DATA_DIR": str(home / "data"),
            "THINKTANK_HOST": "127.0.0.1", "THINKTANK_PORT": str(port)}


@contextmanager
def fleet(
    root: Path,
    *,
    hosts: int = 3,
    database: str | None = None,
    redis: str | None = None,
    upstream: str | None = None,
    config: str | None = None,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    admin_key: str | None = None,
    lb_bind: str = "127.0.0.1",
    lb_port: int | None = None,
) -> Iterator[Fleet]:
    """Start the deployment under ``root`` (each host's home, the config, the logs); stop it all at the end.

    ``database``: None for a private PostgreSQL (which can be stopped), or an admin URL of a server on which a fresh
    database is made (and dropped). ``redis``: None for a private ``redis-server``, or a URL. ``upstream``: a base
    URL (``http://127.0.0.1:PORT``) or None for ``thinktank mock-upstream``. ``config``: the hosts' YAML config,
    ``$upstream`` replaced (default ``deploy/multihost/thinktank.yaml``). ``env``: more settings for every host
    (``THINKTANK_*``); ``base_env``: the environment they start from (default this process's, without its
    ``THINKTANK_*``)."""
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        db: Database = ExternalPostgres(database) if database else PrivatePostgres()
        stack.callback(db.close)
        shared_redis: Redis = ExternalRedis(redis) if redis else PrivateRedis()
        stack.callback(shared_redis.close)
        if upstream is None:
            mock = MockUpstream(root)
            stack.callback(mock.close)
            upstream = mock.url
        config_path = root / "thinktank.yaml"
        config_path.write_text(render_config(upstream, config))
        key = admin_key or f"tt-admin-{secrets.token_hex(16)}"
        email, password = "admin@example.com", secrets.token_urlsafe(12)
        shared = {
            "THINKTANK_DATABASE_URL": db.url, "THINKTANK_REDIS_URL": shared_redis.url,
            "THINKTANK_CONFIG": str(config_path), "THINKTANK_ADMIN_KEY": key,
            "THINKTANK_ADMIN_EMAIL": email, "THINKTANK_ADMIN_PASSWORD": password,
            # The load balancer's address: thinktank takes the client's from its X-Forwarded-For.
            "FORWARDED_ALLOW_IPS": "127.0.0.1",
            **(env or {}),
        }
        members = []
        for i in range(1, hosts + 1):
            home = root / f"host{i}"
            home.mkdir(exist_ok=True)
            port = free_port()
            members.append(Host(i, port, home, _host_env(os.environ if base_env is None else base_env, home, port,
                                                         shared)))
        stack.callback(_stop_all, members)
        started = time.monotonic()
        for host in members:  # all at once, as replicas do: they take turns migrating the fresh database
            host.launch()
        for host in members:
            host.wait_ready(START_TIMEOUT - (time.monotonic() - started) + 5)
        lb = HAProxy(root, [h.port for h in members], bind=lb_bind, port=lb_port)
        stack.callback(lb.close)
        made = Fleet(lb=lb, hosts=members, db=db, redis=shared_redis, admin_key=key, admin_email=email,
                     admin_password=password, upstream_url=upstream, config=config_path, root=root)
        made.wait_all_up()
        yield made
