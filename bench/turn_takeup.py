#!/usr/bin/env python3
"""How long a thread turn whose server was killed (SIGKILL) waits before another server answers it (issue 17).

    python bench/turn_takeup.py --rounds 5                       # stale after 5 s (the default) and 2 s
    python bench/turn_takeup.py --rounds 3 --stale-after 5

For each ``THINKTANK_RUN_STALE_AFTER`` given, a fresh PostgreSQL database and a server B that stays up; each
round (the settings interleaved) starts a server A on the same database, streams a turn from it (a mock model
that writes 80 words 50 ms apart), kills A after the third word, and at once follows the turn on B with
``Last-Event-ID``. Measured from the kill: when B's stream gives the ``restart`` event (the turn was taken
up), its first new word, and the stored message (the whole answer written again).
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
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_process_events import PG_ADMIN, Server

WORDS = " ".join(f"w{i}" for i in range(80))
CONFIG = f"""
models:
  - {{name: writer, provider: mock, options: {{replies: ["{WORDS}"], chunk_delay: 0.05}}}}
memory: {{enabled: false}}
"""


def one_round(a: Server, b: Server, key: str) -> tuple[float, float, float]:
    headers = {"Authorization": f"Bearer {key}"}
    thread = httpx.post(f"{a.url}/api/v1/threads", headers=headers, json={"model": "writer"}, timeout=10).json()
    last = 0
    deltas = 0
    with httpx.stream("POST", f"{a.url}/api/v1/threads/{thread['id']}/messages", headers=headers, timeout=30,
                      json={"content": "Say it", "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("id: "):
                last = int(line[4:])
            elif line.startswith("event: delta"):
                deltas += 1
                if deltas == 3:
                    break
        a.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        a.proc.wait(10)
    restart = first = done = 0.0
    with httpx.stream("GET", f"{b.url}/api/v1/threads/{thread['id']}/turn/events", timeout=120,
                      headers={**headers, "Last-Event-ID": str(last)}) as r:
        name = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                now = time.monotonic() - killed
                if name == "restart":
                    restart = now
                elif name == "delta" and restart and not first:
                    first = now
                elif name == "message":
                    done = now
                    assert json.loads(line[6:])["message"]["content"] == WORDS
                    break
    return restart, first, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stale-after", default="5,2")
    args = parser.parse_args()
    settings = [s for s in args.stale_after.split(",") if s]
    dbs = {s: f"tt_bench_turns_{secrets.token_hex(4)}" for s in settings}

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    for db in dbs.values():
        asyncio.run(admin(f'CREATE DATABASE "{db}"'))
    servers: list[Server] = []
    results: dict[str, list[tuple[float, float, float]]] = {s: [] for s in settings}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "c.yaml").write_text(CONFIG)
            envs: dict[str, dict[str, str]] = {}
            keys: dict[str, str] = {}
            bs: dict[str, Server] = {}
            for stale, db in dbs.items():
                env = {k: v for k, v in os.environ.items() if not k.startswith("THINKTANK_")}
                env.update(THINKTANK_CONFIG=str(work / "c.yaml"), THINKTANK_DATA_DIR=str(work / f"data-{stale}"),
                           THINKTANK_DATABASE_URL=PG_ADMIN.rsplit("/", 1)[0] + "/" + db, THINKTANK_METRICS="false",
                           THINKTANK_LOG_LEVEL="warning", HOME=str(work), THINKTANK_RUN_STALE_AFTER=stale,
                           THINKTANK_ADMIN_KEY="tt-bench-admin-0123456789")
                envs[stale] = env
                keys[stale] = subprocess.run([sys.executable, "-m", "thinktank", "keys", "create", "--name", "bench"],
                                             env=env, capture_output=True, text=True, check=True).stdout.strip()
                b = bs[stale] = Server(env, work / f"b-{stale}.log")
                servers.append(b)
            for r in range(args.rounds):
                for stale in settings:
                    a = Server(envs[stale], work / f"a-{stale}-{r}.log")
                    results[stale].append(one_round(a, bs[stale], keys[stale]))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for s in servers:
            s.stop()
        for db in dbs.values():
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    print(f"{'stale after':>11}  {'runs':>4}  {'restart p50 (min-max)':>22}  {'first word p50':>14}  "
          f"{'answer stored p50 (min-max)':>28}   (s from the kill)")
    for stale in settings:
        rows = results[stale]
        restart, first, done = ([row[i] for row in rows] for i in range(3))
        print(f"{stale + ' s':>11}  {len(rows):>4}  {statistics.median(restart):>8.2f} ({min(restart):.2f}-"
              f"{max(restart):.2f})      {statistics.median(first):>14.2f}  {statistics.median(done):>14.2f} "
              f"({min(done):.2f}-{max(done):.2f})")


if __name__ == "__main__":
    main()
