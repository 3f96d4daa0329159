"""The MCP Inspector's CLI mode (``@modelcontextprotocol/inspector``, the TypeScript SDK underneath) as a
third-party client of thinktank: over streamable HTTP with the key in an ``Authorization`` header, and over
stdio spawning ``python -m thinktank mcp``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from .conftest import ADMIN, CONFIG, Served


async def inspect(cli: list[str], *args: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    """Run the Inspector's CLI (in the background: the server answering it runs in this loop): its exit
    status, its JSON output (None if it printed none) and its stderr."""
    proc = await asyncio.create_subprocess_exec(*cli, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    return proc.returncode or 0, orjson.loads(text) if text.strip().startswith("{") else None, err.decode()


def bearer(key: str = ADMIN) -> list[str]:
    return ["--header", f"Authorization: Bearer {key}"]


async def test_inspector_over_http(served: Served, inspector: list[str]) -> None:
    http = [served.mcp_url, "--transport", "http"]
    code, listed, err = await inspect(inspector, *http, "--method", "tools/list", *bearer())
    assert code == 0, err
    assert {t["name"] for t in listed["tools"]} >= {"ask_model", "run_ensemble", "run_debate", "search_knowledge",
                                                    "add_document", "remember", "recall", "forget", "get_run",
                                                    "list_models"}

    code, answer, err = await inspect(inspector, *http, "--method", "tools/call", "--tool-name", "ask_model",
                                      "--tool-arg", "model=alpha", "question=Which database?", "max_tokens=50",
                                      *bearer())
    assert code == 0, err
    assert answer["isError"] is False and answer["content"][0]["text"] == "Alpha says: use PostgreSQL."

    code, debate, err = await inspect(inspector, *http, "--method", "tools/call", "--tool-name", "run_debate",
                                      "--tool-arg", "debate=panel", "question=Which database?", "plan=true", *bearer())
    assert code == 0, err
    run_id = debate["structuredContent"]["id"]
    code, plan, err = await inspect(inspector, *http, "--method", "resources/read", "--uri",
                                    f"thinktank://runs/{run_id}/plan.md", *bearer())
    assert code == 0, err
    assert plan["contents"][0]["text"] == "# Plan\n## Goal\nShip v1 on PostgreSQL."

    code, prompts, err = await inspect(inspector, *http, "--method", "prompts/list", *bearer())
    assert code == 0, err
    name = prompts["prompts"][0]["name"]
    code, prompt, err = await inspect(inspector, *http, "--method", "prompts/get", "--prompt-name", name,
                                      "--prompt-args", "question=Monolith or services?", *bearer())
    assert code == 0, err
    assert prompt["messages"][0]["content"]["text"].startswith("You are ")

    code, unknown, err = await inspect(inspector, *http, "--method", "tools/call", "--tool-name", "ask_model",
                                       "--tool-arg", "model=nope", "question=hi", *bearer())
    assert code == 0, err
    assert unknown["isError"] is True and "does not exist" in unknown["content"][0]["text"]


async def test_inspector_without_a_key_or_with_one_for_another_model(served: Served, inspector: list[str]) -> None:
    http = [served.mcp_url, "--transport", "http"]
    code, out, err = await inspect(inspector, *http, "--method", "tools/list")
    assert code == 1 and out is None
    assert "No API key" in err
    limited = await served.key(models=["alpha"])
    code, refused, err = await inspect(inspector, *http, "--method", "tools/call", "--tool-name", "ask_model",
                                       "--tool-arg", "model=beta", "question=hi", *bearer(limited))
    assert code == 0, err
    assert refused["isError"] is True and "does not exist here" in refused["content"][0]["text"]


async def test_inspector_over_stdio(inspector: list[str], env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "thinktank.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    stdio_env = {**env, "THINKTANK_CONFIG": str(config), "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_API_KEY": ADMIN}
    # the command's own arguments after "--" (the Inspector's options would take them otherwise)
    code, answer, err = await inspect(inspector, sys.executable, "--method", "tools/call", "--tool-name",
                                      "run_ensemble", "--tool-arg", "ensemble=council", "question=Which database?",
                                      "--", "-m", "thinktank", "mcp", env=stdio_env)
    assert code == 0, err
    assert answer["isError"] is False
    assert answer["structuredContent"]["answer"] == "Fused: use PostgreSQL, start simple."
