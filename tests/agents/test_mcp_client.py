"""McpClients against real MCP servers over real transports (stdio, streamable HTTP, SSE)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from thinktank.accounts.principal import Principal
from thinktank.agents.config import McpServerConfig
from thinktank.agents.mcp_client import McpClients, McpServerError, McpTool
from thinktank.agents.tools import Tool, ToolContext, ToolError, ToolOutput
from thinktank.clock import SystemClock
from thinktank.errors import ConfigError
from thinktank.gateway.context import CallContext

from ..fakes.clock import FakeClock
from ..fakes.process import free_port
from .conftest import alive, children, node_server, raw_server, sdk_server

pytestmark = pytest.mark.filterwarnings("error")

Make = Callable[..., McpClients]
TC = ToolContext(principal=Principal(user_id="usr_test", role="member"), ctx=CallContext(), clock=SystemClock(),
                 run_id="run_test")
"""MCP tools read only the call's time limit (none here: each server's own timeout applies)."""


def by_name(tools: list[Tool]) -> dict[str, Tool]:
    return {tool.spec.qualified: tool for tool in tools}


async def names(clients: McpClients, server: str) -> set[str]:
    return {tool.spec.qualified for tool in await clients.tools(server)}


async def eventually(check: Callable[[], Any]) -> None:
    """Waits (at most 10 s) until ``await check()`` is true: a notification is handled by its own task."""
    for _ in range(200):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition never held")


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=Test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (repo / "notes.txt").write_text("first line\n")
    subprocess.run([*git, "add", "notes.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "Write the first notes"], check=True)
    (repo / "notes.txt").write_text("first line\nsecond line\n")
    return repo


# -- the reference servers ------------------------------------------------------------------------------------


async def test_git_server_lists_its_tools_and_runs_them(mcp_clients: Make, git_repo: Path) -> None:
    clients = mcp_clients(McpServerConfig(name="git", command=[sys.executable, "-m", "mcp_server_git",
                                                               "--repository", str(git_repo)]))
    tools = by_name(await clients.tools("git"))
    assert {"git.git_status", "git.git_log", "git.git_diff_unstaged"} <= set(tools)
    log_tool = tools["git.git_log"]
    assert isinstance(log_tool, McpTool)
    assert log_tool.spec.name == "git__git_log"
    assert log_tool.spec.server == "git"
    assert log_tool.spec.description
    assert log_tool.spec.parameters["type"] == "object"
    assert "repo_path" in log_tool.spec.parameters["properties"]

    status = await tools["git.git_status"].call({"repo_path": str(git_repo)}, TC)
    assert not status.is_error
    assert "main" in status.text
    assert "notes.txt" in status.text  # modified since the commit
    log = await log_tool.call({"repo_path": str(git_repo)}, TC)
    assert "Write the first notes" in log.text
    diff = await tools["git.git_diff_unstaged"].call({"repo_path": str(git_repo)}, TC)
    assert "+second line" in diff.text
    # a git error is a result the model reads, not a failure of the call
    bad = await tools["git.git_show"].call({"repo_path": str(git_repo), "revision": "no-such-revision"}, TC)
    assert bad.is_error
    assert "no-such-revision" in bad.text


async def test_filesystem_server_reads_inside_its_folder_only(mcp_clients: Make, node_modules: Path,
                                                              tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "plan.md").write_text("# Plan\nShip the MCP client.\n")
    (tmp_path / "secret.txt").write_text("not for agents")
    clients = mcp_clients(McpServerConfig(name="files",
                                          command=node_server(node_modules, "server-filesystem", str(allowed))))
    tools = by_name(await clients.tools("files"))
    assert {"files.read_text_file", "files.list_directory", "files.write_file"} <= set(tools)
    assert tools["files.read_text_file"].spec.name == "files__read_text_file"

    read = await tools["files.read_text_file"].call({"path": str(allowed / "plan.md")}, TC)
    assert not read.is_error
    assert read.text == "# Plan\nShip the MCP client.\n"
    listing = await tools["files.list_directory"].call({"path": str(allowed)}, TC)
    assert "plan.md" in listing.text

    for outside in (tmp_path / "secret.txt", allowed / ".." / "secret.txt"):
        refused = await tools["files.read_text_file"].call({"path": str(outside)}, TC)
        assert refused.is_error  # the server answers with an error result
        assert "Access denied" in refused.text
        assert "not for agents" not in refused.text


async def test_memory_server_keeps_a_graph(mcp_clients: Make, node_modules: Path, tmp_path: Path) -> None:
    memory_file = tmp_path / "memory.jsonl"
    clients = mcp_clients(McpServerConfig(name="memory", command=node_server(node_modules, "server-memory"),
                                          env={"MEMORY_FILE_PATH": str(memory_file)}))
    tools = by_name(await clients.tools("memory"))
    created = await tools["memory.create_entities"].call({"entities": [
        {"name": "Ada Lovelace", "entityType": "person", "observations": ["wrote the first program"]},
        {"name": "Analytical Engine", "entityType": "machine", "observations": ["designed by Babbage"]},
    ]}, TC)
    assert not created.is_error
    related = await tools["memory.create_relations"].call({"relations": [
        {"from": "Ada Lovelace", "to": "Analytical Engine", "relationType": "programmed"}]}, TC)
    assert not related.is_error

    graph = await tools["memory.read_graph"].call({}, TC)
    assert "wrote the first program" in graph.text
    assert graph.data is not None  # the structured content
    assert {e["name"] for e in graph.data["entities"]} == {"Ada Lovelace", "Analytical Engine"}
    assert graph.data["relations"] == [{"from": "Ada Lovelace", "to": "Analytical Engine",
                                        "relationType": "programmed"}]
    assert "Ada Lovelace" in memory_file.read_text()  # where it was configured to keep it


# -- server-everything: stdio, streamable HTTP and SSE --------------------------------------------------------


def everything(transport: str, node_modules: Path, urls: dict[str, str], **options: object) -> McpServerConfig:
    if transport == "stdio":
        return McpServerConfig.model_validate(
            {"name": "everything", "command": node_server(node_modules, "server-everything", "stdio"), **options})
    return McpServerConfig.model_validate({"name": "everything", "url": urls[transport], "transport": transport,
                                           **options})


@pytest.mark.parametrize("transport", ["stdio", "streamable_http", "sse"])
async def test_everything_server_over_each_transport(mcp_clients: Make, node_modules: Path,
                                                     everything_urls: dict[str, str], transport: str) -> None:
    clients = mcp_clients(everything(transport, node_modules, everything_urls))
    tools = by_name(await clients.tools("everything"))
    assert {"everything.echo", "everything.get-sum", "everything.get-tiny-image",
            "everything.get-resource-reference", "everything.get-structured-content"} <= set(tools)
    assert "everything.simulate-research-query" not in tools  # callable only as a task
    assert tools["everything.get-sum"].spec.name == "everything__get-sum"
    assert set(tools["everything.get-sum"].spec.parameters["properties"]) == {"a", "b"}

    echo = await tools["everything.echo"].call({"message": "hello, tools"}, TC)
    assert echo == ToolOutput(text="Echo: hello, tools")
    total = await tools["everything.get-sum"].call({"a": 2, "b": 40}, TC)
    assert "42" in total.text
    wrong = await tools["everything.get-sum"].call({"a": "two", "b": 40}, TC)  # an error result
    assert wrong.is_error
    assert "Invalid arguments" in wrong.text
    image = await tools["everything.get-tiny-image"].call({}, TC)
    assert "[image: image/png]" in image.text
    assert "iVBOR" not in image.text  # the image's data is not given to the model as text
    resource = await tools["everything.get-resource-reference"].call({"resourceType": "Text", "resourceId": 2}, TC)
    assert "[resource: demo://resource/dynamic/text/2]\nResource 2: This is a plaintext resource" in resource.text
    structured = await tools["everything.get-structured-content"].call({"location": "Chicago"}, TC)
    assert isinstance(structured.data, dict)
    assert "temperature" in structured.data

    # concurrent calls share the connection
    results = await asyncio.gather(*(tools["everything.get-sum"].call({"a": i, "b": 1}, TC) for i in range(8)))
    assert [r.text for r in results] == [f"The sum of {i} and 1 is {i + 1}." for i in range(8)]


@pytest.mark.parametrize("transport", ["stdio", "streamable_http"])
async def test_a_call_past_the_timeout_fails_and_the_next_call_reconnects(
        mcp_clients: Make, node_modules: Path, everything_urls: dict[str, str], transport: str) -> None:
    """A long-running tool past the caller's time limit (the server's own timeout, when no shorter limit is
    given: see the hang of raw_server.py)."""
    clients = mcp_clients(everything(transport, node_modules, everything_urls))
    with pytest.raises(ToolError, match=r"'everything\.trigger-long-running-operation' did not answer within 1 s"):
        await clients.call("everything", "trigger-long-running-operation", {"duration": 30, "steps": 2},
                           time_limit=1)
    tools = by_name(await clients.tools("everything"))  # listed again on the new connection
    again = await tools["everything.echo"].call({"message": "still here"}, TC)
    assert again.text == "Echo: still here"


# -- refreshing the tool list --------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["raw", "sdk"])
async def test_the_tool_list_is_kept_until_the_server_says_it_changed(mcp_clients: Make, server: str) -> None:
    """raw_server.py sends notifications/tools/list_changed on its 2025-11-25 session; sdk_server.py speaks
    2026-07-28, where the notification comes on a subscriptions/listen stream."""
    config = raw_server(server) if server == "raw" else sdk_server(server)
    clients = mcp_clients(config)
    first = await names(clients, server)
    assert f"{server}.grow" in first

    quiet = await clients.call(server, "grow_quietly", {})
    assert quiet.text == "grown quietly"
    assert await names(clients, server) == first  # listed once, not again without a notification

    grown = await clients.call(server, "grow", {})
    assert grown.text == "grown"

    async def refreshed() -> bool:
        return await names(clients, server) == first | {f"{server}.extra", f"{server}.quiet"}

    await eventually(refreshed)
    extra = by_name(await clients.tools(server))[f"{server}.extra"]
    assert (await extra.call({"text": "hi"}, TC)).text == "extra: hi"


# -- servers that fail -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tool", "message"), [
    ("crash", r"'raw\.crash' failed: the server closed the connection"),
    ("garbage", r"'raw\.garbage' failed: the server sent something that is not MCP \(ValidationError: Invalid JSON"),
    ("malformed", r"'raw\.malformed' answered something that is not a tool result: content: Input should be a valid"),
    ("hang", r"'raw\.hang' did not answer within 2 s"),
])
async def test_a_server_failing_mid_call_is_a_tool_error_and_the_next_call_reconnects(
        mcp_clients: Make, tool: str, message: str) -> None:
    clients = mcp_clients(raw_server(timeout=2))
    pid = int((await clients.call("raw", "pid", {})).text)
    with pytest.raises(ToolError, match=message):
        await clients.call("raw", tool, {})
    new_pid = int((await clients.call("raw", "pid", {})).text)
    assert new_pid != pid  # a new process
    await clients.close()
    assert not alive(pid)
    assert not alive(new_pid)


async def test_a_crash_fails_the_calls_under_way_on_the_connection(mcp_clients: Make) -> None:
    clients = mcp_clients(sdk_server(timeout=60))
    pid = (await clients.call("sdk", "pid", {})).text
    sleeping = asyncio.ensure_future(clients.call("sdk", "sleep", {"seconds": 30}))
    with pytest.raises(ToolError, match=r"'sdk\.crash' failed: the server closed the connection"):
        await clients.call("sdk", "crash", {})
    with pytest.raises(ToolError, match=r"'sdk\.sleep' failed: the server closed the connection"):
        await sleeping
    assert (await clients.call("sdk", "pid", {})).text != pid


async def test_a_timeout_retires_the_connection_once_its_other_calls_are_done(mcp_clients: Make,
                                                                              tmp_path: Path) -> None:
    clients = mcp_clients(sdk_server())
    pid = int((await clients.call("sdk", "pid", {})).text)
    flag = tmp_path / "flag"
    waiting = asyncio.ensure_future(clients.call("sdk", "wait_for", {"path": str(flag)}))
    with pytest.raises(ToolError, match=r"'sdk\.sleep' did not answer within 1 s"):
        await clients.call("sdk", "sleep", {"seconds": 60}, time_limit=1)
    assert alive(pid)  # retired, but still serving the call under way
    new_pid = int((await clients.call("sdk", "pid", {})).text)  # new calls go to a new connection
    assert new_pid != pid
    flag.write_text("go")
    assert (await waiting).text == f"found {flag}"

    async def gone() -> bool:
        return not alive(pid)

    await eventually(gone)  # closed once its last call was done


async def test_an_unknown_tool_is_refused_as_a_tool_error(mcp_clients: Make) -> None:
    clients = mcp_clients(raw_server())
    with pytest.raises(ToolError, match="refused the call to 'nope': Unknown tool: nope"):
        await clients.call("raw", "nope", {})
    assert (await clients.call("raw", "echo", {"text": "fine"})).text == "echo: fine"


async def test_a_shorter_time_limit_of_the_caller_wins(mcp_clients: Make) -> None:
    clients = mcp_clients(raw_server(timeout=30))
    with pytest.raises(ToolError, match=r"'raw\.hang' did not answer within 0\.5 s"):
        await clients.call("raw", "hang", {}, time_limit=0.5)
    assert (await clients.call("raw", "echo", {"text": "next"})).text == "echo: next"


def test_a_server_configured_twice_is_refused(clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match="server 'raw' is configured twice"):
        McpClients([raw_server(), raw_server()], clock=clock)


async def test_unreachable_servers_are_reported_not_raised(mcp_clients: Make, tmp_path: Path) -> None:
    clients = mcp_clients(
        raw_server("good"),
        McpServerConfig(name="missing", command=[str(tmp_path / "no-such-server")]),
        McpServerConfig(name="exits", command=[sys.executable, "-c", "import sys; sys.stderr.write('no config\\n')"]),
        McpServerConfig(name="offline", url=f"http://127.0.0.1:{free_port()}/mcp"),
    )
    tools, problems = await clients.all_tools(["good", "missing", "exits", "offline", "unknown", "good"])
    assert {tool.spec.server for tool in tools} == {"good"}
    assert len(tools) == len(await clients.tools("good"))
    assert len(problems) == 4
    missing, exits, offline, unknown = problems
    assert missing.startswith("MCP server 'missing' is unavailable: it could not be connected: no such file")
    assert exits.startswith("MCP server 'exits' is unavailable:")
    assert "(it said: no config)" in exits
    assert offline.startswith("MCP server 'offline' is unavailable: it could not be connected: ConnectError")
    assert unknown == "MCP server 'unknown' is not configured (mcp_servers: exits, good, missing, offline)"
    with pytest.raises(McpServerError, match="MCP server 'missing' is unavailable"):
        await clients.tools("missing")
    with pytest.raises(ConfigError, match="'unknown' is not configured"):
        await clients.tools("unknown")
    with pytest.raises(ToolError, match="MCP server 'offline' is unavailable"):
        await clients.call("offline", "anything", {})


async def test_a_server_that_failed_is_not_tried_again_at_once(mcp_clients: Make, clock: FakeClock,
                                                               tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    script = "import sys; open(sys.argv[1], 'a').write('started\\n')"
    clients = mcp_clients(McpServerConfig(name="flaky", command=[sys.executable, "-c", script, str(starts)]),
                          retry_after=30)
    with pytest.raises(McpServerError, match=r"closed the connection|could not be connected"):
        await clients.tools("flaky")
    assert starts.read_text().count("started") == 1
    clock.advance(10)
    with pytest.raises(McpServerError, match=r"\(next attempt in 20 s\)"):
        await clients.tools("flaky")
    assert starts.read_text().count("started") == 1
    clock.advance(25)
    with pytest.raises(McpServerError):
        await clients.tools("flaky")
    assert starts.read_text().count("started") == 2


async def test_the_server_gets_its_configured_environment_and_folder_only(
        mcp_clients: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-of-thinktank")
    clients = mcp_clients(raw_server(env={"REPO_TOKEN": "for-this-server"}, cwd=str(tmp_path)))
    seen = json.loads((await clients.call("raw", "environment", {})).text)
    assert seen["cwd"] == str(tmp_path)
    assert seen["env"]["REPO_TOKEN"] == "for-this-server"
    assert "OPENAI_API_KEY" not in seen["env"]
    assert seen["env"]["PATH"] == os.environ["PATH"]


async def test_the_tools_allowlist_hides_the_other_tools(mcp_clients: Make) -> None:
    clients = mcp_clients(raw_server(tools=["echo", "pid"]))
    assert await names(clients, "raw") == {"raw.echo", "raw.pid"}


async def test_headers_go_to_an_http_server(mcp_clients: Make, sdk_http_url: str) -> None:
    clients = mcp_clients(McpServerConfig(name="remote", url=sdk_http_url,
                                          headers={"Authorization": "Bearer token-for-remote"}))
    tools = by_name(await clients.tools("remote"))
    seen = await tools["remote.headers"].call({}, TC)
    assert isinstance(seen.data, dict)
    assert seen.data["authorization"] == "Bearer token-for-remote"
    assert (await tools["remote.sleep"].call({"seconds": 0}, TC)).text == "slept 0.0 s"


# -- closing ---------------------------------------------------------------------------------------------------


async def test_close_stops_every_server_process(mcp_clients: Make, node_modules: Path) -> None:
    marker = "server-everything/dist/index.js stdio"
    clients = mcp_clients(sdk_server(), raw_server(), McpServerConfig(
        name="everything", command=node_server(node_modules, "server-everything", "stdio")))
    _, problems = await clients.all_tools(["sdk", "raw", "everything"])
    assert problems == []
    pids = [int((await clients.call(name, "pid", {})).text) for name in ("sdk", "raw")]
    assert all(alive(pid) for pid in pids)
    assert len(children(marker)) == 1

    await clients.close()
    assert not any(alive(pid) for pid in pids)
    assert children(marker) == []
    with pytest.raises(ToolError, match="the MCP clients are closed"):
        await clients.call("raw", "pid", {})


def test_importing_the_client_does_not_import_the_sdk() -> None:
    code = "import sys, thinktank.agents.mcp_client; print('mcp' in sys.modules, 'anyio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout
    assert out.split() == ["False", "False"]
