#!/usr/bin/env python3
"""What handing a run over to a worker costs: an ensemble executed by the server that took the request (L)
against one that an API server (``THINKTANK_WORKER=false``) queues as ``run.execute`` and follows while a
separate worker executes it (Q).

    PYTHONPATH=src python bench/run_handover.py              # L, Q, L': 32 rounds, about 3 minutes
    PYTHONPATH=src python bench/run_handover.py --rounds 8 --delay 0.1 --json samples.json
    PYTHONPATH=src python bench/run_handover.py --arms Q,Qb,L --ref Qb --base-src /tmp/old/src  # a change to Q

Real ``thinktank serve`` processes (bench/harness.py starts them), each arm on a fresh PostgreSQL database of its
own (``THINKTANK_BENCH_PG``, default the local PostgreSQL; the event bus follows the database: LISTEN/NOTIFY):

- ``L``: one server, a worker (the default), executing its runs itself;
- ``Q``: an API server with ``THINKTANK_WORKER=false`` and a worker (``thinktank serve``, worker on); the
  requests go to the API server;
- ``L'``: a second server like ``L``: the A/A check, the method's own noise.

The ensemble: three members and a chairman (heuristic ranking, chairman synthesis), priced models on a fake
OpenAI upstream on loopback (aiohttp, a process of its own: ``--serve-upstream``) that answers after ``--delay``
seconds, the chairman streamed; a virtual key with a budget (every call takes a budget hold); metrics on.

Each round runs, for every mode and every arm in turn (the arms' order rotates from round to round, so that
the machine's drift hits them alike): ``--seq`` runs one after the other, then ``--conc`` at once, each through
``POST /api/v1/ensembles`` answered whole (``json``: the total time) and streamed (``sse``: the time to the
``run_started`` event, to the first ``synthesis_token``, to ``done``, to the end of the stream). From the events'
``ts`` (the emitting process's wall clock, this machine's) the streamed runs also give where Q's time goes:
``start`` (``run_started`` emitted → the first stage started: launch, or queue + notify + claim + load), ``bus``
(``done`` emitted → read by this script) and ``tail`` (``done`` read → the end of the stream: in L next to nothing,
the run's own stream ends at ``done`` and its final save follows; in Q the worker's final save and the follower's
read of the final record). CPU per run of each process from /proc (harness ``cpu_seconds``). Afterwards each
server's ``/metrics`` must show who ended the runs (Q's API server none, its worker all). ``Qb``: Q on another
source tree (``--base-src``), for a change's before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from cross_process_events import free_port, sse
from harness import Started, api, cpu_seconds, start_server

PG_ADMIN = os.environ.get("THINKTANK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MEMBERS = ("m1", "m2", "m3")
CHAIR = "chair"
MODES = ("seq-json", "seq-sse", "conc-json", "conc-sse")
QUESTION = "Which is better for a small team's first web service, PostgreSQL or SQLite?"


# -- the fake upstream (a process of its own) ---------------------------------------------------------------------
def serve_upstream(port: int, delay: float, words: int) -> None:
    """Chat completions after ``delay`` seconds: a member's answer whole, the chairman's streamed a word a chunk."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        await asyncio.sleep(delay)
        model = str(body.get("model", "m"))
        text = " ".join(f"{model}-w{i}" for i in range(words))
        usage = {"prompt_tokens": 60, "completion_tokens": words, "total_tokens": 60 + words}
        head = {"id": f"chatcmpl-{secrets.token_hex(4)}", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            return web.json_response({**head, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {**head, "object": "chat.completion.chunk"}

        def frame(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + orjson.dumps({**chunk, "choices": choices, **extra}) + b"\n\n"

        out = [frame([{"index": 0, "delta": {"role": "assistant", "content": w} if k == 0 else {"content": " " + w},
                       "finish_reason": None}]) for k, w in enumerate(text.split())]
        out.append(frame([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            out.append(frame([], usage=usage))
        out.append(b"data: [DONE]\n\n")
        await resp.write(b"".join(out))
        await resp.write_eof()
        return resp

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def write_config(path: Path, upstream: int) -> None:
    model = {"provider": "openai", "api_key": "sk-fake", "base_url": f"http://127.0.0.1:{upstream}/v1",
             "input_price": 2.5, "output_price": 10.0}
    config = {"models": [{"name": n, "model": n, **model} for n in (*MEMBERS, CHAIR)], "ensembles": [
        {"name": "trio", "members": list(MEMBERS), "strategy": "heuristic", "synthesis": "chairman",
         "chairman": CHAIR}]}
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML


# -- the arms ------------------------------------------------------------------------------------------------------
@dataclass
class Arm:
    name: str
    entry: Started
    """The server the requests go to."""
    procs: dict[str, Started]
    """Every process of the arm, by role (their CPU is counted)."""
    key: str = ""
    json: dict[str, list[float]] = field(default_factory=dict)
    """Per mode: the total times (s)."""
    sse: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """Per mode: each streamed run's times (s)."""
    cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    """(mode, role) → CPU seconds per run, one value a batch."""


async def create_database(name: str) -> str:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def start_arm(name: str, work: Path, config: Path, database: str, src: Path | None) -> Arm:
    """``L``-like arms (a name starting with L) are one server; ``Q``-like ones an API server and a worker.
    ``src``: the source tree the arm's processes import thinktank from (default: this interpreter's)."""
    env = {"THINKTANK_DATABASE_URL": database, "THINKTANK_METRICS": "true", "HOME": str(work)}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    tag = name.replace("'", "2")
    if name.startswith("L"):
        server = start_server(free_port(), work / tag, config, env=env)
        return Arm(name, server, {"server": server})
    # The API server first: it brings the fresh database to the schema's head before the worker starts.
    front = start_server(free_port(), work / f"{tag}-api", config, env={**env, "THINKTANK_WORKER": "false"})
    worker = start_server(free_port(), work / f"{tag}-worker", config, env=env)
    return Arm(name, front, {"api": front, "worker": worker})


# -- one run -------------------------------------------------------------------------------------------------------
def body(stream: bool) -> dict[str, Any]:
    return {"ensemble": "trio", "question": QUESTION, "stream": stream}


async def run_json(client: httpx.AsyncClient, arm: Arm) -> float:
    t0 = time.perf_counter()
    resp = await client.post(f"http://127.0.0.1:{arm.entry.port}/api/v1/ensembles", json=body(False),
                             headers={"Authorization": f"Bearer {arm.key}"})
    took = time.perf_counter() - t0
    record = resp.json()
    if resp.status_code != 200 or record.get("status") != "completed" or not (record.get("result") or {}).get(
            "answer"):
        raise SystemExit(f"{arm.name}: a run did not complete: {resp.status_code} {resp.text[:300]}")
    return took


async def run_sse(client: httpx.AsyncClient, arm: Arm) -> dict[str, float]:
    """Seconds from the request to the run's first event, first synthesis token, done and end of the stream, and
    the ``start``, ``bus`` and ``tail`` parts (see the module's doc)."""
    out: dict[str, float] = {}
    ts: dict[str, float] = {}
    t0 = time.time()
    async with client.stream("POST", f"http://127.0.0.1:{arm.entry.port}/api/v1/ensembles", json=body(True),
                             headers={"Authorization": f"Bearer {arm.key}"}) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise SystemExit(f"{arm.name}: a streamed run was refused: {resp.status_code} {resp.text[:300]}")
        async for at, event in sse(resp):
            kind = event["type"]
            if kind == "run_started":
                out["first"], ts["run_started"] = at - t0, event["ts"]
            elif kind == "stage_started" and "stage" not in ts:
                ts["stage"] = event["ts"]
            elif kind == "synthesis_token" and "token" not in out:
                out["token"] = at - t0
            elif kind == "done":
                out["done"], ts["done"] = at - t0, event["ts"]
                if event.get("status") != "completed":
                    raise SystemExit(f"{arm.name}: a streamed run ended {event}")
    end = time.time()
    if len(out) != 3 or len(ts) != 3:
        raise SystemExit(f"{arm.name}: a streamed run missed events: {out} {ts}")
    out["end"] = end - t0
    out["start"] = ts["stage"] - ts["run_started"]
    out["bus"] = t0 + out["done"] - ts["done"]
    out["tail"] = out["end"] - out["done"]
    return out


async def batch(client: httpx.AsyncClient, arm: Arm, mode: str, n: int) -> None:
    """``n`` runs of ``mode`` (one after the other, or all at once) on ``arm``; their times and CPU recorded."""
    before = {role: cpu_seconds(p.proc.pid) for role, p in arm.procs.items()}
    streamed = mode.endswith("sse")
    one = run_sse if streamed else run_json
    if mode.startswith("seq"):
        results: list[Any] = [await one(client, arm) for _ in range(n)]
    else:
        results = list(await asyncio.gather(*(one(client, arm) for _ in range(n))))
    for role, p in arm.procs.items():
        arm.cpu.setdefault((mode, role), []).append((cpu_seconds(p.proc.pid) - before[role]) / n)
    if streamed:
        arm.sse.setdefault(mode, []).extend(results)
    else:
        arm.json.setdefault(mode, []).extend(results)


async def measure(arms: list[Arm], modes: list[str], rounds: int, seq: int, conc: int, warmup: int) -> None:
    limits = httpx.Limits(max_connections=4 * conc, max_keepalive_connections=4 * conc)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for arm in arms:  # warm-up (not counted): connections, caches, budget leases
            for _ in range(warmup):
                await run_json(client, arm)
                await run_sse(client, arm)
            await asyncio.gather(*(run_json(client, arm) for _ in range(conc)))
        started = time.monotonic()
        for r in range(rounds):
            order = arms[r % len(arms):] + arms[:r % len(arms)]
            for mode in modes:
                for arm in order:
                    await batch(client, arm, mode, seq if mode.startswith("seq") else conc)
            print(f"round {r + 1}/{rounds} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)


# -- the report ----------------------------------------------------------------------------------------------------
def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[8] if len(values) > 1 else values[0]


def diff_interval(a: list[float], b: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A 95 % bootstrap interval of median(a) - median(b)."""
    rng = random.Random(7)
    diffs = sorted(statistics.median(rng.choices(a, k=len(a))) - statistics.median(rng.choices(b, k=len(b)))
                   for _ in range(resamples))
    return diffs[int(0.025 * resamples)], diffs[int(0.975 * resamples)]


def samples(arm: Arm, mode: str, metric: str) -> list[float]:
    if metric == "total":
        return arm.json.get(mode, [])
    return [s[metric] for s in arm.sse.get(mode, [])]


def report(arms: list[Arm], modes: list[str], ref: str) -> list[str]:
    """A Markdown table: each measure's median and 90th percentile (ms) in each arm, and the difference of
    medians from arm ``ref`` with its 95 % bootstrap interval; then CPU per run."""
    base = next(a for a in arms if a.name == ref)
    others = [a for a in arms if a is not base]
    lines = ["| mode | measure | n | " + " | ".join(f"{a.name} p50 / p90" for a in arms) + " | "
             + " | ".join(f"{a.name} − {ref} p50 (95 % CI)" for a in others) + " |",
             "|---|---|---|" + "---|" * (len(arms) + len(others))]
    metrics = {"json": ("total",), "sse": ("first", "token", "done", "end", "start", "bus", "tail")}
    for mode in modes:
        for metric in metrics[mode.split("-")[1]]:
            values = {a.name: [v * 1000 for v in samples(a, mode, metric)] for a in arms}
            if not values[ref]:
                continue
            row = [mode, metric, str(len(values[ref]))]
            row += [f"{statistics.median(values[a.name]):.1f} / {p90(values[a.name]):.1f}" for a in arms]
            for a in others:
                d = statistics.median(values[a.name]) - statistics.median(values[ref])
                lo, hi = diff_interval(values[a.name], values[ref])
                row.append(f"{d:+.1f} ({lo:+.1f} … {hi:+.1f})")
            lines.append("| " + " | ".join(row) + " |")
    roles = [(a, role) for a in arms for role in a.procs]
    lines += ["", "CPU ms per run (all batches):", "",
              "| mode | " + " | ".join(f"{a.name} {role}" for a, role in roles) + " |",
              "|---|" + "---|" * len(roles)]
    for mode in modes:
        cells = [f"{statistics.mean(a.cpu[(mode, role)]) * 1000:.1f}" for a, role in roles]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return lines


def runs_ended(port: int) -> float:
    """The runs this server ended, from its ``/metrics``."""
    text = api(port, "GET", "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in str(text).splitlines()
               if line.startswith("thinktank_runs_total{"))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-upstream":
        serve_upstream(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=32)
    ap.add_argument("--seq", type=int, default=3, help="runs one after the other, per arm, mode and round")
    ap.add_argument("--conc", type=int, default=8, help="runs at once, per arm, mode and round")
    ap.add_argument("--delay", type=float, default=0.05, help="seconds the fake upstream takes to answer")
    ap.add_argument("--words", type=int, default=40, help="words of each answer")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--arms", default="L,Q,L'",
                    help="L (local), Q (handed over), L' (a second L: the A/A check), Qb (Q on --base-src)")
    ap.add_argument("--modes", default=",".join(MODES), help="among " + ", ".join(MODES))
    ap.add_argument("--ref", default="L", help="the arm the others are compared with")
    ap.add_argument("--base-src", type=Path, help="the source tree of arm Qb (another commit's src/)")
    ap.add_argument("--json", type=Path, help="write every sample here")
    a = ap.parse_args()
    names = [n for n in a.arms.split(",") if n]
    if a.ref not in names or any(n[0] not in "LQ" for n in names) or len(set(names)) != len(names):
        raise SystemExit("--arms: distinct names starting with L (local) or Q (handed over), --ref among them")
    modes = [m for m in a.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: among {', '.join(MODES)}")
    if any(n.endswith("b") for n in names) and a.base_src is None:
        raise SystemExit("an arm ending in b runs the code of --base-src: give it")
    tag = secrets.token_hex(3)
    databases = {n: f"tt_bench_handover_{n.replace(chr(39), '2').lower()}_{tag}" for n in names}
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(upstream_port), str(a.delay),
                                 str(a.words)], stdout=subprocess.PIPE, text=True)
    arms: list[Arm] = []
    created: list[str] = []
    try:
        assert upstream.stdout is not None
        if upstream.stdout.readline().strip() != "ready":
            raise SystemExit("the fake upstream did not start")
        with tempfile.TemporaryDirectory(prefix="tt-handover-") as tmp:
            work = Path(tmp)
            config = work / "config.yaml"
            write_config(config, upstream_port)
            for name in names:
                url = asyncio.run(create_database(databases[name]))
                created.append(databases[name])
                arm = start_arm(name, work, config, url, a.base_src if name.endswith("b") else None)
                arms.append(arm)
                arm.key = api(arm.entry.port, "POST", "/api/v1/keys",
                              {"name": "bench", "budget_usd": 1_000_000, "budget_period": "day"})["key"]
            print(f"load before: {os.getloadavg()}", file=sys.stderr)
            asyncio.run(measure(arms, modes, a.rounds, a.seq, a.conc, a.warmup))
            print(f"load after: {os.getloadavg()}", file=sys.stderr)
            ended = {f"{arm.name} {role}": runs_ended(p.port) for arm in arms for role, p in arm.procs.items()}
            for line in report(arms, modes, a.ref):
                print(line)
            print(f"\nruns ended, by process (/metrics): {ended}")
            for arm in arms:
                if "api" in arm.procs and ended[f"{arm.name} api"] != 0:
                    raise SystemExit(f"{arm.name}'s API server ended runs itself: nothing was handed over")
            if a.json is not None:
                a.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "arms": {
                    arm.name: {"json": arm.json, "sse": arm.sse,
                               "cpu": {f"{m} {r}": v for (m, r), v in arm.cpu.items()}} for arm in arms}}))
    finally:
        for arm in arms:
            for p in arm.procs.values():
                p.stop()
        upstream.terminate()
        upstream.wait(10)
        for name in created:
            asyncio.run(drop_database(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
