"""Bad input to the MCP server: unknown names, arguments of the wrong type, huge numbers, lone surrogates, in
both eras of the protocol and as raw bytes. Each is the caller's error (a tool error or a JSON-RPC error), the
server never fails and answers the next request as usual."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from mcp.shared.exceptions import MCPError

from .conftest import ADMIN, Served, text_of

MODERN = "2026-07-28"
LEGACY = "2025-06-18"
_META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


async def raw_call(served: Served, tool: str, arguments: str, *, modern: bool) -> httpx.Response:
    """``tools/call`` sent as raw bytes (``arguments`` is JSON text, so it may hold what no encoder writes)."""
    meta = f', "_meta": {orjson.dumps(_META).decode()}' if modern else ""
    body = (f'{{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {{"name": "{tool}", '
            f'"arguments": {arguments}{meta}}}}}').encode()
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN if modern else LEGACY}
    if modern:
        headers.update({"Mcp-Method": "tools/call", "Mcp-Name": tool})
    return await served.http.post(served.mcp_url, content=body, headers=headers)


def reply(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message a response carries (as JSON or as the last event of a stream)."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        data = [d for d in data if d]
        message: dict[str, Any] = orjson.loads(data[-1])
        return message
    parsed: dict[str, Any] = response.json()
    return parsed


async def test_unknown_names_and_arguments_of_the_wrong_type(served: Served) -> None:
    async with served.client() as client:
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("ask_model", {"model": "nope", "question": "hi"}, "The model 'nope' does not exist here"),
            ("ask_model", {"model": "alpha"}, "question: Field required"),
            ("ask_model", {"model": "alpha", "question": ["hi"]}, "question: Input should be a valid string"),
            ("ask_model", {"model": "alpha", "question": "hi", "max_tokens": "lots"}, "max_tokens"),
            ("ask_model", {"model": "alpha", "question": "hi", "max_tokens": 10**30},
             "max_tokens: Input should be less than or equal to 2147483647"),
            ("ask_model", {"model": "alpha", "question": "hi", "temperature": 7}, "temperature"),
            ("ask_model", {"model": "alpha", "question": "hi", "base_url": "http://evil"},
             "base_url: Extra inputs are not permitted"),
            ("ask_model", {"model": "x" * 300, "question": "hi"}, "model: String should have at most 256"),
            ("run_ensemble", {"ensemble": "nope", "question": "hi"}, "There is no ensemble 'nope'"),
            ("run_debate", {"debate": "panel", "question": "hi", "rounds": 10**20}, "rounds"),
            ("run_debate", {"debate": "panel", "question": "   "}, "The question is empty"),
            ("search_knowledge", {"knowledge_bases": [], "query": "tea"}, "knowledge_bases"),
            ("search_knowledge", {"knowledge_bases": ["nope"], "query": "tea", "top_k": 2**70}, "top_k"),
            ("search_knowledge", {"knowledge_bases": ["nope"], "query": "tea"}, "knowledge base 'nope' not found"),
            ("add_document", {"knowledge_base": "nope"}, "give either text or url"),
            ("add_document", {"knowledge_base": "nope", "text": "x", "url": "https://example.com/"},
             "give either text or url"),
            ("remember", {"text": "x" * 501}, "text: String should have at most 500"),
            ("remember", {"text": "!!!"}, "a memory needs some words"),
            ("remember", {"text": "Likes tea.", "kind": "secret"}, "kind: Input should be 'fact'"),
            ("recall", {"limit": -1}, "limit"),
            ("get_run", {"run_id": "run_nope"}, "There is no run 'run_nope'"),
            ("get_run", {"run_id": 12}, "run_id: Input should be a valid string"),
        ]
        for tool, arguments, expected in cases:
            result = await client.call_tool(tool, arguments)
            assert result.is_error, (tool, arguments, text_of(result))
            assert expected in text_of(result), (tool, arguments, text_of(result))
        with pytest.raises(MCPError, match="Unknown tool"):
            await client.call_tool("rm_rf", {})
        for uri in ("thinktank://runs/run_nope/plan.md", "thinktank://runs/run_nope/secrets.txt",
                    "file:///etc/passwd", "thinktank://knowledge-bases/nope/documents/doc_x"):
            with pytest.raises(MCPError):
                await client.read_resource(uri)
        with pytest.raises(MCPError, match="Unknown prompt"):
            await client.get_prompt("nobody")
        prompt = (await client.list_prompts()).prompts[0].name
        with pytest.raises(MCPError, match="Unknown prompt argument"):
            await client.get_prompt(prompt, {"role": "root"})
        # and it still answers
        ok = await client.call_tool("ask_model", {"model": "alpha", "question": "hi"})
        assert not ok.is_error


@pytest.mark.parametrize("modern", [True, False], ids=["2026-07-28", "handshake"])
async def test_huge_numbers_and_lone_surrogates_do_not_crash_it(served: Served, modern: bool) -> None:
    hostile = [
        '{"model": "alpha", "question": "hi", "max_tokens": 1' + "0" * 400 + "}",
        '{"model": "alpha", "question": "hi", "max_tokens": 1' + "0" * 5000 + "}",
        '{"model": "alpha", "question": "hi", "temperature": 1e400}',
        '{"model": "alpha", "question": "hi \\ud800 there"}',
        '{"model": "\\udfff", "question": "hi"}',
        '{"model": "alpha", "question": "hi", "knowledge_bases": ["\\ud83d"]}',
        '{"model": "alpha", "question": ' + "[" * 5000 + "]" * 5000 + "}",
    ]
    for arguments in hostile:
        r = await raw_call(served, "ask_model", arguments, modern=modern)
        assert r.status_code < 500, (arguments[:80], r.status_code, r.text[:300])
        message = reply(r)
        if "result" in message:  # a tool error the model can read
            assert message["result"]["isError"] is True, (arguments[:80], message)
        else:  # or the JSON-RPC error of a request that cannot be read
            assert message["error"]["code"] < 0, (arguments[:80], message)
    surrogate = reply(await raw_call(served, "ask_model", '{"model": "alpha", "question": "hi \\ud800"}',
                                     modern=modern))
    if "result" in surrogate:
        assert "not valid Unicode" in surrogate["result"]["content"][0]["text"]
    ok = reply(await raw_call(served, "ask_model", '{"model": "alpha", "question": "hi"}', modern=modern))
    assert ok["result"]["isError"] is False
    assert ok["result"]["content"][0]["text"] == "Alpha says: use PostgreSQL."


async def test_lone_surrogates_in_resources_and_prompts(served: Served) -> None:
    async def raw(method: str, params: str, name: str | None = None) -> dict[str, Any]:
        meta = orjson.dumps(_META).decode()
        body = f'{{"jsonrpc": "2.0", "id": 3, "method": "{method}", "params": {{{params}, "_meta": {meta}}}}}'
        headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN,
                   "Mcp-Method": method, **({"Mcp-Name": name} if name else {})}
        r = await served.http.post(served.mcp_url, content=body.encode(), headers=headers)
        assert r.status_code < 500, r.text
        return reply(r)

    read = await raw("resources/read", '"uri": "thinktank://knowledge-bases/\\ud800/documents"',
                     "thinktank://knowledge-bases/?/documents")
    assert "error" in read
    prompt = await raw("prompts/get", '"name": "priya-raman", "arguments": {"question": "\\udc00"}', "priya-raman")
    assert "error" in prompt
    fine = await raw("prompts/get", '"name": "priya-raman", "arguments": {"question": "Monolith?"}', "priya-raman")
    assert fine["result"]["messages"][1]["content"]["text"] == "Monolith?"
