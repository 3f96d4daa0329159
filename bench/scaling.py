#!/usr/bin/env python3
"""Scale-out (issue 17): what one request costs, and how req/s grows from one worker to two.

    python bench/scaling.py costs --backend postgres       # per-request CPU, database and Redis work
    python bench/scaling.py workers --backend sqlite        # 1 worker beside 2 workers, interleaved rounds

Every request is a governed one: a virtual key with a day budget and request/token rate limits on the
priced model ``fake-priced`` (so a budget hold is taken and settled and a usage row written), metrics on.
An nginx fake upstream answers at once; wrk drives the load from a second process on loopback.

``costs`` runs one server (one worker) for ``--seconds`` at c=``--conc`` and reads, per completed request:
the server's CPU time (/proc), the database's transactions and rows written (PostgreSQL's pg_stat_database
for a fresh database of the run's own) and the Redis commands (INFO commandstats of a redis-server started
for the run on a port of its own, so nothing else is counted).

``workers`` runs a 1-worker and a 2-worker server side by side (each its own database) and alternates rounds
(1, 2, 2, 1, ...), so the drift of a shared machine hits both alike; reported: the median ratio of req/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import api, cpu_seconds, shared_module, start_server, start_upstream, stop_upstream, wrk

UPSTREAM_PORT = 18442
REDIS_PORT = 16391
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
MODEL = "fake-priced"


@contextlib.contextmanager
def private_redis(work: Path) -> Iterator[str]:
    proc = subprocess.Popen(["redis-server", "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
                             "--dir", str(work)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{REDIS_PORT}/0"
    for _ in range(100):
        ping = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], check=False, capture_output=True)
        if ping.returncode == 0:
            break
        time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def redis_calls() -> int:
    out = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "info", "commandstats"], capture_output=True,
                         text=True, check=True).stdout
    total = 0
    for line in out.splitlines():
        if line.startswith("cmdstat_") and not line.startswith(("cmdstat_info", "cmdstat_ping")):
            total += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return total


def psql(sql: str, db: str = "postgres") -> str:
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-Atc", sql], capture_output=True,
                          text=True, check=True).stdout.strip()


@contextlib.contextmanager
def fresh_pg() -> Iterator[tuple[str, str]]:
    name = f"tt_bench_{uuid.uuid4().hex[:8]}"
    psql(f'CREATE DATABASE "{name}"')
    try:
        yield name, f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            psql(f'DROP DATABASE "{name}" WITH (FORCE)')


def pg_counts(name: str) -> dict[str, int]:
    psql("SELECT pg_stat_clear_snapshot()", name)
    row = psql("SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database "
               f"WHERE datname = '{name}'", name)
    keys = ("transactions", "inserted", "updated", "deleted")
    return dict(zip(keys, (int(x) for x in row.split("|")), strict=True))


def governed_lua(shared: Any, port: int, keys: int = 1) -> Path:
    """wrk's script: every request through a virtual key with a budget and rate limits; with ``keys`` > 1, each
    request through the next of that many keys (each its own budget and limits: callers that share nothing)."""
    made = [api(port, "POST", "/api/v1/keys", {"name": f"bench-{i}", "budget_usd": 1_000_000, "budget_period": "day",
                                               "rpm": 100_000_000, "tpm": 1_000_000_000})["key"] for i in range(keys)]
    if keys == 1:
        return shared.lua_script([f"Authorization: Bearer {made[0]}"], MODEL, False)  # type: ignore[no-any-return]
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                       "max_tokens": 16})
    lua = Path(tempfile.mkstemp(suffix=".lua", dir="/tmp/gateway_bench")[1])
    lua.write_text("\n".join([
        "local keys = {" + ",".join(json.dumps(f"Bearer {k}") for k in made) + "}",
        "local n = 0",
        f"local body = {json.dumps(body)}",
        "request = function()",
        "  n = n % #keys + 1",
        '  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["Authorization"] = keys[n]}, body)',
        "end",
    ]) + "\n")
    return lua


def costs(a: argparse.Namespace, shared: Any, config: Path, work: Path) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {"THINKTANK_METRICS": "true"}
        dbname = None
        if a.backend == "postgres":
            dbname, url = stack.enter_context(fresh_pg())
            env["THINKTANK_DATABASE_URL"] = url
        if a.redis:
            env["THINKTANK_REDIS_URL"] = stack.enter_context(private_redis(work))
        server = start_server(18440, work / "costs", config, env=env)
        try:
            lua = governed_lua(shared, 18440, a.keys)
            wrk(18440, lua, 2, a.conc)  # warm-up
            time.sleep(1.5)  # the warm-up's usage batch
            pg0 = pg_counts(dbname) if dbname else None
            r0 = redis_calls() if a.redis else 0
            c0 = cpu_seconds(server.proc.pid)
            rps, total, bad = wrk(18440, lua, a.seconds, a.conc)
            cpu = cpu_seconds(server.proc.pid) - c0
            time.sleep(1.5)  # the last usage batch and budget flush
            pg1 = pg_counts(dbname) if dbname else None
            r1 = redis_calls() if a.redis else 0
        finally:
            server.stop()
    result: dict[str, Any] = {"backend": a.backend, "redis": a.redis, "keys": a.keys, "conc": a.conc,
                              "seconds": a.seconds,
                              "rps": round(rps), "requests": total, "non2xx": bad,
                              "cpu_us_per_request": round(cpu / total * 1e6)}
    if pg0 is not None and pg1 is not None:
        result["db_per_request"] = {k: round((pg1[k] - pg0[k]) / total, 4) for k in pg0}
    if a.redis:
        result["redis_commands_per_request"] = round((r1 - r0) / total, 3)
    return result


def workers(a: argparse.Namespace, shared: Any, config: Path, work: Path) -> dict[str, Any]:
    ports = {1: 18445, 2: 18446}
    rps: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}
    bad = 0
    with contextlib.ExitStack() as stack:
        servers = {}
        for n, port in ports.items():
            env = {"THINKTANK_METRICS": "true"}
            if a.backend == "postgres":
                env["THINKTANK_DATABASE_URL"] = stack.enter_context(fresh_pg())[1]
            servers[n] = start_server(port, work / f"w{n}", config, workers=n, env=env)
            stack.callback(servers[n].stop)
        luas = {n: governed_lua(shared, port) for n, port in ports.items()}
        for n, port in ports.items():
            wrk(port, luas[n], 2, a.conc)  # warm-up
        for round_no in range(a.rounds):
            for n in ((1, 2) if round_no % 2 == 0 else (2, 1)):
                c0 = cpu_seconds(servers[n].proc.pid)
                r, total, b = wrk(ports[n], luas[n], a.seconds, a.conc)
                cpu[n].append((cpu_seconds(servers[n].proc.pid) - c0) / total * 1e6)
                rps[n].append(r)
                bad += b
            print(f"round {round_no + 1}: 1 worker {rps[1][-1]:.0f} req/s ({cpu[1][-1]:.0f} us/req), "
                  f"2 workers {rps[2][-1]:.0f} req/s ({cpu[2][-1]:.0f} us/req)", flush=True)
    ratio = statistics.median(two / one for one, two in zip(rps[1], rps[2], strict=True))
    return {"backend": a.backend, "conc": a.conc, "seconds": a.seconds, "rounds": a.rounds,
            "rps": {n: round(statistics.median(v)) for n, v in rps.items()},
            "runs": {n: [round(x) for x in v] for n, v in rps.items()}, "ratio": round(ratio, 3), "non2xx": bad,
            "cpu_us_per_request": {n: round(statistics.median(v)) for n, v in cpu.items()},
            # what two workers would do on two cores of their own: twice one worker's rate, less what a request
            # costs more with two (the load generator and the fake upstream share these two cores)
            "ratio_on_own_cores": round(2 * statistics.median(cpu[1]) / statistics.median(cpu[2]), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["costs", "workers"])
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--redis", action="store_true", help="budgets and rate limits in Redis (costs)")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--keys", type=int, default=1, help="costs: spread the requests over this many keys (budgets)")
    a = ap.parse_args()
    shared = shared_module()
    shared.need("wrk", "wrk")
    shared.need("nginx", "nginx-light")
    work = Path(tempfile.mkdtemp(prefix="tt-scaling-"))
    config = start_upstream(shared.COMPLETION, work / "upstream", UPSTREAM_PORT)
    try:
        result = costs(a, shared, config, work) if a.what == "costs" else workers(a, shared, config, work)
    finally:
        stop_upstream(work / "upstream")
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
