"""``thinktank serve --workers 2``: whichever worker answers a scrape gives the totals of both; a worker that
dies keeps its counts and loses its live gauges; the metrics port is shared by the workers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector

from ..fakes.process import Server, free_port
from .scrape import Scrape, parse

TOKEN = "scrape-token-0123456789abcdef"
ADMIN = "adm-key-0123456789"


def config(tmp_path: Path, upstream: str) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "models:\n"
        f"  - {{name: m, provider: openai, base_url: '{upstream}/v1', api_key: x, input_price: 1, output_price: 2}}\n"
        "  - {name: down, provider: openai, base_url: 'http://127.0.0.1:9/v1', api_key: x}\n"
        "router: {num_retries: 0, allowed_fails: 1, cooldown: 600, timeout: 5}\n"
    )
    return cfg


async def fire(url: str, model: str, n: int, concurrency: int = 8) -> list[int]:
    """``n`` chat requests, each on a connection of its own (so that both workers take some)."""
    limit = asyncio.Semaphore(concurrency)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}

    async def one() -> int:
        async with limit, httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            r = await c.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
            return r.status_code

    return list(await asyncio.gather(*(one() for _ in range(n))))


def scrape(url: str) -> Scrape:
    r = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    return parse(r.text)


def served_by_pid(directory: Path) -> dict[int, float]:
    """Requests counted in each process's own file."""
    out: dict[int, float] = {}
    for f in directory.glob("counter_*.db"):
        pid = int(f.stem.split("_")[1])
        for metric in MultiProcessCollector.merge([str(f)]):  # type: ignore[no-untyped-call]
            for s in metric.samples:
                if s.name == "thinktank_requests_total":
                    out[pid] = out.get(pid, 0) + s.value
    return out


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_for(check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_two_workers_report_the_totals_of_both(server: type[Server], env: dict[str, str], tmp_path: Path,
                                               fake_upstream_thread: str) -> None:
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"a previous run")  # emptied at start
    srv = server(["--workers", "2"], {**env, "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_METRICS_TOKEN": TOKEN,
                                      "THINKTANK_CONFIG": str(config(tmp_path, fake_upstream_thread)),
                                      "PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert not (directory / "counter_999999.db").exists()
    codes = asyncio.run(fire(srv.url, "m", 160))
    assert codes == [200] * 160
    down = asyncio.run(fire(srv.url, "down", 24))
    assert down == [502] * 24
    # Each worker adds its counts to its files every second (and at a scrape it answers).
    wait_for(lambda: sum(served_by_pid(directory).values()) == 184)
    workers = {pid: n for pid, n in served_by_pid(directory).items() if n}
    assert len(workers) == 2, workers  # both workers answered some

    for _ in range(8):  # each scrape on a connection of its own: either worker may answer
        m = scrape(srv.url + "/metrics")
        assert m.value("thinktank_requests_total", model="m", status="200") == 160
        assert m.value("thinktank_requests_total", model="down", status="502") == 24
        assert m.value("thinktank_tokens_total", model="m") > 0
        assert m.value("thinktank_request_duration_seconds_count", model="m") == 160
        assert m.value("thinktank_request_duration_seconds_bucket", model="m", le="+Inf") == 160
        assert m.value("thinktank_upstream_duration_seconds_count", deployment="m") == 160
        assert m.value("thinktank_upstream_failures_total", deployment="down", reason="connection") == 24
    cooling = [pid for pid in workers if (directory / f"gauge_livemax_{pid}.db").exists()]
    assert cooling, "a worker that saw 'down' fail keeps its cooldown in a live gauge"

    # A worker killed outright: uvicorn starts another; the dead one's counts stay, its live gauges go.
    dead = cooling[0]
    os.kill(dead, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{dead}").exists())  # reaped by uvicorn, which starts another
    wait_for(lambda: httpx.get(srv.url + "/ready", timeout=2).status_code == 200)
    m = scrape(srv.url + "/metrics")
    assert m.value("thinktank_requests_total", model="m", status="200") == 160
    assert m.value("thinktank_requests_total", model="down", status="502") == 24
    assert not (directory / f"gauge_livemax_{dead}.db").exists()
    assert (directory / f"counter_{dead}.db").exists()
    srv.stop()


def test_workers_share_the_metrics_port(server: type[Server], env: dict[str, str], tmp_path: Path,
                                        fake_upstream_thread: str) -> None:
    port = free_port()
    srv = server(["--workers", "2"], {**env, "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_METRICS_TOKEN": TOKEN,
                                      "THINKTANK_METRICS_PORT": str(port),
                                      "THINKTANK_CONFIG": str(config(tmp_path, fake_upstream_thread))})
    assert asyncio.run(fire(srv.url, "m", 60)) == [200] * 60
    # The directory serve made for this start (in the workers' environment), removed when it stops.
    made = set()
    for pid in children(srv.proc.pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        made |= {e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")}
    assert len(made) == 1
    directory = Path(made.pop())
    assert directory.is_dir() and directory.name.startswith("thinktank-metrics-")
    wait_for(lambda: sum(served_by_pid(directory).values()) == 60)
    assert len({pid for pid, n in served_by_pid(directory).items() if n}) == 2
    for _ in range(8):
        m = scrape(f"http://127.0.0.1:{port}/metrics")
        assert m.value("thinktank_requests_total", model="m", status="200") == 60
    assert httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    srv.stop()
    assert not directory.exists()
