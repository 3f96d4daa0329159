#!/usr/bin/env python3
"""What governance costs: the admin key alone vs a virtual key with a budget, rate limits and
usage recording (issue 3), on SQLite, on PostgreSQL and on PostgreSQL + Redis, and whether every
usage row (and every cent) arrives.

    python bench/governance.py                     # every backend and case, 5 s runs
    python bench/governance.py --backends sqlite --seconds 4 --cases admin/priced,vkey/priced
    python bench/governance.py --peers             # the admin key and the key side by side with Portkey

Four cases per server: the admin key and the virtual key, each on a model without a price
(``fake-model``) and on the same upstream with list prices (``fake-priced``: every request reserves
its worst-case cost against the key's budget and settles it). A caller with a budget is refused a
model without a price (issue 17), so ``vkey/unpriced`` uses a second key with the same rate limits
and no budget: governance without a hold. The nginx fake upstream of ../shared/bench/gateway_bench.py
answers at once; wrk drives c=32. The cases alternate so that drift of the machine hits all alike, and each round
starts one case later than the one before (A B C D, B C D A, ...): on a shared machine the place
of a run in the round moved its result by up to 15 %. Medians are reported; the governed/admin
ratio is the median of the per-round ratios, per model. Besides requests per
second, the server's CPU time per request is measured (from /proc), which the load of other
tenants of a shared machine disturbs much less. After the runs the server is stopped (it
flushes its buffers and hands its budget leases back) and the usage rows are counted against
the number of requests wrk completed, and the key's budget (spent, leased) is read from the
store and compared with the cost of its usage rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

from gateway import shared_module  # bench/gateway.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "bench" / "thinktank-bench.yaml"
ADMIN = "sk-bench-admin-0123456789"
PORT = 18410
PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def api(method: str, path: str, body: object | None = None) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, object] = json.loads(resp.read())
        return result


def start(db_url: str, data_dir: Path, redis_url: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATA_DIR": str(data_dir),
           "THINKTANK_DATABASE_URL": db_url}
    env.pop("THINKTANK_REDIS_URL", None)
    if redis_url:
        env["THINKTANK_REDIS_URL"] = redis_url
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktank", "serve", "--config", str(CONFIG), "--port", str(PORT),
         "--log-level", "warning"], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=open(data_dir / "server.log", "w"),  # noqa: SIM115
    )
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/ready", timeout=1)
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"thinktank did not start; see {data_dir / 'server.log'}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(lua: Path, seconds: int, conc: int) -> tuple[float, int, int]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "-s", str(lua), f"http://127.0.0.1:{PORT}/v1/chat/completions"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, total, int(bad.group(1)) if bad else 0


async def count_rows(db_url: str, key_id: str) -> tuple[int, float]:
    """All usage rows, and the cost of the key's."""
    from sqlalchemy import func, select

    from thinktank.store.db import Database
    from thinktank.store.tables import UsageRow

    db = Database(db_url)
    async with db.session() as s:
        n = await s.scalar(select(func.count()).select_from(UsageRow))
        cost = await s.scalar(select(func.sum(UsageRow.cost_usd)).where(UsageRow.key_id == key_id))
    await db.close()
    return int(n or 0), float(cost or 0.0)


async def key_budget(db_url: str, redis_url: str | None, key_id: str) -> tuple[float, float]:
    """(spent, leased) of the key's budgets, summed over the periods the run touched."""
    if redis_url:
        import redis.asyncio as aioredis

        client = aioredis.from_url(redis_url)
        spent = leased = 0.0
        async for name in client.scan_iter(match=f"tt:budget:key:{key_id}:*"):
            got, held = await client.hmget(name, ["spent", "leased"])
            spent, leased = spent + float(got or 0), leased + float(held or 0)
        await client.aclose()
        return spent, leased
    from sqlalchemy import func, select

    from thinktank.store.db import Database
    from thinktank.store.tables import BudgetRow

    db = Database(db_url)
    async with db.session() as s:
        row = (await s.execute(select(func.sum(BudgetRow.spent_usd), func.sum(BudgetRow.leased_usd)).where(
            BudgetRow.scope == "key", BudgetRow.scope_id == key_id))).one()
    await db.close()
    return float(row[0] or 0.0), float(row[1] or 0.0)


