#!/usr/bin/env python3
"""What an exact response-cache hit costs beside a plain completion (issue 16), side by side on one server.

    python bench/response_cache.py                      # five cases, 6 rounds of 5 s at c=32 (about 3 minutes)
    python bench/response_cache.py --cases plain,hit --rounds 4

One ``thinktank serve`` (SQLite, one worker, memory cache) before the nginx fake upstream of
../shared/bench/gateway_bench.py (it answers at once: the upstream costs nothing, so what is measured is the
gateway's own work). Every request uses a virtual key with a budget, a request and a token rate limit on the
priced model ``fake-priced``, so a plain completion takes a budget hold, calls the upstream and settles, and a
hit is admitted the same way (rate limits apply to hits) and answered from memory. Cases:

- ``plain``: no cache in play (no header);
- ``hit``: ``x-thinktank-cache: allow``, the same request each time (warmed first): every request a hit;
- ``miss``: ``x-thinktank-cache: allow``, every request a new question: looked up, answered, kept;
- ``stream-plain`` / ``stream-hit``: the same with ``stream: true`` on ``fake-stream``;
- ``semantic-hit``: ``fake-semantic`` (the priced model with the semantic layer on), asked a paraphrase of a
  question answered before, at temperature 0: every request misses exactly, is embedded by the local model
  (in its one worker thread) and hits semantically.

wrk drives c=32 for ``--seconds`` per run; each round runs every case once and starts one case later than the
round before (A B C, B C A, ...), so drift of the machine hits every case alike. Reported: the medians over the
rounds of requests/s, of wrk's p50 and p99, and of the server's CPU time per request (from /proc), and the
median of the per-round ratio to ``plain`` (or ``stream-plain``). After the runs the server is stopped and the
usage rows are counted: every hit must be recorded with ``cache_hit`` and no cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from governance import cpu_seconds

from gateway import shared_module  # bench/gateway.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "bench" / "thinktank-bench.yaml"
ADMIN = "sk-bench-admin-0123456789"
QUESTION = "What is the capital of France?"

CASES = {  # name: (model, stream, cache header, a new question each time)
    "plain": ("fake-priced", False, False, False),
    "hit": ("fake-priced", False, True, False),
    "miss": ("fake-priced", False, True, True),
    "stream-plain": ("fake-stream", True, False, False),
    "stream-hit": ("fake-stream", True, True, False),
    "semantic-hit": ("fake-semantic", False, True, False),
}
BASELINE = {"hit": "plain", "miss": "plain", "stream-hit": "stream-plain", "semantic-hit": "plain"}
PARAPHRASE = "what's the capital of france"


def api(port: int, method: str, path: str, body: object | None = None,
        headers: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {ADMIN}", "content-type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:  # (the first semantic request loads the model)
        raw = resp.read()
        data = json.loads(raw) if not raw.startswith(b"data:") else {}
        return data, dict(resp.headers)


def start(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    import yaml

    data = yaml.safe_load(CONFIG.read_text())
    priced = next(m for m in data["models"] if m["name"] == "fake-priced")
    data["models"].append({**priced, "name": "fake-semantic"})
    data["cache"] = {"backend": "memory", "models": {"fake-semantic": {"semantic": {"enabled": True}}}}
    config = data_dir / "thinktank.yaml"
    config.write_text(yaml.safe_dump(data))
    env = {**os.environ, "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATA_DIR": str(data_dir),
           "PYTHONPATH": str(ROOT / "src")}  # this checkout, whatever the environment has installed
    env.pop("THINKTANK_REDIS_URL", None)
    env.pop("THINKTANK_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktank", "serve", "--config", str(config), "--port", str(port),
         "--log-level", "warning"], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=open(data_dir / "server.log", "w"),  # noqa: SIM115
    )
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1)
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"thinktank did not start; see {data_dir / 'server.log'}")


def lua(work: Path, key: str, case: str) -> Path:
    """The wrk script of ``case``; made again for every run (a new question each request must be new across
    runs too: each run numbers its requests from 1)."""
    model, stream, cached, fresh = CASES[case]
    question = PARAPHRASE if case == "semantic-hit" else QUESTION
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 16}
    if case == "semantic-hit":
        body["temperature"] = 0
    if stream:
        body["stream"] = True
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"',
             f'wrk.headers["Authorization"] = "Bearer {key}"']
    if cached:
        lines.append('wrk.headers["x-thinktank-cache"] = "allow"')
    if fresh:  # a new question each request: "... (n)"
        head, tail = json.dumps(body).split(QUESTION)
        run = secrets.token_hex(6)
        lines += ["counter = 0", f"prefix = {json.dumps(head + QUESTION + f' ({run}-')}",
                  f"suffix = {json.dumps(')' + tail)}", "request = function()", "  counter = counter + 1",
                  "  return wrk.format(nil, nil, nil, prefix .. counter .. suffix)", "end"]
    else:
        lines.append(f"wrk.body = {json.dumps(json.dumps(body))}")
    path = work / f"{case}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway-bench", type=Path, default=ROOT.parent / "shared" / "bench" / "gateway_bench.py")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--port", type=int, default=18420)
    a = ap.parse_args()
    cases = a.cases.split(",")
    shared = shared_module(a.gateway_bench)
    shared.need("wrk", "wrk")
    shared.start_upstream()
    data_dir = Path(tempfile.mkdtemp(prefix="tt-cache-bench-"))
    proc = start(a.port, data_dir)
    completed: dict[str, int] = dict.fromkeys(cases, 0)
    try:
        made, _ = api(a.port, "POST", "/api/v1/keys", {
            "name": "bench", "budget_usd": 1_000_000, "budget_period": "day", "rpm": 100_000_000,
            "tpm": 1_000_000_000})
        key, key_id = str(made["key"]), str(made["id"])
        scripts = {c: lua(data_dir, key, c) for c in cases}
        # the hit cases' answer is in the cache before they run; check the headers say so
        for case in ("hit", "stream-hit", "semantic-hit"):
            if case in cases:
                model, stream, _, _ = CASES[case]
                body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16,
                        **({"stream": True} if stream else {}), **({"temperature": 0} if "semantic" in case else {})}
                auth = {"Authorization": f"Bearer {key}", "x-thinktank-cache": "allow"}
                api(a.port, "POST", "/v1/chat/completions", body, auth)
                if case == "semantic-hit":
                    body["messages"] = [{"role": "user", "content": PARAPHRASE}]
                _, headers = api(a.port, "POST", "/v1/chat/completions", body, auth)
                assert headers.get("x-thinktank-cache") == "hit", headers
                assert headers.get("x-thinktank-cache-match") == ("semantic" if "semantic" in case else "exact")
        for case, script in scripts.items():  # warm-up (counted in the usage check)
            completed[case] += int(shared.run_wrk(f"http://127.0.0.1:{a.port}", script, a.conc, 2)["rps"] * 2)
        runs: dict[str, list[dict[str, float]]] = {c: [] for c in cases}
        for round_no in range(a.rounds):
            shift = round_no % len(cases)
            for case in cases[shift:] + cases[:shift]:
                c0 = cpu_seconds(proc.pid)
                script = lua(data_dir, key, case) if CASES[case][3] else scripts[case]
                res = shared.run_wrk(f"http://127.0.0.1:{a.port}", script, a.conc, a.seconds)
                n = res["rps"] * a.seconds
                res["cpu_us"] = (cpu_seconds(proc.pid) - c0) / max(n, 1) * 1e6
                runs[case].append(res)
                if res["non2xx"] or res["errors"]:
                    print(f"! {case}: {res['non2xx']} non-2xx, {res['errors']} socket errors", flush=True)
            print(f"round {round_no + 1}: " + ", ".join(f"{c} {runs[c][-1]['rps']:.0f}/s" for c in cases), flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        shared.stop_upstream()

    print(f"\nc={a.conc}, {a.rounds} rounds of {a.seconds} s per case, medians (2 shared cores; see the caveat in "
          "docs/benchmarks.md)\n")
    print("| case | req/s | p50 ms | p99 ms | server CPU µs/request | req/s vs baseline (median of rounds) |")
    print("|---|---|---|---|---|---|")
    for case in cases:
        r = runs[case]
        ratio = ""
        base = BASELINE.get(case)
        if base in runs:
            ratio = f"{statistics.median(x['rps'] / y['rps'] for x, y in zip(r, runs[base], strict=True)):.2f}×"
        print(f"| {case} | {statistics.median(x['rps'] for x in r):,.0f} | {statistics.median(x['p50'] for x in r):.2f}"
              f" | {statistics.median(x['p99'] for x in r):.2f} | {statistics.median(x['cpu_us'] for x in r):.0f} "
              f"| {ratio} |")
    hits, misses, cost = asyncio.run(usage(data_dir, key_id))
    print(f"\nusage rows of the key: {hits} with cache_hit (cost of those: ${cost:.10f}), {misses} without")
    return 0


async def usage(data_dir: Path, key_id: str) -> tuple[int, int, float]:
    from sqlalchemy import func, select

    sys.path.insert(0, str(ROOT / "src"))
    from thinktank.store.db import Database
    from thinktank.store.tables import UsageRow

    db = Database(f"sqlite+aiosqlite:///{data_dir / 'thinktank.db'}")
    async with db.session() as s:
        rows = (await s.execute(select(UsageRow.cache_hit, func.count(), func.sum(UsageRow.cost_usd)).where(
            UsageRow.key_id == key_id).group_by(UsageRow.cache_hit))).all()
    await db.close()
    by = {bool(hit): (int(n), float(c or 0)) for hit, n, c in rows}
    return by.get(True, (0, 0.0))[0], by.get(False, (0, 0.0))[0], by.get(True, (0, 0.0))[1]


if __name__ == "__main__":
    sys.exit(main())
