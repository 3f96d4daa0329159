#!/usr/bin/env python3
"""A soak (issue 17): a fixed request rate for minutes across two workers; errors, p99 and memory over time.

    python bench/soak.py                                  # 10 minutes at 1,200 req/s, PostgreSQL + Redis
    python bench/soak.py --minutes 2 --rate 800 --backend sqlite

One ``thinktank serve --workers 2`` on a fresh PostgreSQL database with budgets and rate limits in a Redis of
the run's own (``--backend sqlite``: the embedded defaults), metrics on. Every request is governed: a virtual
key with a day budget and rate limits on the priced model ``fake-priced`` (a budget hold taken and settled, a
usage row written). An nginx fake upstream answers at once. ``hey`` holds the rate (``-c`` connections of
``-q`` requests per second each) in slices of ``--slice`` seconds; after each slice the script prints its
req/s, p50, p99, errors and each worker's resident memory. At the end: memory growth from the end of the
warm-up (``--warmup`` seconds) to the end, the spread of the slices' p99, and the usage rows written against
the requests answered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import api, process_tree, rss_mb, shared_module, start_server, start_upstream, stop_upstream
from scaling import fresh_pg, private_redis, psql

UPSTREAM_PORT = 18452
PORT = 18450
MODEL = "fake-priced"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                   "max_tokens": 16})


def hey(key: str, seconds: int, conc: int, per_conn: float) -> dict[str, Any]:
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(conc), "-q", str(per_conn), "-m", "POST", "-T", "application/json",
         "-H", f"Authorization: Bearer {key}", "-d", BODY, f"http://127.0.0.1:{PORT}/v1/chat/completions"],
        capture_output=True, text=True, check=True,
    ).stdout

    def pct(p: int) -> float:
        found = re.search(rf"\s{p}%% in ([\d.]+) secs".replace("%%", "%"), out)
        return float(found.group(1)) * 1000 if found else float("nan")

    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    tail = out.split("Error distribution:", 1)[1] if "Error distribution:" in out else ""
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", tail, flags=re.M))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": pct(50), "p99_ms": pct(99), "statuses": statuses, "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--slice", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--rate", type=int, default=1200)
    ap.add_argument("--conc", type=int, default=40)
    ap.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    a = ap.parse_args()
    shared = shared_module()
    shared.need("nginx", "nginx-light")
    shared.need("hey", "hey")
    work = Path(tempfile.mkdtemp(prefix="tt-soak-"))
    config = start_upstream(shared.COMPLETION, work / "upstream", UPSTREAM_PORT)
    slices: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        stack.callback(stop_upstream, work / "upstream")
        env = {"THINKTANK_METRICS": "true"}
        dbname = None
        if a.backend == "postgres":
            dbname, env["THINKTANK_DATABASE_URL"] = stack.enter_context(fresh_pg())
            env["THINKTANK_REDIS_URL"] = stack.enter_context(private_redis(work))
        server = start_server(PORT, work / "server", config, workers=2, env=env)
        stack.callback(server.stop)
        key = api(PORT, "POST", "/api/v1/keys", {"name": "soak", "budget_usd": 1_000_000, "budget_period": "day",
                                                 "rpm": 100_000_000, "tpm": 1_000_000_000})["key"]
        workers = [p for p in process_tree(server.proc.pid) if p != server.proc.pid
                   and b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()] or [server.proc.pid]
        t0 = time.monotonic()
        end = t0 + a.minutes * 60
        while time.monotonic() < end:
            got = hey(key, a.slice, a.conc, a.rate / a.conc)
            got["t"] = round(time.monotonic() - t0)
            got["rss_mb"] = [round(rss_mb(p), 1) for p in workers]
            slices.append(got)
            print(json.dumps(got), flush=True)
        time.sleep(2)  # the last usage batch
        rows = None
        if dbname:
            rows = int(psql(f"SELECT count(*) FROM usage WHERE model = '{MODEL}'", dbname))
    answered = sum(s["rps"] * a.slice for s in slices)
    warm = [s for s in slices if s["t"] > a.warmup] or slices
    first, last = warm[0]["rss_mb"], slices[-1]["rss_mb"]
    growth = [round((b - f) / f * 100, 1) for f, b in zip(first, last, strict=True)]
    p99 = [s["p99_ms"] for s in warm]
    bad = sum(n for s in slices for code, n in s["statuses"].items() if code != 200) + sum(s["errors"] for s in slices)
    summary = {"minutes": a.minutes, "rate": a.rate, "backend": a.backend, "slices": len(slices),
               "mean_rps": round(answered / (len(slices) * a.slice)), "non200_or_errors": bad,
               "p99_ms_min_median_max": [round(min(p99), 1), round(sorted(p99)[len(p99) // 2], 1), round(max(p99), 1)],
               "rss_after_warmup_mb": first, "rss_end_mb": last, "rss_growth_pct": growth,
               "answered_200": sum(s["statuses"].get(200, 0) for s in slices),
               "usage_rows": rows}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