async def fresh_pg(name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


CASES = {  # name: (admin key?, model)
    "admin/unpriced": (True, "fake-model"), "vkey/unpriced": (False, "fake-model"),
    "admin/priced": (True, "fake-priced"), "vkey/priced": (False, "fake-priced"),
}


def run_backend(
    name: str, db_url: str, redis_url: str | None, data_dir: Path, shared: ModuleType, seconds: int, rounds: int,
    cases: list[str],
) -> dict[str, Any]:
    proc = start(db_url, data_dir, redis_url)
    completed = 0
    try:
        made = api("POST", "/api/v1/keys", {
            "name": "bench", "budget_usd": 1_000_000, "budget_period": "day", "rpm": 100_000_000,
            "tpm": 1_000_000_000})
        key, key_id = str(made["key"]), str(made["id"])
        unbudgeted = str(api("POST", "/api/v1/keys", {"name": "bench-nobudget", "rpm": 100_000_000,
                                                      "tpm": 1_000_000_000})["key"])
        keys = {c: ADMIN if CASES[c][0] else unbudgeted if CASES[c][1] == "fake-model" else key for c in cases}
        luas = {c: shared.lua_script([f"Authorization: Bearer {keys[c]}"], CASES[c][1], False) for c in cases}
        rps: dict[str, list[float]] = {k: [] for k in luas}
        cpu: dict[str, list[float]] = {k: [] for k in luas}
        bad = 0
        for lua in luas.values():  # warm-up, counted too
            _, total, b = wrk(lua, 2, 32)
            completed, bad = completed + total, bad + b
        order = list(luas)
        for round_no in range(rounds):
            # Each round starts one case later (A B C D, B C D A, ...): a case's place in the round
            # measurably changes its result on this machine, so every case takes every place.
            for who in order[round_no % len(order):] + order[:round_no % len(order)]:
                lua = luas[who]
                c0 = cpu_seconds(proc.pid)
                r, total, b = wrk(lua, seconds, 32)
                cpu[who].append((cpu_seconds(proc.pid) - c0) / total * 1e6)
                rps[who].append(r)
                completed, bad = completed + total, bad + b
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # a clean stop flushes the usage buffer and the budget leases
        proc.wait(30)
    rows, cost = asyncio.run(count_rows(db_url, key_id))
    spent, leased = asyncio.run(key_budget(db_url, redis_url, key_id))
    res: dict[str, Any] = {
        "backend": name, "requests": completed, "usage_rows": rows, "non2xx": bad,
        "key_cost_usd": cost, "key_spent_usd": spent, "key_leased_usd": leased,
        "rps": {k: statistics.median(v) for k, v in rps.items()},
        "cpu_us": {k: statistics.median(v) for k, v in cpu.items()},
        "runs": {k: [round(x) for x in v] for k, v in rps.items()},
        "cpu_runs": {k: [round(x) for x in v] for k, v in cpu.items()},
    }
    ratios: dict[str, float] = {}
    for model in ("unpriced", "priced"):
        a, v = f"admin/{model}", f"vkey/{model}"
        if a in rps and v in rps:
            # Per round (the two runs were next to each other), then the median of those.
            ratios[model] = statistics.median(y / x for x, y in zip(rps[a], rps[v], strict=True))
    res["ratio"] = ratios
    return res


def peers(gateway_bench: Path, seconds: int, conc: str) -> None:
    """The admin key and the governed key on the priced model, then Portkey, through the shared
    benchmark (one server, SQLite; the targets run one after the other, as in bench/gateway.py)."""
    data_dir = Path(tempfile.mkdtemp(prefix="tt-gov-peers-"))
    proc = start(f"sqlite+aiosqlite:///{data_dir / 'thinktank.db'}", data_dir)
    try:
        key = str(api("POST", "/api/v1/keys", {
            "name": "bench", "budget_usd": 1_000_000, "budget_period": "day", "rpm": 100_000_000,
            "tpm": 1_000_000_000})["key"])
        url = f"http://127.0.0.1:{PORT}"
        admin = ["--target", f"tt-admin={url},Authorization: Bearer {ADMIN}", "--target-pid", f"tt-admin={proc.pid}"]
        governed = ["--target", f"tt-key={url},Authorization: Bearer {key}", "--target-pid", f"tt-key={proc.pid}"]
        # The targets run one after the other: both orders, so that drift shows (Portkey once).
        for targets, extra in ((governed + admin, ["--with-portkey"]), (admin + governed, [])):
            cmd = [sys.executable, str(gateway_bench), *targets, *extra, "--model", "fake-priced",
                   "--conc", conc, "--seconds", str(seconds), "--keep"]
            print("$", " ".join(c.replace(key, "<key>") for c in cmd), flush=True)
            subprocess.run(cmd, check=False)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway-bench", type=Path, default=ROOT.parent / "shared" / "bench" / "gateway_bench.py")
    ap.add_argument("--backends", default="sqlite,postgres,postgres+redis")
    ap.add_argument("--cases", default=",".join(CASES), help=f"some of {', '.join(CASES)}")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=8, help="best a multiple of the number of cases")
    ap.add_argument("--redis", default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--peers", action="store_true", help="only the side-by-side run with Portkey (c=1 and 32)")
    a = ap.parse_args()
    cases = a.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    shared = shared_module(a.gateway_bench)
    shared.need("wrk", "wrk")
    shared.start_upstream()
    if a.peers:
        try:
            peers(a.gateway_bench, a.seconds, "1,32")
        finally:
            shared.stop_upstream()
        return 0
    results = []
    try:
        for backend in a.backends.split(","):
            data_dir = Path(tempfile.mkdtemp(prefix=f"tt-gov-{backend}-"))
            if backend == "sqlite":
                url = f"sqlite+aiosqlite:///{data_dir / 'thinktank.db'}"
            elif backend in ("postgres", "postgres+redis"):
                url = asyncio.run(fresh_pg("tt_bench_governance"))
            else:
                ap.error(f"unknown backend {backend!r}: sqlite, postgres or postgres+redis")
            redis_url = a.redis if backend.endswith("+redis") else None
            res = run_backend(backend, url, redis_url, data_dir, shared, a.seconds, a.rounds, cases)
            results.append(res)
            print(json.dumps(res), flush=True)
    finally:
        shared.stop_upstream()
    print(f"\n{'backend':<15} {'case':<15} {'req/s':>7} {'cpu/req':>9} {'vkey/admin':>11}")
    for r in results:
        rps, cpu, ratio = r["rps"], r["cpu_us"], r["ratio"]
        for c in rps:
            model = c.split("/")[1]
            shown = f"{ratio[model]:>11.3f}" if c.startswith("vkey") and model in ratio else ""
            print(f"{r['backend']:<15} {c:<15} {rps[c]:>7.0f} {cpu[c]:>6.0f} us {shown}")
        print(f"{'':<15} requests {r['requests']}, usage rows {r['usage_rows']}, non-2xx {r['non2xx']}; key: "
              f"usage cost ${r['key_cost_usd']:.6f}, budget spent ${r['key_spent_usd']:.6f}, "
              f"leased ${r['key_leased_usd']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
