#!/usr/bin/env python3
"""What the accounting journal costs the gateway (issue 17): the same server with the journal on and off, side by side.

    python bench/journal_overhead.py --pin --rounds 16 --seconds 4          # journal-on server started first
    python bench/journal_overhead.py --pin --rounds 16 --seconds 4 --swap   # journal-off server started first
    python bench/journal_overhead.py --pin --rounds 16 --seconds 4 --same off  # A/A: the method's own noise
    python bench/journal_overhead.py --micro                                # the journal's own calls, timeit

The method of bench/metrics_overhead.py (whose helpers it uses): two thinktank servers at once on the config of
bench/thinktank-bench.yaml, each with its own SQLite data directory, one with ``THINKTANK_JOURNAL=true`` and one
with ``false`` (nothing else differs); both called through a virtual key with a budget and rate limits on
``fake-priced`` (every request takes a budget hold, settles it and writes a usage row: with the journal on, one
charge line and one usage line a request); an nginx fake upstream answering at once; wrk at c=32; the runs
alternate (on, off, off, on, ...). Reported: median req/s, the median per-round ratio on/off, and the server's
CPU time per completed request (from /proc), which the load of other tenants disturbs much less than req/s.
Afterwards each server is stopped cleanly: its usage rows must equal the requests it completed, and the
journal-on server's journal directory must be empty.

``--micro`` times the accounting part of a governed request (admission, budget hold, the call accounted and
settled, the usage row, the admission's end) in a loop, journal on and off interleaved in one process.

``--inproc``: one app in this process, called as an ASGI app (no HTTP server, no client process), batches of
``--batch`` requests at c=32, its journal attached and detached between batches (on, off, off, on, ...); the
process's CPU time per request in each mode. On a shared machine the wrk runs above move by ±5 % from round to
round; alternating batches of a fraction of a second in one app puts both modes under the same load.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from harness import api, cpu_seconds, stop_upstream, wrk
from metrics_overhead import ADMIN, ROOT, start_upstream, usage_rows

from gateway import shared_module  # bench/gateway.py, beside this script

PORTS = {"on": 18440, "off": 18441}
MODEL = "fake-priced"


def start(name: str, port: int, data_dir: Path, journal: bool, config: Path, pin: list[str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THINKTANK_", "PROMETHEUS_"))}
    env.update({"THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATA_DIR": str(data_dir),
                "THINKTANK_JOURNAL": "true" if journal else "false"})
    proc = subprocess.Popen(
        [*pin, sys.executable, "-m", "thinktank", "serve", "--config", str(config), "--port", str(port),
         "--log-level", "warning"], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=open(data_dir / "server.log", "w"),  # noqa: SIM115
    )
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1)
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"thinktank ({name}) did not start; see {data_dir / 'server.log'}")


def micro(rounds: int) -> int:
    """The governed request path's accounting, in a loop, with the journal and without (interleaved): admission,
    budget hold, the call accounted and settled, the usage row recorded, the admission finished."""
    sys.path.insert(0, str(ROOT / "src"))
    from thinktank.accounts.budgets import BudgetLedger, BudgetSpec, SqlBudgetStore
    from thinktank.accounts.governance import Gate
    from thinktank.accounts.journal import Journal
    from thinktank.accounts.principal import Principal
    from thinktank.accounts.ratelimit import RateLimiter
    from thinktank.accounts.usage import UsageWriter
    from thinktank.clock import SystemClock
    from thinktank.gateway.router import UsageRecord
    from thinktank.store.db import Database
    from thinktank.store.migrate import upgrade

    async def run() -> dict[str, list[float]]:
        work = Path(tempfile.mkdtemp(prefix="tt-journal-micro-"))
        url = f"sqlite+aiosqlite:///{work / 'tt.db'}"
        await asyncio.to_thread(upgrade, url)
        db, clock = Database(url), SystemClock()
        journal = Journal(work / "journal", clock, database="d", budgets="b")
        journal.open()
        ledger = BudgetLedger(SqlBudgetStore(db, clock), clock)
        spec = BudgetSpec("key", "key_0123456789abcdef", 1e9, "day", "bench")
        principal = Principal(user_id="usr_0123456789abcdef", role="member", key_id="key_0123456789abcdef",
                              budgets=(spec,))
        gates = {name: Gate(RateLimiter(None, {}), ledger, UsageWriter(db, clock, journal=j), clock, journal=j)
                 for name, j in (("on", journal), ("off", None))}
        from thinktank.gateway.pricing import Price
        from thinktank.gateway.strategies import Deployment

        dep = Deployment(MODEL, None, None, Price(2.5, 10.0), 30.0)  # type: ignore[arg-type]  # (never called)
        record = UsageRecord(MODEL, MODEL, 25, 12, 0.000183, 0.0012, 200, False, 1)
        cpu: dict[str, list[float]] = {"on": [], "off": []}

        async def one(gate: Gate) -> None:
            admission = await gate.admit(principal, "127.0.0.1", MODEL, 40)
            ctx = admission.ctx
            hold = await ctx.meter.reserve(dep, 25, 16)  # type: ignore[union-attr]
            if ctx.account is not None:
                ctx.account.charged(record, hold, False)
            await hold.settle(record.cost)
            ctx.records.append(record)
            admission.record(200)
            await admission.finish(200)

        for warm in gates.values():  # warm-up: the lease taken
            for _ in range(200):
                await one(warm)
        n = 2000
        for r in range(rounds):
            for name in (("on", "off") if r % 2 == 0 else ("off", "on")):
                gate = gates[name]
                ledger.journal = journal if name == "on" else None
                t = time.process_time()
                for _ in range(n):
                    await one(gate)
                cpu[name].append((time.process_time() - t) / n * 1e6)
                await gate.usage.flush()
                journal.tidy(gates["on"].usage.committed_seq)
        journal.close(journal.seq)
        await ledger.close()
        await db.close()
        return cpu

    cpu = asyncio.run(run())
    diff = [a - b for a, b in zip(cpu["on"], cpu["off"], strict=True)]
    print(f"accounting of a governed request: journal on {statistics.median(cpu['on']):.2f} us, off "
          f"{statistics.median(cpu['off']):.2f} us; median difference {statistics.median(diff):.2f} us "
          f"(rounds: {[round(d, 2) for d in diff]})")
    return 0


async def inproc(config: Path, rounds: int, batch: int, conc: int, same: str | None) -> dict[str, Any]:
    """One app in this process; between batches its journal is attached (the gate's and the usage writer's) or
    detached, so the two modes share everything else: the same database, caches, memory and moment."""
    sys.path.insert(0, str(ROOT / "src"))
    from thinktank.api.app import create_app
    from thinktank.config import Settings

    data = Path(tempfile.mkdtemp(prefix="tt-journal-inproc-"))
    app = create_app(Settings(data_dir=data, admin_key=ADMIN, config=config, journal=True), quiet=True)
    close = await _lifespan(app)
    state = app.state
    journal = state.gate.journal
    status, body = await _call(app, "POST", "/api/v1/keys", ADMIN, {
        "name": "bench", "budget_usd": 1_000_000, "budget_period": "day", "rpm": 100_000_000, "tpm": 1_000_000_000})
    assert status == 201, body
    key = json.loads(body)["key"]
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 16}
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    done = dict.fromkeys(cpu, 0)

    def attach(name: str) -> None:
        on = (same or name) == "on"
        state.gate.journal = journal if on else None
        state.usage_writer._journal = journal if on else None
        state.ledger.journal = journal if on else None

    async def load(name: str, n: int) -> None:
        left = [n]

        async def one() -> None:
            while left[0] > 0:
                left[0] -= 1
                status, body = await _call(app, "POST", "/v1/chat/completions", key, chat)
                assert status == 200, body
                done[name] += 1

        await asyncio.gather(*(one() for _ in range(conc)))

    for name in cpu:  # warm-up
        attach(name)
        await load(name, 4 * batch)
    for r in range(rounds):
        for name in (("on", "off") if r % 2 == 0 else ("off", "on")):
            attach(name)
            t0 = time.process_time()
            await load(name, batch)
            cpu[name].append((time.process_time() - t0) / batch * 1e6)
        if (r + 1) % 25 == 0:
            print(f"round {r + 1}: on {statistics.median(cpu['on']):.1f} us/req, "
                  f"off {statistics.median(cpu['off']):.1f} us/req (medians so far)", flush=True)
    attach("on")
    await close()
    diffs = [a - b for a, b in zip(cpu["on"], cpu["off"], strict=True)]
    return {"cpu_us": {n: round(statistics.median(v), 1) for n, v in cpu.items()},
            "ratio_cpu": round(statistics.median(a / b for a, b in zip(cpu["on"], cpu["off"], strict=True)), 4),
            "diff_us": round(statistics.median(diffs), 2), "diff_mean_us": round(statistics.mean(diffs), 2),
            "requests": done, "same": same}


async def _call(app: object, method: str, path: str, key: str, body: object) -> tuple[int, bytes]:
    raw = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode()),
                         (b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    sent = [False]
    status, chunks = [0], []

    async def receive() -> dict[str, object]:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            status[0] = int(message["status"])  # type: ignore[call-overload]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)  # type: ignore[operator]
    return status[0], b"".join(chunks)  # type: ignore[arg-type]


async def _lifespan(app: object) -> Callable[[], Awaitable[None]]:
    """Start ``app``'s lifespan; returns the coroutine function that ends it."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}},  # type: ignore[operator]
                                     inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started

    async def close() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    return close


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway-bench", type=Path, default=ROOT.parent / "shared" / "bench" / "gateway_bench.py")
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--same", choices=["on", "off"], help="an A/A run: both servers with the journal on (or off)")
    ap.add_argument("--swap", action="store_true", help="the journal-off server starts first, on the first port")
    ap.add_argument("--pin", action="store_true", help="servers on CPU 1, wrk on CPU 0 (taskset)")
    ap.add_argument("--micro", action="store_true", help="time the journal's calls only")
    ap.add_argument("--inproc", action="store_true", help="both apps in this process, batches interleaved")
    ap.add_argument("--batch", type=int, default=400, help="requests a batch (--inproc)")
    a = ap.parse_args()
    if a.micro:
        return micro(a.rounds)
    if a.inproc:
        shared = shared_module(a.gateway_bench)
        shared.need("nginx", "nginx-light")
        work = Path(tempfile.mkdtemp(prefix="tt-journal-upstream-"))
        config = start_upstream(shared, work)
        try:
            result = asyncio.run(inproc(config, a.rounds, a.batch, a.conc, a.same))
        finally:
            stop_upstream(work)
        print(json.dumps(result))
        print(f"journal on {result['cpu_us']['on']} us CPU/request, off {result['cpu_us']['off']} "
              f"(median of per-round ratios {result['ratio_cpu']}, of differences {result['diff_us']} us)")
        return 0
    pin_server = ["taskset", "-c", "1"] if a.pin else []
    pin_wrk = ["taskset", "-c", "0"] if a.pin else []
    shared = shared_module(a.gateway_bench)
    shared.need("wrk", "wrk")
    shared.need("nginx", "nginx-light")
    work = Path(tempfile.mkdtemp(prefix="tt-journal-upstream-"))
    config = start_upstream(shared, work)
    dirs = {name: Path(tempfile.mkdtemp(prefix=f"tt-journal-{name}-")) for name in PORTS}
    if a.swap:
        PORTS.update(on=PORTS["off"], off=PORTS["on"])
    procs = {}
    for name in sorted(PORTS, key=PORTS.__getitem__):
        procs[name] = start(name, PORTS[name], dirs[name], (a.same or name) == "on", config, pin_server)
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
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)  # a clean stop writes the usage rows and drops the journal
        for proc in procs.values():
            proc.wait(60)
        stop_upstream(work)
    rows = {name: asyncio.run(usage_rows(d)) for name, d in dirs.items()}
    left = sorted(p.name for p in (dirs["on"] / "journal").glob("*")) if (dirs["on"] / "journal").exists() else []
    ratio = statistics.median(on / off for on, off in zip(rps["on"], rps["off"], strict=True))
    cpu_ratio = statistics.median(on / off for on, off in zip(cpu["on"], cpu["off"], strict=True))
    result = {
        "same": a.same, "swap": a.swap, "pin": a.pin, "conc": a.conc, "seconds": a.seconds, "rounds": a.rounds,
        "rps": {n: round(statistics.median(v)) for n, v in rps.items()},
        "cpu_us": {n: round(statistics.median(v)) for n, v in cpu.items()},
        "runs": {n: [round(x) for x in v] for n, v in rps.items()},
        "ratio_rps": round(ratio, 3), "ratio_cpu": round(cpu_ratio, 3),
        "requests": completed, "non2xx": bad, "usage_rows": rows, "journal_left": left,
    }
    print(json.dumps(result))
    print(f"\njournal on:  {result['rps']['on']:>6} req/s  {result['cpu_us']['on']:>4} us CPU/request")
    print(f"journal off: {result['rps']['off']:>6} req/s  {result['cpu_us']['off']:>4} us CPU/request")
    print(f"on/off, median of rounds: req/s {ratio:.3f} ({(ratio - 1) * 100:+.1f} % req/s with the journal on), "
          f"CPU/request {cpu_ratio:.3f} ({(cpu_ratio - 1) * 100:+.1f} %)")
    print(f"requests completed {completed}, usage rows {rows}, non-2xx {bad}, journal files left {left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
