#!/usr/bin/env python3
"""What alerts cost a governed request: two servers side by side, the same except that one has an ``alerts:``
section, each serving a virtual key with a budget on a priced model (every request reserves and settles), wrk at
c=32 on each in turn (A B, B A, A B, ...).

    python bench/alerts.py                      # 8 rounds of 5 s per server, SQLite
    python bench/alerts.py --rounds 4 --seconds 4
    python bench/alerts.py --control            # the same pair with alerts on neither: the noise of the pair

The alerting server's thresholds are 20 tiny fractions of the key's $1,000,000 budget (a millionth, two
millionths, ...), so alerts are crossed, claimed and delivered (to a webhook receiver in this script, which
checks each signature) while the load runs, and never refuse a request. Reported: requests/s and the server's
CPU time per request (from /proc) of each run, the median of the per-round ratio alerts/no-alerts, and how many
alerts arrived. The upstream is an nginx of this script's own (on 18425) answering the fixed completion of
../shared/bench/gateway_bench.py, whose helpers install nginx and wrk.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from governance import cpu_seconds

from gateway import shared_module  # bench/gateway.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "sk-bench-admin-0123456789"
PORTS = {"plain": 18420, "alerts": 18421}
UPSTREAM_PORT = 18425
SECRET = "bench-webhook-secret"


def start_upstream(shared: Any, work: Path) -> Path:
    """An nginx of this script's own (the shared one on 18080 is started and stopped by other benchmarks), answering
    the shared benchmark's fixed completion at once; returns its pid file."""
    shared.need("nginx", "nginx-light")
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon on;
pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  server {{
    listen 127.0.0.1:{UPSTREAM_PORT};
    default_type application/json;
    location = /v1/chat/completions {{ return 200 '{json.dumps(shared.COMPLETION, separators=(",", ":"))}'; }}
  }}
}}
""")
    subprocess.run(["nginx", "-c", str(conf)], check=True)
    time.sleep(0.3)
    return work / "nginx.pid"


class Receiver(BaseHTTPRequestHandler):
    good = 0
    bad = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        parts = dict(p.split("=", 1) for p in self.headers.get("x-thinktank-signature", "").split(",") if "=" in p)
        want = hmac.new(SECRET.encode(), f"{parts.get('t', '')}.".encode() + body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(want, parts.get("v1", ""))
        if ok:
            Receiver.good += 1
        else:
            Receiver.bad += 1
        self.send_response(204 if ok else 401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def config(alerts: bool, hook: str) -> dict[str, Any]:
    base: dict[str, Any] = yaml.safe_load((ROOT / "bench" / "thinktank-bench.yaml").read_text())
    for model in base["models"]:
        model["base_url"] = f"http://127.0.0.1:{UPSTREAM_PORT}/v1"
    if alerts:
        base["alerts"] = {"budget_thresholds": [i / 1_000_000 for i in range(1, 21)],
                          "webhook": {"url": hook, "secret_env": "BENCH_ALERT_SECRET"}}
    return base


def start(name: str, data_dir: Path, hook: str, control: bool) -> subprocess.Popen[bytes]:
    path = data_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config(name == "alerts" and not control, hook)))
    env = {**os.environ, "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATA_DIR": str(data_dir),
           "THINKTANK_DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'thinktank.db'}",
           "BENCH_ALERT_SECRET": SECRET}
    env.pop("THINKTANK_REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktank", "serve", "--config", str(path), "--port", str(PORTS[name]),
         "--log-level", "warning"], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=open(data_dir / "server.log", "w"),  # noqa: SIM115
    )
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORTS[name]}/ready", timeout=1)
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"thinktank did not start; see {data_dir / 'server.log'}")


def make_key(port: int) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/keys", method="POST", data=json.dumps({
            "name": "bench", "budget_usd": 1_000_000, "budget_period": "day"}).encode(),
        headers={"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.loads(resp.read())["key"])


def wrk(lua: Path, port: int, seconds: int) -> tuple[float, int, int]:
    import re

    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(lua),
                          f"http://127.0.0.1:{port}/v1/chat/completions"], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, total, int(bad.group(1)) if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway-bench", type=Path, default=ROOT.parent / "shared" / "bench" / "gateway_bench.py")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--control", action="store_true", help="alerts on neither server (the pair's own noise)")
    a = ap.parse_args()
    shared = shared_module(a.gateway_bench)
    shared.need("wrk", "wrk")
    nginx_pid = start_upstream(shared, Path(tempfile.mkdtemp(prefix="tt-alerts-bench-nginx-")))
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/alerts"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    rps: dict[str, list[float]] = {"plain": [], "alerts": []}
    cpu: dict[str, list[float]] = {"plain": [], "alerts": []}
    bad = 0
    try:
        for name in PORTS:
            procs[name] = start(name, Path(tempfile.mkdtemp(prefix=f"tt-alerts-bench-{name}-")), hook, a.control)
        luas = {name: shared.lua_script([f"Authorization: Bearer {make_key(port)}"], "fake-priced", False)
                for name, port in PORTS.items()}
        for name, port in PORTS.items():  # warm-up
            wrk(luas[name], port, 2)
        for round_no in range(a.rounds):
            order = ["plain", "alerts"] if round_no % 2 == 0 else ["alerts", "plain"]
            for name in order:
                c0 = cpu_seconds(procs[name].pid)
                r, total, b = wrk(luas[name], PORTS[name], a.seconds)
                cpu[name].append((cpu_seconds(procs[name].pid) - c0) / total * 1e6)
                rps[name].append(r)
                bad += b
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        os.kill(int(nginx_pid.read_text().strip()), signal.SIGQUIT)
        receiver.shutdown()
    ratio = statistics.median(y / x for x, y in zip(rps["plain"], rps["alerts"], strict=True))
    cpu_ratio = statistics.median(y / x for x, y in zip(cpu["plain"], cpu["alerts"], strict=True))
    print(json.dumps({"rps": rps, "cpu_us": cpu, "non2xx": bad, "alerts_received": Receiver.good,
                      "bad_signatures": Receiver.bad}))
    print(f"\n{'server':<8} {'req/s (median)':>15} {'cpu/req (median)':>17}")
    for name in PORTS:
        print(f"{name:<8} {statistics.median(rps[name]):>15.0f} {statistics.median(cpu[name]):>14.0f} us")
    print(f"alerts/plain: req/s {ratio:.3f}, cpu/req {cpu_ratio:.3f} (medians of per-round ratios); "
          f"non-2xx {bad}; alerts received {Receiver.good} (bad signatures {Receiver.bad})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
