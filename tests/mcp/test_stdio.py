"""``thinktank mcp``: the SDK's stdio client spawning ``python -m thinktank mcp`` with the environment of a
desktop assistant's configuration (a data directory, a config file, the key in ``THINKTANK_API_KEY``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

from ..fakes.process import run
from .conftest import ADMIN, CONFIG, text_of


@pytest.fixture
def stdio_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "thinktank.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    return {**env, "THINKTANK_CONFIG": str(config), "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_API_KEY": ADMIN}


def params(env: dict[str, str], *args: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "thinktank", "mcp", *args], env=env)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_over_stdio(stdio_env: dict[str, str], mode: str) -> None:
    seen: list[str] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    async with Client(params(stdio_env), mode=mode) as client:
        assert client.server_info is not None and client.server_info.name == "thinktank"
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"ask_model", "run_ensemble", "run_debate", "search_knowledge", "remember"} <= names
        answer = await client.call_tool("ask_model", {"model": "beta", "question": "Which database?"})
        assert text_of(answer) == "Beta says: SQLite first."
        run = await client.call_tool("run_debate", {"debate": "panel", "question": "Which database?", "plan": True},
                                     progress_callback=progress)
        assert not run.is_error, text_of(run)
        plan = await client.read_resource(f"thinktank://runs/{run.structured_content['id']}/plan.md")
        assert "Ship v1 on PostgreSQL" in str(plan.contents[0])
        refused = await client.call_tool("ask_model", {"model": "nope", "question": "hi"})
        assert refused.is_error
    assert seen[0].startswith("analysis finished") and seen[-1].startswith("planning finished")


async def test_it_acts_as_the_keys_user(stdio_env: dict[str, str]) -> None:
    created = run(["keys", "create", "--name", "desktop", "--models", "alpha"], stdio_env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    async with Client(params({**stdio_env, "THINKTANK_API_KEY": key}), mode="legacy") as client:
        models = await client.call_tool("list_models", {})
        assert [m["id"] for m in models.structured_content["models"]] == ["alpha"]
        refused = await client.call_tool("ask_model", {"model": "beta", "question": "hi"})
        assert refused.is_error and "does not exist here" in text_of(refused)
    # --api-key wins over the environment
    async with Client(params(stdio_env, "--api-key", key), mode="legacy") as client:
        models = await client.call_tool("list_models", {})
        assert [m["id"] for m in models.structured_content["models"]] == ["alpha"]


async def test_stdout_carries_the_protocol_alone(stdio_env: dict[str, str], tmp_path: Path) -> None:
    messages: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "ask_model", "arguments": {"model": "alpha", "question": "hi"}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "run_ensemble", "arguments": {"ensemble": "council", "question": "hi"},
            "_meta": {"progressToken": "p1"}}},
    ]
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "thinktank", "mcp", "--log-level", "debug", env=stdio_env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    await proc.stdin.drain()
    replies: list[dict[str, Any]] = []
    while not any(r.get("id") == 3 for r in replies):  # every line is a JSON-RPC message, nothing else
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line, log.read_text()
        replies.append(orjson.loads(line))
    proc.stdin.close()  # the client is done: the server stops
    rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, log.read_text()
    assert rest == b""
    assert all(r["jsonrpc"] == "2.0" for r in replies)
    by_id = {r["id"]: r for r in replies if "id" in r}
    assert by_id[1]["result"]["serverInfo"]["name"] == "thinktank"
    assert by_id[2]["result"]["content"][0]["text"] == "Alpha says: use PostgreSQL."
    assert by_id[3]["result"]["isError"] is False
    progress = [r["params"] for r in replies if r.get("method") == "notifications/progress"]
    assert [p["progress"] for p in progress] == [1, 2, 3] and {p["progressToken"] for p in progress} == {"p1"}
    assert "DEBUG" in log.read_text()  # the logs went to stderr


def test_without_a_valid_key_it_says_so_and_serves_nothing(stdio_env: dict[str, str]) -> None:
    clean = {k: v for k, v in stdio_env.items() if k != "THINKTANK_API_KEY"}
    missing = subprocess.run([sys.executable, "-m", "thinktank", "mcp"], input=b"", env=clean, capture_output=True,
                             timeout=60, check=False)
    assert missing.returncode == 2 and missing.stdout == b""
    assert b"no API key" in missing.stderr and b"THINKTANK_API_KEY" in missing.stderr
    wrong = subprocess.run([sys.executable, "-m", "thinktank", "mcp"], input=b"",
                           env={**clean, "THINKTANK_API_KEY": "tt-not-a-key"}, capture_output=True, timeout=60,
                           check=False)
    assert wrong.returncode == 2 and wrong.stdout == b""
    assert b"error:" in wrong.stderr and b"key" in wrong.stderr.lower()
    assert os.path.exists(clean["THINKTANK_DATA_DIR"])  # the app started (and stopped) before saying so
    loud = subprocess.run([sys.executable, "-m", "thinktank", "mcp", "--log-level", "loud"], input=b"",
                          env=stdio_env, capture_output=True, timeout=60, check=False)
    assert loud.returncode == 2 and loud.stdout == b"" and b"unknown log level 'loud'" in loud.stderr
