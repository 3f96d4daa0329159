#!/usr/bin/env python3
"""How long a run's event takes to reach a client connected to another process (issue 17, part 3).

    python bench/cross_process_events.py                 # 12 rounds: postgres, redis, local, interleaved
    python bench/cross_process_events.py --rounds 20 --modes postgres,redis

Three pairs of real ``thinktank serve`` processes (A, B) share one fresh PostgreSQL database; each pair uses
another event bus (``THINKTANK_EVENT_BUS``): ``postgres`` (LISTEN/NOTIFY), ``redis`` (pub/sub, the local
Redis), ``local`` (no bus: B polls the database every 250 ms, as before the bus; A saves a running run every
0.5 s, and not at all in its first 2 s). Each round starts, for each pair in turn (postgres, redis, local,
then the next round), an ensemble run on A with ``stream: true`` and follows it on B
(``GET /api/v1/runs/{id}/events``); the members answer after 0.3 s, then the chairman streams 60 words 20 ms
apart (``synthesis_token`` events). Every event carries ``ts``, the time A emitted it (A's wall clock, this
machine's): its delay is when this script read it from the SSE stream minus ``ts``, on B (another process)
and on A (the run's own stream, in-process). Only the events emitted after B's stream had started count
(``synthesis_token``, ``stage_*``, ``cost``, ``model_answered``, ``done``). Reported per bus: the median,
90th and 99th percentile and maximum delay on B, and the added delay of B (B minus A, event by event).
``BENCH_DEBUG=1`` prints the three slowest events of each run (seq, type, delay on B, delay on A).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("THINKTANK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("THINKTANK_BENCH_REDIS", "redis://127.0.0.1:6379/0")
WORDS = " ".join(f"w{i}" for i in range(60))
CONFIG = f"""
models:
  - {{name: m1, provider: mock, options: {{replies: ["answer one"], latency: 0.3}}}}
  - {{name: m2, provider: mock, options: {{replies: ["answer two"], latency: 0.3}}}}
  - {{name: writer, provider: mock, options: {{replies: ["{WORDS}"], chunk_delay: 0.02}}}}
ensembles:
  - {{name: panel, members: [m1, m2], strategy: heuristic, chairman: writer}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "thinktank", "serve", "--port", str(self.port)],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"a server exited; see {log}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"a server did not become ready; see {log}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self._log.close()


async def sse(response: httpx.Response) -> Any:
    """(received at, event data) for each event of an SSE stream."""
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield time.time(), json.loads(line[6:])


async def one_run(client: httpx.AsyncClient, a: str, b: str) -> tuple[list[float], list[float]]:
    """Delays (s) on B, and B minus A, of the events emitted after B's stream started."""
    on_a: dict[int, float] = {}
    on_b: dict[int, float] = {}
    types: dict[int, str] = {}
    async with client.stream("POST", a + "/api/v1/ensembles",
                             json={"ensemble": "panel", "question": "q", "stream": True}) as started:
        run_id = started.headers["x-thinktank-run-id"]
        b_started = asyncio.Event()
        b_since: list[float] = []

        async def follow() -> None:
            async with client.stream("GET", f"{b}/api/v1/runs/{run_id}/events") as followed:
                b_since.append(time.time())
                b_started.set()
                async for at, event in sse(followed):
                    on_b[event["seq"]] = at - event["ts"]

        follower = asyncio.create_task(follow())
        emitted: dict[int, float] = {}
        async for at, event in sse(started):
            on_a[event["seq"]] = at - event["ts"]
            emitted[event["seq"]] = event["ts"]
            types[event["seq"]] = event["type"]
        await follower
    live = [s for s, ts in emitted.items() if ts > b_since[0] and s in on_b]
    if os.environ.get("BENCH_DEBUG"):
        worst = sorted(live, key=lambda s: -on_b[s])[:3]
        print([(s, types[s], round(on_b[s] * 1000, 1), round(on_a[s] * 1000, 1)) for s in worst], file=sys.stderr)
    return [on_b[s] for s in live], [on_b[s] - on_a[s] for s in live]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main_async(args: argparse.Namespace, pairs: dict[str, tuple[Server, Server]], key: str) -> None:
    delays: dict[str, list[float]] = {m: [] for m in pairs}
    added: dict[str, list[float]] = {m: [] for m in pairs}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=120, headers=headers) as client:
        for _ in range(args.warmup):
            for a, b in pairs.values():
                await one_run(client, a.url, b.url)
        for r in range(args.rounds):
            for mode, (a, b) in pairs.items():
                d, x = await one_run(client, a.url, b.url)
                delays[mode] += d
                added[mode] += x
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{'bus':<9} {'events':>6}  {'B p50':>8} {'B p90':>8} {'B p99':>8} {'B max':>8}   "
          f"{'added p50':>9} {'added p90':>9} {'added p99':>9}   (ms)")
    for mode in pairs:
        d = [v * 1000 for v in delays[mode]]
        x = [v * 1000 for v in added[mode]]
        print(f"{mode:<9} {len(d):>6}  {statistics.median(d):>8.2f} {pct(d, 90):>8.2f} {pct(d, 99):>8.2f} "
              f"{max(d):>8.2f}   {statistics.median(x):>9.2f} {pct(x, 90):>9.2f} {pct(x, 99):>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--modes", default="postgres,redis,local")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    db = f"tt_bench_events_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{db}"'))
    servers: list[Server] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "c.yaml").write_text(CONFIG)
            base = {k: v for k, v in os.environ.items() if not k.startswith("THINKTANK_")}
            base.update(THINKTANK_CONFIG=str(work / "c.yaml"), THINKTANK_DATA_DIR=str(work / "data"),
                        THINKTANK_DATABASE_URL=PG_ADMIN.rsplit("/", 1)[0] + "/" + db, THINKTANK_METRICS="false",
                        THINKTANK_LOG_LEVEL="warning", HOME=str(work))
            key = subprocess.run([sys.executable, "-m", "thinktank", "keys", "create", "--name", "bench"], env=base,
                                 capture_output=True, text=True, check=True).stdout.strip()
            pairs: dict[str, tuple[Server, Server]] = {}
            for mode in modes:
                env = {**base, "THINKTANK_EVENT_BUS": mode}
                if mode == "redis":
                    env["THINKTANK_REDIS_URL"] = REDIS
                a = Server(env, work / f"{mode}-a.log")
                servers.append(a)
                b = Server(env, work / f"{mode}-b.log")
                servers.append(b)
                pairs[mode] = (a, b)
            asyncio.run(main_async(args, pairs, key))
    finally:
        for s in servers:
            s.stop()
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
