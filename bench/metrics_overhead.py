#!/usr/bin/env python3
"""What the Prometheus metrics cost the gateway (issue 16): the same server with metrics on and off, side by side.

    python bench/metrics_overhead.py                       # one worker each, 8 rounds of 5 s at c=32
    python bench/metrics_overhead.py --workers 2 --rounds 6  # prometheus_client's multiprocess mode (files)

Two thinktank servers run at once on the config of bench/thinktank-bench.yaml, each with its own SQLite data
directory: one with ``THINKTANK_METRICS=true``, one with ``false`` (nothing else differs). Both are called
through a virtual key with a budget and request/token rate limits on ``fake-priced``, so every request takes a
budget hold, settles it and writes a usage row (governance on, as in bench/governance.py). An nginx fake
upstream answers at once with the completion of ../shared/bench/gateway_bench.py, on a port of this script's
own (other benchmarks on a shared machine start and stop the shared one on 18080); wrk drives c=32. The runs
alternate (on, off, off, on, on, off, ...) so that the drift of a shared machine hits both alike; the idle
server waits while the other runs. Reported: the median req/s of each, the median over rounds of the per-round
ratio on/off, and the server's CPU time per request (from /proc, the workers included), which the load of
other tenants disturbs much less than req/s. Afterwards the metrics server is scraped: its request count must
be the number of requests its usage table recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import harness  # bench/harness.py, beside this script
from harness import api, cpu_seconds, stop_upstream, wrk

from gateway import shared_module  # bench/gateway.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "bench" / "thinktank-bench.yaml"
ADMIN = "sk-bench-admin-0123456789"
PORTS = {"on": 18430, "off": 18431}
UPSTREAM_PORT = 18432
MODEL = "fake-priced"


def start_upstream(shared: Any, work: Path) -> Path:
    """nginx answering the shared benchmark's completion on UPSTREAM_PORT; the thinktank config pointing there."""
    return harness.start_upstream(shared.COMPLETION, work, UPSTREAM_PORT)


def start(name: str, port: int, data_dir: Path, workers: int, metrics: bool, config: Path,
          pin: list[str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THINKTANK_", "PROMETHEUS_"))}
    env.update({"THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATA_DIR": str(data_dir),
                "THINKTANK_METRICS": "true" if metrics else "false"})
    proc = subprocess.Popen(
        [*pin, sys.executable, "-m", "thinktank", "serve", "--config", str(config), "--port", str(port),
         "--workers", str(workers), "--log-level", "warning"], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=open(data_dir / "server.log", "w"),  # noqa: SIM115
    )
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1)
            time.sleep(1.0 if workers > 1 else 0)  # the other workers too
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"thinktank ({name}) did not start; see {data_dir / 'server.log'}")


async def usage_rows(data_dir: Path) -> int:
    from sqlalchemy import func, select

    from thinktank.store.db import Database
    from thinktank.store.tables import UsageRow

    db = Database(f"sqlite+aiosqlite:///{data_dir / 'thinktank.db'}")
    async with db.session() as s:
        n = await s.scalar(select(func.count()).select_from(UsageRow).where(UsageRow.model == MODEL))
    await db.close()
    return int(n or 0)


