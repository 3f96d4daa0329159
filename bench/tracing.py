#!/usr/bin/env python3
"""What traces cost (issue 16): the gateway at c=32 with tracing off, with tracing on (exporting over OTLP/HTTP
in batches to a receiver on loopback), and, for the request-id and log work, the same gateway without it (the
``main`` worktree's code, text logs).

    python bench/tracing.py                       # 6 rounds of 5 s runs per case
    python bench/tracing.py --rounds 4 --seconds 4 --cases off,on
    python bench/tracing.py --baseline-src ../main/src   # what "before" is (default: ../main/src if it exists)
    python bench/tracing.py --cases off,on,sampled       # sampled: OTEL_TRACES_SAMPLER=parentbased_traceidratio, 0.1

Every case is its own ``thinktank serve`` (one worker, SQLite, text logs at warning) in front of the nginx fake
upstream of ../shared/bench/gateway_bench.py; governance is on as in bench/governance.py: a virtual key with a
budget and rate limits on the priced model, so every request takes and settles a budget hold and writes a usage
row. wrk drives c=32. The cases alternate (A B C, B C A, C A B, ...) so that drift of the shared machine hits
all alike; medians are reported, with the server's CPU time per request (from /proc). The receiver (aiohttp in
this process, decoding each export with opentelemetry-proto) counts the spans that arrive.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

from governance import CONFIG, cpu_seconds  # bench/governance.py

from gateway import shared_module  # bench/gateway.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "sk-bench-admin-0123456789"
PORTS = {"before": 18461, "off": 18462, "on": 18463, "sampled": 18464}
RECEIVER_PORT = 18469


class Receiver:
    """An OTLP/HTTP traces endpoint on loopback, in a thread of its own: it decodes and counts spans."""

    def __init__(self) -> None:
        self.spans = 0
        self.exports = 0
        self._loop: Any = None

    def start(self) -> None:
        import asyncio

        from aiohttp import web
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        async def traces(request: web.Request) -> web.Response:
            message = ExportTraceServiceRequest()
            message.ParseFromString(await request.read())
            self.exports += 1
            self.spans += sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
            return web.Response(content_type="application/x-protobuf")

        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/v1/traces", traces)
            runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(runner.setup())
            self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", RECEIVER_PORT).start())
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)


def start(case: str, data_dir: Path, baseline_src: Path) -> subprocess.Popen[bytes]:
    port = PORTS[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THINKTANK_", "OTEL_"))}
    env.update(THINKTANK_ADMIN_KEY=ADMIN, THINKTANK_DATA_DIR=str(data_dir),
               PYTHONPATH=str(baseline_src if case == "before" else ROOT / "src"))
    if case in ("on", "sampled"):
        env["THINKTANK_OTEL_ENDPOINT"] = f"http://127.0.0.1:{RECEIVER_PORT}"
    if case == "sampled":  # one trace in ten recorded (the others cost a non-recording span each)
        env.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktank", "serve", "--config", str(CONFIG), "--port", str(port),
         "--log-level", "warning"], env=env, start_new_session=True, cwd=data_dir,
        stdout=subprocess.DEVNULL, stderr=open(data_dir / "server.log", "w"),  # noqa: SIM115
    )
    for _ in range(400):
        if proc.poll() is not None:
            raise SystemExit(f"thinktank ({case}) exited; see {data_dir / 'server.log'}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"thinktank ({case}) did not start; see {data_dir / 'server.log'}")


def make_key(port: int) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/keys", method="POST", data=json.dumps({
            "name": "bench", "budget_usd": 1_000_000, "budget_period": "day", "rpm": 100_000_000,
            "tpm": 1_000_000_000}).encode(),
        headers={"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.loads(resp.read())["key"])


def wrk(lua: Path, port: int, seconds: int, conc: int) -> tuple[float, int, int, float]:
    import re

    out = subprocess.run(
        ["wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "--latency", "-s", str(lua),
         f"http://127.0.0.1:{port}/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99_ms = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    return rps, total, int(bad.group(1)) if bad else 0, p99_ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway-bench", type=Path, default=ROOT.parent / "shared" / "bench" / "gateway_bench.py")
    ap.add_argument("--baseline-src", type=Path, default=ROOT.parent / "main" / "src")
    ap.add_argument("--cases", default="before,off,on")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=6, help="best a multiple of the number of cases")
    ap.add_argument("--conc", type=int, default=32)
    a = ap.parse_args()
    cases = a.cases.split(",")
    if "before" in cases and not (a.baseline_src / "thinktank").is_dir():
        ap.error(f"--baseline-src {a.baseline_src} holds no thinktank package")
    shared = shared_module(a.gateway_bench)
    shared.need("wrk", "wrk")
    shared.start_upstream()
    receiver = Receiver()
    receiver.start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        luas = {}
        for case in cases:
            procs[case] = start(case, Path(tempfile.mkdtemp(prefix=f"tt-trace-{case}-")), a.baseline_src)
            key = make_key(PORTS[case])
            luas[case] = shared.lua_script([f"Authorization: Bearer {key}"], "fake-priced", False)
        rps: dict[str, list[float]] = {c: [] for c in cases}
        cpu: dict[str, list[float]] = {c: [] for c in cases}
        p99: dict[str, list[float]] = {c: [] for c in cases}
        requests = dict.fromkeys(cases, 0)
        bad = 0
        for case in cases:  # warm-up
            _, total, b, _ = wrk(luas[case], PORTS[case], 2, a.conc)
            requests[case] += total
            bad += b
        for round_no in range(a.rounds):
            for case in cases[round_no % len(cases):] + cases[:round_no % len(cases)]:
                c0 = cpu_seconds(procs[case].pid)
                r, total, b, p = wrk(luas[case], PORTS[case], a.seconds, a.conc)
                cpu[case].append((cpu_seconds(procs[case].pid) - c0) / total * 1e6)
                rps[case].append(r)
                p99[case].append(p)
                requests[case] += total
                bad += b
                print(f"round {round_no + 1} {case:<7} {r:>7.0f} req/s  {cpu[case][-1]:>5.0f} us cpu/req  "
                      f"p99 {p:.1f} ms", flush=True)
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)  # a clean stop flushes the last spans
        for proc in procs.values():
            proc.wait(30)
        shared.stop_upstream()
    time.sleep(0.5)
    print(f"\nc={a.conc}, {a.rounds} rounds of {a.seconds} s, {os.cpu_count()} cores (shared); non-2xx {bad}")
    print(f"{'case':<8} {'req/s':>7} {'cpu/req':>9} {'p99':>9} {'vs off':>7}")
    for case in cases:
        ratio = ""
        if "off" in rps and case != "off":
            ratio = f"{statistics.median(x / y for x, y in zip(rps[case], rps['off'], strict=True)):>7.3f}"
        print(f"{case:<8} {statistics.median(rps[case]):>7.0f} {statistics.median(cpu[case]):>6.0f} us "
              f"{statistics.median(p99[case]):>6.1f} ms {ratio}")
    traced = sum(requests.get(c, 0) for c in ("on", "sampled"))
    if traced:
        print(f"spans received {receiver.spans} in {receiver.exports} exports for {traced} traced requests")
    print(json.dumps({"rps_runs": rps, "cpu_runs": cpu, "p99_runs": p99, "requests": requests}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
