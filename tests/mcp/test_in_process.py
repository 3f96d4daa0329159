"""The MCP server built for one caller from a real app's services, with the SDK's client in this process over
memory streams (JSON-RPC framing, the initialize handshake): capabilities, prompts, progress, resources."""

from __future__ import annotations

import mcp_types as types
import pytest
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from thinktank.accounts.principal import Principal
from thinktank.mcp.caller import Caller
from thinktank.mcp.server import build_server

from .conftest import AUTH, Served, text_of


async def test_capabilities_and_instructions(served: Served) -> None:
    async with served.in_process() as client:
        caps = client.server_capabilities
        assert caps.tools is not None and caps.resources is not None and caps.prompts is not None
        assert client.server_info is not None and client.server_info.name == "thinktank"
        assert client.instructions is not None and "knowledge bases" in client.instructions


async def test_every_persona_is_a_prompt_adopting_it(served: Served) -> None:
    library = served.app.state.deliberation.library
    async with served.in_process() as client:
        prompts = (await client.list_prompts()).prompts
        assert len(prompts) == len(library) and len({p.name for p in prompts}) == len(prompts)
        first = next(p for p in prompts if p.title == library[0].name)
        assert first.arguments is not None and [a.name for a in first.arguments] == ["question"]
        assert library[0].domain in (first.description or "")
        got = await client.get_prompt(first.name, {"question": "Should we split the monolith?"})
        system, question = got.messages
        assert isinstance(system.content, types.TextContent) and isinstance(question.content, types.TextContent)
        assert system.content.text == library[0].system_prompt()
        assert system.content.text.startswith(f"You are {library[0].name}, an expert in {library[0].domain}.")
        assert question.content.text == "Should we split the monolith?"
        alone = await client.get_prompt(first.name)
        assert len(alone.messages) == 1


async def test_progress_over_memory_streams(served: Served) -> None:
    seen: list[str] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(f"{progress:g}:{message}")

    async with served.in_process() as client:
        result = await client.call_tool("run_ensemble", {"ensemble": "council", "question": "Which database?"},
                                        progress_callback=progress)
        assert not result.is_error, text_of(result)
        # without a progress token nothing is sent, and the answer is the same
        quiet = await client.call_tool("run_ensemble", {"ensemble": "council", "question": "Which database?"})
        assert quiet.structured_content["answer"] == result.structured_content["answer"]
    assert [s.split(" ")[0] for s in seen] == ["1:answer", "2:rank", "3:synthesis"]


async def test_a_cached_run_answers_at_once(served: Served) -> None:
    async with served.in_process() as client:
        first = await client.call_tool("run_ensemble", {"ensemble": "council", "question": "Cache me", "cache": True})
        second = await client.call_tool("run_ensemble", {"ensemble": "council", "question": "Cache me", "cache": True})
    run = await served.app.state.deliberation.store.get(second.structured_content["id"])
    assert run is not None and run["cached_from"] == first.structured_content["id"]
    assert second.structured_content["answer"] == first.structured_content["answer"]


async def test_a_revoked_key_stops_working_in_a_long_session(served: Served) -> None:
    """``thinktank mcp`` looks the key up for every request (as its stdio session does)."""
    created = await served.http.post(served.url + "/api/v1/keys", headers=AUTH, json={"name": "desktop"})
    key, key_id = created.json()["key"], created.json()["id"]
    state = served.app.state

    async def principal() -> Principal:
        return await state.authenticate(key, "stdio")

    async with Client(build_server(Caller(state, principal, None)), mode="legacy") as client:
        ok = await client.call_tool("ask_model", {"model": "alpha", "question": "hi"})
        assert not ok.is_error
        revoked = await served.http.delete(served.url + f"/api/v1/keys/{key_id}", headers=AUTH)
        assert revoked.status_code == 200
        refused = await client.call_tool("ask_model", {"model": "alpha", "question": "hi"})
        assert refused.is_error and "key" in text_of(refused).lower()
        with pytest.raises(MCPError):
            await client.read_resource("thinktank://knowledge-bases/x/documents")
