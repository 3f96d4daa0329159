"""What the benchmarks that start their own thinktank servers share: an nginx fake upstream on a port of the
script's own, a server started and waited for, the admin API, CPU time from /proc, wrk and hey runs.

Scripts import it from beside themselves (``from harness import ...``); it is not part of the package.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "bench" / "thinktank-bench.yaml"
ADMIN = "sk-bench-admin-0123456789"
SHARED_BENCH = ROOT.parent / "shared" / "bench" / "gateway_bench.py"


def start_upstream(completion: dict[str, Any], work: Path, port: int) -> Path:
    """nginx answering ``completion`` at once on ``port``; returns a copy of the bench config pointing there."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon on;
pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_buffer_size 64k;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  server {{
    listen 127.0.0.1:{port};
    default_type application/json;
    location = /v1/chat/completions {{ return 200 '{json.dumps(completion, separators=(",", ":"))}'; }}
  }}
}}
""")
    subprocess.run(["nginx", "-c", str(conf)], check=True)
    config = work / "thinktank-bench.yaml"
    config.write_text(CONFIG.read_text().replace("127.0.0.1:18080", f"127.0.0.1:{port}"))
    return config


def stop_upstream(work: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((work / "nginx.pid").read_text().strip()), signal.SIGQUIT)


def api(port: int, method: str, path: str, body: object | None = None, key: str = ADMIN) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
        return json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw.decode()


@dataclass
class Started:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # a clean stop flushes the usage rows
        self.proc.wait(60)


def start_server(port: int, data_dir: Path, config: Path, *, workers: int = 1, env: dict[str, str] | None = None,
                 pin: list[str] | None = None) -> Started:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("THINKTANK_", "PROMETHEUS_"))}
    clean.update({"THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATA_DIR": str(data_dir), **(env or {})})
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [*(pin or []), sys.executable, "-m", "thinktank", "serve", "--config", str(config), "--port", str(port),
         "--workers", str(workers), "--log-level", "warning"], env=clean, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=open(data_dir / "server.log", "w"),  # noqa: SIM115
    )
    for _ in range(600):
        if proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1)
            time.sleep(1.5 if workers > 1 else 0)  # the other workers too
            return Started(proc, port, data_dir)
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"thinktank did not start on port {port}; see {data_dir / 'server.log'}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (uvicorn's workers)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.append(int(stat.parent.name))
    return pids


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its children (the workers)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wrk(port: int, lua: Path, seconds: float, conc: int, pin: list[str] | None = None,
        threads: int = 1) -> tuple[float, int, int]:
    """(req/s, requests completed, non-2xx) of one wrk run."""
    out = subprocess.run(
        [*(pin or []), "wrk", f"-t{threads}", f"-c{conc}", f"-d{max(1, round(seconds))}s", "-s", str(lua),
         f"http://127.0.0.1:{port}/v1/chat/completions"], capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(x) for x in errors.groups()) if errors else 0
    return rps, total, (int(bad.group(1)) if bad else 0) + socket_errors


def shared_module(path: Path = SHARED_BENCH) -> Any:
    """The shared gateway benchmark as a module (its fake completion, Lua script writer, tool checks)."""
    import importlib.util

    Path("/tmp/gateway_bench").mkdir(exist_ok=True)  # where its Lua scripts go
    spec = importlib.util.spec_from_file_location("gateway_bench", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
