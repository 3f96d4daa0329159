"""Agents: thinktank's own CPU per agent step, many runs at once, and what a paused run costs.

    python bench/agent_steps.py                       # all three parts
    python bench/agent_steps.py --runs 200 --steps 5  # CPU part: 200 runs of 5 model steps (4 tool calls each)

The app is the real one (``create_app``: SQLite, the router, budgets with a priced model and a key budget
so holds are taken, checkpoints written after every step), called in process through the catalog as the
API does, with a scripted mock model as the brain and the built-in ``current_time`` as the tool.

- **CPU per step**: process CPU time (all threads: the SQLite writer included) over the agent runs, less the
  CPU of the same number of plain model calls to the same mock through the router (what a step costs
  without the agent), divided by the steps.
- **At once**: ``--concurrent`` runs started together, each calling a tool of an MCP server served in this
  process over streamable HTTP (the SDK's ``MCPServer`` under uvicorn on loopback); errors counted.
- **Paused**: ``--paused`` runs left waiting for an approval: live tasks and runs in memory (none), and the
  bytes their stored records take.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from thinktank.accounts.principal import Principal
from thinktank.accounts.schemas import KeyCreate, UserCreate
from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import Settings, parse_config
from thinktank.types import ChatRequest, Message

KEY = "sk-bench-admin-0123456789"


def config(steps: int, mcp_url: str | None) -> dict[str, Any]:
    calls = steps - 1
    rules = [
        {"match": rf"(?s)^(?!(?:.*?<tool_result tool=){{{calls}}}).*what time",
         "tool_calls": [{"name": "current_time", "arguments": {"timezone": "Europe/Paris"}}]},
        {"match": "what time", "reply": "It is late."},
    ]
    mcp_rules = [{"match": r"(?s)^(?!.*<tool_result tool=).*add numbers",
                  "tool_calls": [{"name": "calc__add", "arguments": {"a": 2, "b": 3}}]},
                 {"match": "add numbers", "reply": "The sum is 5."}]
    cfg: dict[str, Any] = {
        "models": [
            {"name": "brain", "provider": "mock", "input_price": 0.1, "output_price": 0.2, "options": {"rules": rules}},
            {"name": "adder", "provider": "mock", "input_price": 0.1, "output_price": 0.2,
             "options": {"rules": mcp_rules}},
        ],
        "agents": [{"name": "clock", "model": "brain", "tools": ["current_time"], "max_steps": steps + 1},
                   {"name": "careful", "model": "brain", "tools": [{"name": "current_time", "approval": "required"}]}],
    }
    if mcp_url is not None:
        cfg["mcp_servers"] = [{"name": "calc", "url": mcp_url}]
        cfg["agents"].append({"name": "calc", "model": "adder", "tools": ["calc.*"]})
    return cfg


async def start(data: Path, cfg: dict[str, Any]) -> tuple[ThinktankApp, Principal, Any]:
    settings = Settings(data_dir=data, admin_key=KEY, global_daily_budget_usd=1_000_000.0)
    app = create_app(settings, parse_config(cfg), quiet=True)
    lifespan = app.fastapi.router.lifespan_context(app.fastapi)
    await lifespan.__aenter__()
    state = app.state
    # A member with a real key and a budget on both: every priced call takes and settles budget holds.
    user = await state.users.create_user(UserCreate(email="bench@example.com", password="bench password 123",
                                                    budget_usd=1_000_000.0))
    owner = await state.auth.principal_of(user.id)
    assert owner is not None
    created = await state.keys.create(owner, KeyCreate(name="bench", budget_usd=1_000_000.0))
    principal = await state.auth.resolve(created.key)
    assert principal.budgets, "the bench key must carry budgets"
    return app, principal, lifespan


async def ask(app: ThinktankApp, principal: Principal, model: str, text: str) -> str:
    state = app.state
    admission = await state.gate.admit(principal, "127.0.0.1", model, 100)
    async with state.gate.recording(admission):
        response = await state.catalog.complete(
            ChatRequest(model=model, messages=[Message(role="user", content=text)]), admission.ctx)
    return response.choices[0].finish_reason or ""


async def cpu_part(runs: int, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        app, principal, lifespan = await start(Path(tmp), config(steps, None))
        try:
            for _ in range(5):  # warm up: imports, prepared statements, the router's first calls
                await ask(app, principal, "agent/clock", "what time is it?")
                await ask(app, principal, "brain", "hello")
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(runs):
                assert await ask(app, principal, "agent/clock", "what time is it?") == "stop"
            agent_cpu, agent_wall = time.process_time() - cpu0, time.perf_counter() - wall0
            cpu0 = time.process_time()
            for _ in range(runs * steps):
                await ask(app, principal, "brain", "hello")
            plain_cpu = time.process_time() - cpu0
        finally:
            await lifespan.__aexit__(None, None, None)
    total_steps = runs * steps
    return {"runs": runs, "steps": total_steps, "agent_cpu_ms_per_step": agent_cpu / total_steps * 1000,
            "plain_call_cpu_ms": plain_cpu / total_steps * 1000,
            "own_cpu_ms_per_step": (agent_cpu - plain_cpu) / total_steps * 1000,
            "wall_ms_per_run": agent_wall / runs * 1000}


def mcp_server_app() -> Any:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("calc")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return server.streamable_http_app()


async def concurrent_part(n: int) -> dict[str, float]:
    import uvicorn

    mcp_app = mcp_server_app()
    config_ = uvicorn.Config(mcp_app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config_)
    task = asyncio.create_task(server.serve())
    for _ in range(1000):  # uvicorn says it has started by a flag only
        if server.started:
            break
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        app, principal, lifespan = await start(Path(tmp), config(3, f"http://127.0.0.1:{port}/mcp"))
        try:
            await ask(app, principal, "agent/calc", "add numbers please")  # connect once
            started = time.perf_counter()
            results = await asyncio.gather(*(ask(app, principal, "agent/calc", "add numbers please")
                                             for _ in range(n)), return_exceptions=True)
            wall = time.perf_counter() - started
            runs = await app.state.deliberation.store.runs(None, kind="agent", limit=n + 10)
            records = [await app.state.deliberation.store.get(r["id"]) for r in runs]
            tool_calls = [c for rec in records if rec for c in rec["calls"] if c["stage"] == "tool"]
            tool_errors = sum(1 for c in tool_calls if c["error"])
            answers = sum(1 for rec in records if rec and (rec["result"] or {}).get("answer") == "The sum is 5.")
        finally:
            await lifespan.__aexit__(None, None, None)
            server.should_exit = True
            await task
    errors = [r for r in results if isinstance(r, BaseException) or r != "stop"]
    completed = sum(1 for r in runs if r["status"] == "completed")
    return {"runs": n, "errors": len(errors), "completed": completed, "wall_s": wall, "tool_calls": len(tool_calls),
            "tool_errors": tool_errors, "answers": answers}


async def paused_part(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        app, principal, lifespan = await start(Path(tmp), config(2, None))
        try:
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            for _ in range(n):
                assert await ask(app, principal, "agent/careful", "what time is it?") == "awaiting_approval"
            live = len(app.state.deliberation.live)
            tasks = len([t for t in asyncio.all_tasks() if "execute" in repr(t.get_coro())])
            rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        finally:
            await lifespan.__aexit__(None, None, None)
        db = sqlite3.connect(Path(tmp) / "thinktank.db")
        sizes = {table: db.execute(f"SELECT SUM(LENGTH(CAST(state AS BLOB))) FROM {table}").fetchone()[0] or 0
                 for table in ("agent_states",)}
        events = db.execute("SELECT SUM(LENGTH(CAST(data AS BLOB))) + 40 * COUNT(*) FROM run_events").fetchone()[0]
        calls = db.execute("SELECT SUM(LENGTH(CAST(prompt AS BLOB)) + LENGTH(COALESCE(answer, ''))) FROM run_calls"
                           ).fetchone()[0]
        runs = db.execute("SELECT SUM(LENGTH(CAST(request AS BLOB)) + LENGTH(CAST(config AS BLOB)) + LENGTH(question)) "
                          "FROM runs").fetchone()[0]
        db.close()
    return {"paused": n, "live_runs": live, "executing_tasks": tasks,
            "stored_bytes_per_run": (sizes["agent_states"] + events + calls + runs) / n,
            "checkpoint_bytes_per_run": sizes["agent_states"] / n, "max_rss_growth_kb": rss1 - rss0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--paused", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="CPU part: repetitions (the median is reported)")
    args = parser.parse_args()
    os.environ.setdefault("THINKTANK_LOG_LEVEL", "warning")
    cpu = [asyncio.run(cpu_part(args.runs, args.steps)) for _ in range(args.repeat)]
    own = statistics.median(r["own_cpu_ms_per_step"] for r in cpu)
    print(f"CPU per agent step ({args.runs} runs x {args.steps} model steps, {args.steps - 1} tool calls each; "
          f"median of {args.repeat}):")
    for r in cpu:
        print(f"  agent {r['agent_cpu_ms_per_step']:.3f} ms/step, plain model call {r['plain_call_cpu_ms']:.3f} ms, "
              f"thinktank's own {r['own_cpu_ms_per_step']:.3f} ms/step, {r['wall_ms_per_run']:.1f} ms/run")
    print(f"  => own CPU per step: {own:.3f} ms")
    at_once = asyncio.run(concurrent_part(args.concurrent))
    print(f"{at_once['runs']} agent runs at once with an MCP tool (+1 warm-up): {at_once['completed']} completed, "
          f"{at_once['errors']} errors, {at_once['tool_calls']} MCP tool calls ({at_once['tool_errors']} failed), "
          f"{at_once['answers']} right answers, {at_once['wall_s']:.2f} s")
    paused = asyncio.run(paused_part(args.paused))
    print(f"{paused['paused']} paused runs: {paused['live_runs']} in memory, {paused['executing_tasks']} tasks; "
          f"{paused['stored_bytes_per_run']:.0f} bytes stored per run ({paused['checkpoint_bytes_per_run']:.0f} of "
          f"them the checkpoint); max RSS grew {paused['max_rss_growth_kb']} kB")


if __name__ == "__main__":
    main()
