#!/usr/bin/env python3
"""What an ensemble costs beyond its members' own time: wall-clock overhead and thinktank's CPU per run.

    python bench/deliberation.py                   # the default run, about 2 minutes
    python bench/deliberation.py --runs 10 --rounds 2 --skip-concurrency

Five fake OpenAI-compatible upstreams (m1..m5) answer after 100, 200, 300, 400 and 500 ms. They
run in a process of their own, started from this script (``--serve-upstream``), so that their CPU
is not counted as thinktank's; thinktank runs as ``thinktank serve`` (one worker, SQLite in a
temporary data dir, admin key). The fake speaks the chat-completions wire format, streamed or
not; a member answers with a few hundred words of markdown, a peer reviewer (a prompt asking for
``FINAL RANKING:``) with a short critique and a ranking that parses, the chairman with a streamed
answer, one word per chunk as OpenAI sends them.

Measured, sequential runs from an aiohttp client on loopback:

1. ``five`` (heuristic ranking, synthesis best) through ``POST /api/v1/ensembles`` and through
   ``POST /v1/chat/completions`` with ``model: ensemble/five``, alternating rounds (A B A B ...):
   wall time minus the slowest member's 500 ms, and minus the slowest member's latency as
   thinktank measured it (``calls[].latency_ms``);
2. thinktank's CPU per run: user+sys time of the server process from ``/proc/<pid>/stat`` and the
   per-thread nanosecond counters of ``/proc/<pid>/task/*/schedstat``, read before and after
   each round, divided by the runs in it. The same for ``peer`` (peer_review: 5 extra judge
   calls) and ``chair`` (heuristic + a streamed chairman synthesis: 1 extra call), whose CPU
   includes the client side of those extra calls;
3. 8 runs of ``five`` at once, repeated: wall time of each run and CPU per run.

The machine is shared and noisy (±30 % between runs): rounds alternate and medians are reported.
Targets (issue): overhead p50 ≤ 20 ms over the slowest member; CPU ≤ 5 ms per heuristic run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ADMIN = "sk-bench-admin-0123456789"
PORT = 18450
UPSTREAM_PORT = 18451  # m1..m5 on 18451..18455
LATENCIES = (0.1, 0.2, 0.3, 0.4, 0.5)
QUESTION = "How should a small team choose between PostgreSQL and SQLite for a new web service?"


# -- the fake upstream (its own process) -----------------------------------------------------------------------------
def _member_answer(i: int, words: int) -> str:
    """A markdown answer of about ``words`` words, different for each member."""
    rng = random.Random(i)
    vocab = ["database", "concurrency", "writes", "replication", "backups", "operations", "latency", "durability",
             "schema", "migration", "connections", "locking", "throughput", "deployment", "simplicity", "embedded",
             "server", "cost", "monitoring", "scaling", "transactions", "indexes", "queries", "reliability"]
    parts = [f"## Answer {i + 1}", ""]
    n = 0
    while n < words:
        sentence = " ".join(rng.choice(vocab) for _ in range(rng.randint(8, 16)))
        bullet = rng.random() < 0.3
        parts.append(("- " if bullet else "") + sentence.capitalize() + ".")
        n += sentence.count(" ") + 1
    if i % 2:
        parts += ["", "```sql", "CREATE TABLE notes (id integer primary key, body text);", "```"]
    return "\n".join(parts)


def _review(prompt: str, seed: int) -> str:
    """A short critique ending with a FINAL RANKING of every response the prompt lists."""
    tail = prompt.rsplit("FINAL RANKING:", 1)[-1]
    labels = re.findall(r"^\d+\. Response ([A-Z]+)\s*$", tail, re.M)
    random.Random(seed).shuffle(labels)
    critique = " ".join(f"Response {x} is clear but could say more about backups." for x in labels)
    return critique + "\n\nFINAL RANKING:\n" + "\n".join(f"{k + 1}. Response {x}" for k, x in enumerate(labels))


def serve_upstream(answer_words: int) -> None:
    from aiohttp import web

    def app_for(i: int, latency: float) -> web.Application:
        answer = _member_answer(i, answer_words)
        counter = 0

        async def chat(request: web.Request) -> web.StreamResponse:
            nonlocal counter
            counter += 1
            body = orjson.loads(await request.read())
            await asyncio.sleep(latency)
            prompt = "\n".join(str(m.get("content", "")) for m in body["messages"])
            if "FINAL RANKING:" in prompt:
                text = _review(prompt, counter)
            elif "Write the single best answer" in prompt:
                text = "Synthesis. " + answer
            else:
                text = answer
            ptok, ctok = len(prompt) // 4, len(text) // 4
            usage = {"prompt_tokens": ptok, "completion_tokens": ctok, "total_tokens": ptok + ctok}
            model = body.get("model", f"m{i + 1}")
            head = {"id": f"chatcmpl-{i}-{counter}", "created": int(time.time()), "model": model}
            if not body.get("stream"):
                return web.Response(body=orjson.dumps({
                    **head, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}], "usage": usage,
                }), content_type="application/json")
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            chunk = {**head, "object": "chat.completion.chunk"}
            out = []
            for k, w in enumerate(text.split(" ")):  # one word per chunk, as OpenAI streams tokens
                delta = {"role": "assistant", "content": w} if k == 0 else {"content": " " + w}
                out.append(b"data: " + orjson.dumps({**chunk, "choices": [
                    {"index": 0, "delta": delta, "finish_reason": None}]}) + b"\n\n")
            out.append(b"data: " + orjson.dumps({**chunk, "choices": [
                {"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                out.append(b"data: " + orjson.dumps({**chunk, "choices": [], "usage": usage}) + b"\n\n")
            out.append(b"data: [DONE]\n\n")
            await resp.write(b"".join(out))
            await resp.write_eof()
            return resp

        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", chat)
        return app

    async def main() -> None:
        runners = []
        for i, latency in enumerate(LATENCIES):
            runner = web.AppRunner(app_for(i, latency), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", UPSTREAM_PORT + i).start()
            runners.append(runner)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- thinktank ------------------------------------------------------------------------------------------------------
def write_config(path: Path, answer_words: int) -> None:
    """m1..m5 on the fake upstreams; l1..l5 the same members in-process (``mock`` with the same
    latencies and answers), whose calls cost next to nothing: what is left of a ``local`` run's CPU
    is thinktank's own work around the calls."""
    models: list[dict[str, Any]] = []
    for i, latency in enumerate(LATENCIES):
        models.append({"name": f"m{i + 1}", "provider": "openai", "api_key": "sk-fake", "input_price": 1,
                       "output_price": 2, "base_url": f"http://127.0.0.1:{UPSTREAM_PORT + i}/v1"})
        models.append({"name": f"l{i + 1}", "provider": "mock", "input_price": 1, "output_price": 2,
                       "options": {"latency": latency, "replies": [_member_answer(i, answer_words)]}})
    members = [f"m{i + 1}" for i in range(len(LATENCIES))]
    config = {"models": models, "ensembles": [
        {"name": "five", "members": members, "strategy": "heuristic", "synthesis": "best"},
        {"name": "peer", "members": members, "strategy": "peer_review", "synthesis": "best"},
        {"name": "chair", "members": members, "strategy": "heuristic", "synthesis": "chairman", "chairman": "m1"},
        {"name": "local", "members": [f"l{i + 1}" for i in range(len(LATENCIES))], "strategy": "heuristic",
         "synthesis": "best"},
    ]}
    path.write_text(orjson.dumps(config, option=orjson.OPT_INDENT_2).decode())  # JSON is YAML


