#!/usr/bin/env python3
"""thinktank beside Portkey and LiteLLM on the shared gateway benchmark, plus cold start and
streaming time-to-first-byte.

    python bench/gateway.py                       # the full side-by-side run (about 3 minutes)
    python bench/gateway.py --skip-peers --seconds 4

Steps:
1. cold start: spawn `thinktank serve`, time until the first chat completion is answered;
2. ../shared/bench/gateway_bench.py (nginx fake upstream + wrk) with thinktank as a target and
   --with-portkey --with-litellm, non-streaming then --stream;
3. streaming time to first byte: sequential streamed requests through thinktank and Portkey,
   timing the first body byte (wrk only sees whole responses).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "bench" / "thinktank-bench.yaml"
ADMIN = "sk-bench-admin-0123456789"
PORT = 18400
PORTKEY_PORT = 18787
WORK = Path(os.environ.get("GATEWAY_BENCH_DIR", Path(tempfile.gettempdir()) / "gateway_bench"))
BODY = b'{"model":"%s","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16%s}'


def start_thinktank(workers: int = 1) -> tuple[subprocess.Popen[bytes], float]:
    """Start the server; return it and the seconds until its first answered completion."""
    env = {**os.environ, "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATA_DIR": str(WORK / "thinktank-data")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktank", "serve", "--config", str(CONFIG), "--port", str(PORT),
         "--workers", str(workers), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/v1/chat/completions", data=BODY % (b"fake-model", b""), method="POST",
        headers={"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )
    while True:
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                resp.read()
            return proc, time.perf_counter() - t0
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None:
                raise SystemExit("thinktank did not start") from None
            time.sleep(0.005)


def gateway_bench(path: Path, args: list[str]) -> str:
    cmd = [sys.executable, str(path), *args]
    print("$", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    print(out.stdout, out.stderr[-2000:] if out.returncode else "", flush=True)
    return out.stdout


async def ttfb(url: str, headers: dict[str, str], model: str, n: int) -> list[float]:
    times: list[float] = []
    body = BODY % (model.encode(), b',"stream":true')
    async with aiohttp.ClientSession() as s:
        for i in range(n + 20):
            t0 = time.perf_counter()
            async with s.post(url + "/v1/chat/completions", data=body,
                              headers={"content-type": "application/json", **headers}) as resp:
                await resp.content.readany()
                t1 = time.perf_counter()
                if resp.status != 200:
                    raise SystemExit(f"{url} answered {resp.status}")
                await resp.read()
            if i >= 20:  # warm-up excluded
                times.append((t1 - t0) * 1000)
    return times


def shared_module(bench: Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gateway_bench", bench)
    assert spec is not None
    assert spec.loader is not None
    shared = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shared)
    return shared


def ttfb_peers(bench: Path, n: int) -> None:
    """Portkey and LiteLLM started by the shared benchmark's own helpers, timed the same way."""
    shared = shared_module(bench)
    for name, start, model in (("portkey", lambda: shared.start_portkey(True), "fake-model"),
                               ("litellm", shared.start_litellm, "fake-stream")):
        proc, url, header_lines = start()
        headers = dict(h.split(": ", 1) for h in header_lines)
        try:
            report_ttfb(name, asyncio.run(ttfb(url, headers, model, n)))
        except SystemExit as exc:
            print(f"{name:<12} stream TTFB  not measurable: {exc}")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)


def report_ttfb(name: str, times: list[float]) -> None:
    times.sort()
    p99 = times[int(len(times) * 0.99) - 1]
    print(f"{name:<12} stream TTFB  p50 {statistics.median(times):.3f} ms  p99 {p99:.3f} ms  (n={len(times)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway-bench", type=Path, default=ROOT.parent / "shared" / "bench" / "gateway_bench.py")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--conc", default="1,8,32")
    ap.add_argument("--skip-peers", action="store_true", help="measure thinktank alone")
    ap.add_argument("--ttfb-requests", type=int, default=500)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()

    # The fake upstream must answer before a cold start can end with an answered request.
    shared_module(a.gateway_bench).start_upstream()
    colds = []
    for _ in range(3):
        proc, cold = start_thinktank(a.workers)
        colds.append(cold)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    print(f"cold start to first answered request: {', '.join(f'{c:.2f}' for c in colds)} s", flush=True)

    proc, _ = start_thinktank(a.workers)
    peers = [] if a.skip_peers else ["--with-portkey", "--with-litellm"]
    common = ["--target", f"thinktank=http://127.0.0.1:{PORT},Authorization: Bearer {ADMIN}",
              "--target-pid", f"thinktank={proc.pid}", "--seconds", str(a.seconds), "--conc", a.conc, "--keep"]
    try:
        gateway_bench(a.gateway_bench, [*common, *peers])
        gateway_bench(a.gateway_bench, [*common, "--model", "fake-stream", "--stream", *peers])
        report_ttfb("thinktank", asyncio.run(ttfb(f"http://127.0.0.1:{PORT}", {"Authorization": f"Bearer {ADMIN}"},
                                                  "fake-stream", a.ttfb_requests)))
        if not a.skip_peers:
            ttfb_peers(a.gateway_bench, a.ttfb_requests)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
