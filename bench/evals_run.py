"""How long an evaluation takes beside its model calls: N items x K candidates, one judge, checks on every item,
mock models that answer at once, on SQLite in a temporary directory, through the HTTP API.

    PYTHONPATH=src python bench/evals_run.py [items ...]

Prints, per size: the wall time of the whole evaluation (upload, run, the record read back), the model calls made,
the events written, and the process's CPU time per call. No network beyond loopback.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from thinktank.api.app import create_app
from thinktank.config import Settings, parse_config

ADMIN = "tt-bench-admin-0123456789"
H = {"Authorization": f"Bearer {ADMIN}"}
CANDIDATES = ["alpha", "beta", "gamma"]


def _config() -> dict[str, Any]:
    cast = [{"name": c, "provider": "mock", "options": {"replies": [f"{c} says the answer is 42."]}}
            for c in CANDIDATES]
    cast.append({"name": "judge", "provider": "mock", "options": {"replies": ['{"winner": "A"}']}})
    return {"models": cast, "router": {"num_retries": 0}}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def case(n_items: int, data: Path) -> None:
    app = create_app(Settings(data_dir=data, admin_key=ADMIN), parse_config(_config()), quiet=True)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait for
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    items = [{"id": f"q{i}", "question": f"Question {i}: what is six times seven?", "reference": "42",
              "checks": [{"type": "numeric", "value": 42}, {"type": "contains", "value": "42"}]}
             for i in range(n_items)]
    try:
        async with httpx.AsyncClient(timeout=600) as http:
            cpu, start = _cpu(), time.perf_counter()
            r = await http.post(url + "/api/v1/eval/datasets", headers=H, json={"name": "bench", "items": items})
            r.raise_for_status()
            r = await http.post(url + "/api/v1/eval/runs", headers=H, json={
                "dataset_id": r.json()["id"], "candidates": CANDIDATES, "judges": ["judge"], "concurrency": 16,
                "wait": True})
            r.raise_for_status()
            record = r.json()
            wall, cpu = time.perf_counter() - start, _cpu() - cpu
        calls = len(record["calls"])
        assert record["status"] == "completed", record["error"]
        assert len(record["result"]["items"]) == n_items
        print(f"{n_items:5d} items x {len(CANDIDATES)} candidates: {wall:6.2f} s wall, {calls:6d} calls, "
              f"{record['events']:6d} events, {1000 * cpu / calls:5.2f} ms CPU per call, "
              f"record {len(r.content) / 1e6:5.1f} MB")
    finally:
        server.should_exit = True
        await task


async def main(sizes: list[int]) -> None:
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            await case(n, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main([int(a) for a in sys.argv[1:]] or [50, 200, 1000]))