def start_thinktank(config: Path, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATA_DIR": str(data_dir)}
    env.pop("THINKTANK_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktank", "serve", "--config", str(config), "--port", str(PORT),
         "--log-level", "warning"], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=open(data_dir / "server.log", "w"),  # noqa: SIM115
    )
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/ready", timeout=1)
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    raise SystemExit(f"thinktank did not start; see {data_dir / 'server.log'}")


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"the fake upstream did not start on :{port}")


def cpu_ticks(pid: int) -> float:
    """user+sys seconds of the process (every thread, living or ended), 10 ms resolution."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> tuple[dict[str, float], int]:
    """Seconds on CPU of each living thread (nanosecond counters of /proc/<pid>/task/*/schedstat),
    and their voluntary and involuntary context switches added up: how often they woke up."""
    seconds: dict[str, float] = {}
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            seconds[task.name] = int((task / "schedstat").read_text().split()[0]) / 1e9
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    switches += int(line.split()[1])
    return seconds, switches


class Cpu:
    """CPU of the server between two readings: all threads, and the event loop's (main) thread alone."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def read(self) -> tuple[float, dict[str, float], int]:
        return cpu_ticks(self.pid), *threads(self.pid)

    def per_run(self, before: tuple[float, dict[str, float], int], n: int) -> dict[str, float]:
        ticks0, th0, cs0 = before
        ticks1, th1, cs1 = self.read()
        total = sum(v - th0.get(k, 0.0) for k, v in th1.items())
        main = th1.get(str(self.pid), 0.0) - th0.get(str(self.pid), 0.0)
        return {"cpu": total / n * 1000, "cpu_main": main / n * 1000, "cpu_ticks": (ticks1 - ticks0) / n * 1000,
                "switches": (cs1 - cs0) / n}


WAKEUP_PROBE = """
import asyncio, time, uvloop
async def main():
    async def tick():
        while True:
            await asyncio.sleep(0.01)
    task = asyncio.ensure_future(tick())
    await asyncio.sleep(0.5)
    c0 = time.process_time()
    await asyncio.sleep(4)
    print((time.process_time() - c0) / 400 * 1e6)
uvloop.run(main())
"""


def wakeup_cost() -> float:
    """CPU microseconds this machine charges a process for one timer wake-up of an otherwise idle
    event loop (a bare uvloop loop ticking at 100 Hz, in a process of its own)."""
    out = subprocess.run([sys.executable, "-c", WAKEUP_PROBE], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


# -- the client -----------------------------------------------------------------------------------------------------
HEADERS = {"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"}


async def post(s: aiohttp.ClientSession, path: str, payload: dict[str, Any]) -> tuple[float, Any]:
    """POST to thinktank: wall ms and the JSON answer; anything but a 200 stops the benchmark."""
    t0 = time.perf_counter()
    async with s.post(f"http://127.0.0.1:{PORT}{path}", data=orjson.dumps(payload), headers=HEADERS) as resp:
        raw = await resp.read()
    wall = (time.perf_counter() - t0) * 1000
    if resp.status != 200:
        raise SystemExit(f"{path} ({payload.get('model') or payload.get('ensemble')}) answered {resp.status}: "
                         f"{raw[:500]!r}")
    return wall, orjson.loads(raw)


async def native(s: aiohttp.ClientSession, ensemble: str) -> dict[str, Any]:
    """One run through /api/v1/ensembles: wall ms plus what the record says."""
    wall, rec = await post(s, "/api/v1/ensembles", {"ensemble": ensemble, "question": QUESTION})
    answers = [c for c in rec["calls"] if c["stage"] == "answer"]
    last = max(answers, key=lambda c: c["latency_ms"])
    return {"wall": wall, "slowest": last["latency_ms"],
            "before": (last["ts"] - rec["created_at"]) * 1000,
            "after": (rec["finished_at"] - last["ts"]) * 1000 - last["latency_ms"],
            "server": (rec["finished_at"] - rec["created_at"]) * 1000, "calls": len(rec["calls"]),
            "errors": sum(1 for c in rec["calls"] if c["error"]), "record": rec}


async def chat(s: aiohttp.ClientSession, ensemble: str) -> dict[str, Any]:
    wall, answer = await post(s, "/v1/chat/completions", {
        "model": f"ensemble/{ensemble}", "messages": [{"role": "user", "content": QUESTION}]})
    if not answer["choices"][0]["message"]["content"]:
        raise SystemExit("ensemble/five answered with an empty message")
    return {"wall": wall}


async def fanout(s: aiohttp.ClientSession, _: str) -> dict[str, Any]:
    """The five member calls alone: five chat completions at once, to m1..m5 through thinktank."""
    t0 = time.perf_counter()
    await asyncio.gather(*(
        post(s, "/v1/chat/completions", {"model": f"m{i + 1}", "messages": [{"role": "user", "content": QUESTION}]})
        for i in range(len(LATENCIES))
    ))
    return {"wall": (time.perf_counter() - t0) * 1000}


def check(ensemble: str, r: dict[str, Any]) -> None:
    rec = r["record"]
    want = {"five": 5, "peer": 10, "chair": 6, "local": 5}[ensemble]
    ranking, synthesis = rec["result"]["ranking"], rec["result"]["synthesis"]
    problems = []
    if r["calls"] != want or r["errors"]:
        problems.append(f"{r['calls']} calls ({r['errors']} failed), expected {want}")
    if ensemble == "peer" and (ranking["strategy"] != "peer_review" or ranking["excluded"]):
        problems.append(f"peer review did not parse: {ranking.get('excluded')}")
    if ensemble == "chair" and synthesis.get("method") != "chairman":
        problems.append(f"no chairman synthesis: {synthesis}")
    if problems:
        raise SystemExit(f"{ensemble}: " + "; ".join(problems))


async def series(s: aiohttp.ClientSession, cpu: Cpu, fn: Any, ensemble: str, n: int,
                 into: list[dict[str, Any]]) -> dict[str, float]:
    """n sequential runs; the server's CPU per run."""
    before = cpu.read()
    for _ in range(n):
        r = await fn(s, ensemble)
        if "record" in r:
            check(ensemble, r)
            del r["record"]
        into.append(r)
    return cpu.per_run(before, n)


async def concurrent(s: aiohttp.ClientSession, cpu: Cpu, conc: int, batches: int) -> dict[str, Any]:
    walls: list[float] = []
    over: list[float] = []
    batch_walls: list[float] = []
    before = cpu.read()
    for _ in range(batches):
        b0 = time.perf_counter()
        rs = await asyncio.gather(*(native(s, "five") for _ in range(conc)))
        batch_walls.append((time.perf_counter() - b0) * 1000)
        for r in rs:
            check("five", r)
            walls.append(r["wall"])
            over.append(r["wall"] - r["slowest"])
    return {"walls": walls, "over_measured": over, "batch_walls": batch_walls, **cpu.per_run(before, conc * batches)}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p * (len(xs) - 1))))]


async def bench(a: argparse.Namespace, pid: int) -> dict[str, Any]:
    cpu = Cpu(pid)
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
        for name in ("five", "peer", "chair", "local"):  # warm-up: imports, connections, SQLite pages
            for _ in range(a.warmup):
                check(name, await native(s, name))
        for _ in range(a.warmup):
            await chat(s, "five")
            await fanout(s, "")
        before = cpu.read()  # what the server spends doing nothing (timers, the run saver's wake-ups)
        await asyncio.sleep(a.idle)
        idle = cpu.per_run(before, 1)
        out["idle_ms_per_s"] = idle["cpu"] / a.idle
        out["idle_switches_per_s"] = idle["switches"] / a.idle
        out["wakeup_us"] = wakeup_cost()
        print(f"idle server: {out['idle_ms_per_s']:.2f} ms CPU per second", flush=True)
        keys = ("five", "five (chat)", "peer", "chair", "local", "calls")
        series_out: dict[str, dict[str, list[Any]]] = {
            k: {"runs": [], "cpu": [], "cpu_main": [], "cpu_ticks": [], "switches": []} for k in keys}
        plan = [("five", native, "five", a.runs), ("five (chat)", chat, "five", a.runs),
                ("peer", native, "peer", max(1, a.runs // 2)), ("chair", native, "chair", max(1, a.runs // 2)),
                ("local", native, "local", a.runs), ("calls", fanout, "", a.runs)]
        for rnd in range(a.rounds):
            for key, fn, ensemble, n in plan:
                cpu_run = await series(s, cpu, fn, ensemble, n, series_out[key]["runs"])
                for k, v in cpu_run.items():
                    series_out[key][k].append(v)
                print(f"round {rnd + 1} {key:<12} {n:>3} runs  wall p50 "
                      f"{statistics.median(r['wall'] for r in series_out[key]['runs'][-n:]):7.1f} ms  "
                      f"cpu/run {cpu_run['cpu']:5.2f} ms (event loop thread {cpu_run['cpu_main']:5.2f}, "
                      f"from ticks {cpu_run['cpu_ticks']:5.2f}; {cpu_run['switches']:.1f} context switches)",
                      flush=True)
        out["series"] = series_out
        if not a.skip_concurrency:
            out["concurrent"] = await concurrent(s, cpu, a.concurrency, a.batches)
    return out


def report(res: dict[str, Any], a: argparse.Namespace) -> bool:
    nominal = max(LATENCIES) * 1000
    print(f"\nsequential runs; member latencies {', '.join(f'{x * 1000:.0f}' for x in LATENCIES)} ms; "
          f"{a.rounds} alternating rounds; CPU: median of the rounds\n")
    print(f"{'ensemble':<12} {'runs':>4} {'wall p50':>9} {'p95':>9} {'-500 p50':>9} {'-500 p95':>9} "
          f"{'slowest p50':>12} {'-slowest p50':>13} {'outside p50':>12} {'cpu/run':>9} {'loop thr':>9} {'ticks':>9} "
          f"{'net of idle':>11} {'switches':>8}")
    rows = {}
    for key, s in res["series"].items():
        walls = [r["wall"] for r in s["runs"]]
        over = [w - nominal for w in walls]
        slowest = [r["slowest"] for r in s["runs"] if "slowest" in r]
        meas = [r["wall"] - r["slowest"] for r in s["runs"] if "slowest" in r]
        outside = [r["wall"] - r["server"] for r in s["runs"] if "server" in r]
        row = {"n": len(walls), "wall50": statistics.median(walls), "wall95": pct(walls, 0.95),
               "over50": statistics.median(over), "over95": pct(over, 0.95),
               "slowest50": statistics.median(slowest) if slowest else None,
               "meas50": statistics.median(meas) if meas else None,
               "outside50": statistics.median(outside) if outside else None,
               **{k: statistics.median(s[k]) for k in ("cpu", "cpu_main", "cpu_ticks", "switches")}}
        rows[key] = row

        def ms(x: float | None, w: int) -> str:
            return f"{x:{w - 3}.1f} ms" if x is not None else f"{'-':>{w}}"
        print(f"{key:<12} {row['n']:>4} {ms(row['wall50'], 9)} {ms(row['wall95'], 9)} {ms(row['over50'], 9)} "
              f"{ms(row['over95'], 9)} {ms(row['slowest50'], 12)} {ms(row['meas50'], 13)} {ms(row['outside50'], 12)} "
              f"{row['cpu']:6.2f} ms {row['cpu_main']:6.2f} ms {row['cpu_ticks']:6.2f} ms "
              f"{row['cpu'] - res['idle_ms_per_s'] * row['wall50'] / 1000:8.2f} ms {row['switches']:8.1f}")
    print("\n-500: wall minus the slowest member's nominal 500 ms. slowest: the slowest member's latency as "
          "thinktank measured it (calls[].latency_ms; includes the fake's own overshoot); -slowest: wall minus "
          "that; outside: wall minus the run's own created_at..finished_at (the HTTP request, admission, and "
          "after the run its final save, re-read and JSON). cpu/run: all threads of the server (schedstat); "
          "loop thr: the event loop's thread alone; ticks: the same from /proc/<pid>/stat (10 ms resolution). "
          "peer and chair: their judge and synthesis calls add their latency to the wall time and the client "
          "side of those calls to the CPU (calls per run: five 5, peer 10, chair 6). net of idle: cpu/run minus "
          f"what the idle server spends in a run's wall time ({res['idle_ms_per_s']:.2f} ms/s). switches: context "
          f"switches of the server's threads per run (the idle server: {res['idle_switches_per_s']:.1f}/s). This "
          f"machine charges {res['wakeup_us']:.0f} us of CPU for one timer wake-up of a bare, otherwise idle "
          "event loop.")
    print("\nwhere the overhead of the native runs lies (p50): before the slowest member's call starts (from "
          "created_at) / after its answer until finished_at / outside the run")
    for key, s in res["series"].items():
        runs = [r for r in s["runs"] if "before" in r]
        if runs:
            print(f"  {key:<12} {statistics.median(r['before'] for r in runs):6.1f} ms / "
                  f"{statistics.median(r['after'] for r in runs):6.1f} ms / "
                  f"{statistics.median(r['wall'] - r['server'] for r in runs):6.1f} ms")
    c = res.get("concurrent")
    if c:
        print(f"\n{a.concurrency} runs of five at once, {a.batches} times: run wall p50 "
              f"{statistics.median(c['walls']):.1f} ms, p95 {pct(c['walls'], 0.95):.1f} ms; wall - slowest member "
              f"p50 {statistics.median(c['over_measured']):.1f} ms; batch wall p50 "
              f"{statistics.median(c['batch_walls']):.1f} ms; cpu/run {c['cpu']:.2f} ms "
              f"(event loop thread {c['cpu_main']:.2f} ms)")
    five, five_chat = rows["five"], rows["five (chat)"]
    ok_over = bool(five["over50"] <= 20 and five_chat["over50"] <= 20)
    local, calls, idle = rows["local"], rows["calls"], res["idle_ms_per_s"]
    own_local = local["cpu"] - idle * local["wall50"] / 1000
    own_diff = five["cpu"] - calls["cpu"]
    ok_cpu = bool(own_local <= 5 and own_diff <= 5)
    print(f"\nwall p50 within the slowest member's 500 ms + 20 ms: {'PASS' if ok_over else 'FAIL'} "
          f"(native +{five['over50']:.1f} ms, chat +{five_chat['over50']:.1f} ms)")
    print(f"thinktank's own CPU per heuristic run apart from the member calls <= 5 ms: {'PASS' if ok_cpu else 'FAIL'} "
          f"(in-process members, net of idle: {own_local:.2f} ms; five minus its five calls made alone: "
          f"{own_diff:.2f} ms)")
    print(f"  all of it, calls included: native {five['cpu']:.2f} ms, chat {five_chat['cpu']:.2f} ms; the five calls "
          f"alone {calls['cpu']:.2f} ms; local run {local['cpu']:.2f} ms before taking off idle ({idle:.2f} ms/s)")
    return ok_over and ok_cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="sequential runs of five per round (peer, chair: half)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batches", type=int, default=10, help="batches of --concurrency runs at once")
    ap.add_argument("--skip-concurrency", action="store_true")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds the idle server's CPU is measured")
    ap.add_argument("--answer-words", type=int, default=250, help="words in each member's answer")
    ap.add_argument("--keep", action="store_true", help="leave thinktank and the upstreams running (prints pids)")
    ap.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_upstream:
        serve_upstream(a.answer_words)
        return 0

    for port in (PORT, *(UPSTREAM_PORT + i for i in range(len(LATENCIES)))):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise SystemExit(f"port {port} is in use (an earlier run left with --keep?)")
    work = Path(tempfile.mkdtemp(prefix="tt-delib-"))
    config = work / "thinktank.yaml"
    write_config(config, a.answer_words)
    upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream", "--answer-words", str(a.answer_words)],
                                start_new_session=True, stdout=subprocess.DEVNULL)
    proc = None
    try:
        wait_port(UPSTREAM_PORT + len(LATENCIES) - 1, upstream)
        proc = start_thinktank(config, work)
        print(f"thinktank pid {proc.pid}, upstream pid {upstream.pid}, data {work}", flush=True)
        res = asyncio.run(bench(a, proc.pid))
        ok = report(res, a)
        if a.keep:
            print(f"left running: thinktank {proc.pid} on :{PORT}, upstream {upstream.pid}")
            return 0 if ok else 1
    finally:
        if not a.keep:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            os.killpg(upstream.pid, signal.SIGTERM)
            upstream.wait(10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
