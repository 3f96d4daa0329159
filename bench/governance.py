#!/usr/bin/env python3
"""What governance costs: the admin key alone vs a virtual key with a budget, rate limits and
usage recording (issue 3), on SQLite and on PostgreSQL, and whether every usage row arrives.

    python bench/governance.py                     # both databases, 8 s runs
    python bench/governance.py --backends sqlite --seconds 4

The nginx fake upstream of ../shared/bench/gateway_bench.py answers at once; wrk drives c=32.
Admin and virtual-key runs alternate (A B A B ...) so that drift of the machine hits both alike,
and medians are reported. Besides requests per second, the server's CPU time per request is
measured (from /proc), which the load of other tenants of a shared machine disturbs much less.
After the runs the server is stopped (it flushes its buffer) and the usage rows are counted
against the number of requests wrk completed.
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


def start(db_url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATA_DIR": str(data_dir),
           "THINKTANK_DATABASE_URL": db_url}
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


async def count_rows(db_url: str) -> int:
    from sqlalchemy import func, select

    from thinktank.store.db import Database
    from thinktank.store.tables import UsageRow

    db = Database(db_url)
    async with db.session() as s:
        n = await s.scalar(select(func.count()).select_from(UsageRow))
    await db.close()
    return int(n or 0)


async def fresh_pg(name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def run_backend(
    name: str, db_url: str, data_dir: Path, shared: ModuleType, seconds: int, rounds: int
) -> dict[str, object]:
    proc = start(db_url, data_dir)
    completed = 0
    try:
        key = str(api("POST", "/api/v1/keys", {
            "name": "bench", "budget_usd": 1_000_000, "budget_period": "day", "rpm": 100_000_000,
            "tpm": 1_000_000_000}).get("key"))
        luas = {"admin": shared.lua_script([f"Authorization: Bearer {ADMIN}"], "fake-model", False),
                "virtual key": shared.lua_script([f"Authorization: Bearer {key}"], "fake-model", False)}
        rps: dict[str, list[float]] = {k: [] for k in luas}
        cpu: dict[str, list[float]] = {k: [] for k in luas}
        bad = 0
        for lua in luas.values():  # warm-up, counted too
            _, total, b = wrk(lua, 2, 32)
            completed, bad = completed + total, bad + b
        for _ in range(rounds):
            for who, lua in luas.items():
                c0 = cpu_seconds(proc.pid)
                r, total, b = wrk(lua, seconds, 32)
                cpu[who].append((cpu_seconds(proc.pid) - c0) / total * 1e6)
                rps[who].append(r)
                completed, bad = completed + total, bad + b
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # a clean stop flushes the usage buffer
        proc.wait(30)
    rows = asyncio.run(count_rows(db_url))
    admin, vkey = statistics.median(rps["admin"]), statistics.median(rps["virtual key"])
    cpu_admin, cpu_vkey = statistics.median(cpu["admin"]), statistics.median(cpu["virtual key"])
    return {"backend": name, "admin_rps": admin, "vkey_rps": vkey, "loss": 1 - vkey / admin,
            "cpu_us_admin": cpu_admin, "cpu_us_vkey": cpu_vkey, "cpu_loss": 1 - cpu_admin / cpu_vkey,
            "requests": completed, "usage_rows": rows, "non2xx": bad,
            "runs": {k: [round(x) for x in v] for k, v in rps.items()},
            "cpu_runs": {k: [round(x) for x in v] for k, v in cpu.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway-bench", type=Path, default=ROOT.parent / "shared" / "bench" / "gateway_bench.py")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    shared = shared_module(a.gateway_bench)
    shared.need("wrk", "wrk")
    shared.start_upstream()
    results = []
    try:
        for backend in a.backends.split(","):
            data_dir = Path(tempfile.mkdtemp(prefix=f"tt-gov-{backend}-"))
            if backend == "sqlite":
                url = f"sqlite+aiosqlite:///{data_dir / 'thinktank.db'}"
            else:
                url = asyncio.run(fresh_pg("tt_bench_governance"))
            res = run_backend(backend, url, data_dir, shared, a.seconds, a.rounds)
            results.append(res)
            print(json.dumps(res), flush=True)
    finally:
        shared.stop_upstream()
    print(f"\n{'backend':<10} {'admin req/s':>12} {'vkey req/s':>11} {'loss':>7} {'cpu/req admin':>14} "
          f"{'cpu/req vkey':>13} {'cpu loss':>9} {'requests':>9} {'usage rows':>11}")
    for r in results:
        print(f"{r['backend']:<10} {r['admin_rps']:>12.0f} {r['vkey_rps']:>11.0f} {r['loss']:>7.1%} "
              f"{r['cpu_us_admin']:>11.0f} us {r['cpu_us_vkey']:>10.0f} us {r['cpu_loss']:>9.1%} "
              f"{r['requests']:>9} {r['usage_rows']:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