def scraped_requests(port: int) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = api(port, "GET", "/metrics")
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "thinktank_requests_total" and s.labels.get("model") == MODEL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway-bench", type=Path, default=ROOT.parent / "shared" / "bench" / "gateway_bench.py")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--same", choices=["on", "off"], help="an A/A run: both servers with metrics on (or off), to "
                    "see the noise of the method")
    ap.add_argument("--swap", action="store_true", help="the metrics-off server starts first and takes the first "
                    "port (an A/A run showed the first one ~2 %% slower: run both ways)")
    ap.add_argument("--pin", action="store_true", help="servers on CPU 1, wrk on CPU 0 (taskset; one worker)")
    a = ap.parse_args()
    pin_server = ["taskset", "-c", "1"] if a.pin else []
    pin_wrk = ["taskset", "-c", "0"] if a.pin else []
    shared = shared_module(a.gateway_bench)
    shared.need("wrk", "wrk")
    shared.need("nginx", "nginx-light")
    work = Path(tempfile.mkdtemp(prefix="tt-metrics-upstream-"))
    config = start_upstream(shared, work)
    dirs = {name: Path(tempfile.mkdtemp(prefix=f"tt-metrics-{name}-")) for name in PORTS}
    if a.swap:
        PORTS.update(on=PORTS["off"], off=PORTS["on"])
    procs = {}
    for name in sorted(PORTS, key=PORTS.__getitem__):  # the first port first
        procs[name] = start(name, PORTS[name], dirs[name], a.workers, (a.same or name) == "on", config, pin_server)
    rps: dict[str, list[float]] = {n: [] for n in PORTS}
    cpu: dict[str, list[float]] = {n: [] for n in PORTS}
    completed = dict.fromkeys(PORTS, 0)
    bad = dict.fromkeys(PORTS, 0)
    try:
        luas = {}
        for name, port in PORTS.items():
            key = api(port, "POST", "/api/v1/keys", {"name": "bench", "budget_usd": 1_000_000, "budget_period": "day",
                                                     "rpm": 100_000_000, "tpm": 1_000_000_000})["key"]
            luas[name] = shared.lua_script([f"Authorization: Bearer {key}"], MODEL, False)
        for name, port in PORTS.items():  # warm-up, counted too
            _, total, b = wrk(port, luas[name], 2, a.conc, pin_wrk)
            completed[name] += total
            bad[name] += b
        for round_no in range(a.rounds):
            order = ["on", "off"] if round_no % 2 == 0 else ["off", "on"]
            for name in order:
                c0 = cpu_seconds(procs[name].pid)
                r, total, b = wrk(PORTS[name], luas[name], a.seconds, a.conc, pin_wrk)
                cpu[name].append((cpu_seconds(procs[name].pid) - c0) / total * 1e6)
                rps[name].append(r)
                completed[name] += total
                bad[name] += b
            print(f"round {round_no + 1}: on {rps['on'][-1]:.0f} req/s ({cpu['on'][-1]:.0f} us/req), "
                  f"off {rps['off'][-1]:.0f} req/s ({cpu['off'][-1]:.0f} us/req)", flush=True)
        time.sleep(1.5)  # the usage writer's last batch
        scraped = scraped_requests(PORTS["on"]) if a.same != "off" else float("nan")
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)  # a clean stop flushes the usage rows
        for proc in procs.values():
            proc.wait(60)
        stop_upstream(work)
    rows = asyncio.run(usage_rows(dirs["on"]))
    ratio = statistics.median(on / off for on, off in zip(rps["on"], rps["off"], strict=True))
    cpu_ratio = statistics.median(on / off for on, off in zip(cpu["on"], cpu["off"], strict=True))
    result = {
        "same": a.same, "swap": a.swap, "pin": a.pin, "workers": a.workers, "conc": a.conc, "seconds": a.seconds,
        "rounds": a.rounds,
        "rps": {n: round(statistics.median(v)) for n, v in rps.items()},
        "cpu_us": {n: round(statistics.median(v)) for n, v in cpu.items()},
        "runs": {n: [round(x) for x in v] for n, v in rps.items()},
        "ratio_rps": round(ratio, 3), "ratio_cpu": round(cpu_ratio, 3),
        "requests": completed, "non2xx": bad, "usage_rows_on": rows, "scraped_requests_on": scraped,
    }
    print(json.dumps(result))
    print(f"\nmetrics on:  {result['rps']['on']:>6} req/s  {result['cpu_us']['on']:>4} us CPU/request")
    print(f"metrics off: {result['rps']['off']:>6} req/s  {result['cpu_us']['off']:>4} us CPU/request")
    print(f"on/off, median of rounds: req/s {ratio:.3f} ({(ratio - 1) * 100:+.1f} % req/s with metrics on), "
          f"CPU/request {cpu_ratio:.3f}")
    print(f"requests completed (metrics on) {completed['on']}, usage rows {rows}, /metrics counted {scraped:.0f}; "
          f"non-2xx {bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
