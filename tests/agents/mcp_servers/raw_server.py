"""A small MCP server that speaks JSON-RPC by hand over stdio (protocol 2025-11-25, the ``initialize``
handshake), so that it can misbehave on purpose: a tool that kills the process in the middle of a call, one
that answers a line that is not JSON, one whose result is not a tool result, one that never answers; and
tools that change the tool list, with and without ``notifications/tools/list_changed``.

Run as ``python raw_server.py`` (a stdio server)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

VERSION = "2025-11-25"
TEXT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "echo": ("Says its text back.", TEXT_SCHEMA),
    "environment": ("The server's environment variables and working directory.", EMPTY_SCHEMA),
    "pid": ("The server's process id.", EMPTY_SCHEMA),
    "grow": ("Adds the tool 'extra' and says the tools changed.", EMPTY_SCHEMA),
    "grow_quietly": ("Adds the tool 'quiet' without saying so.", EMPTY_SCHEMA),
    "crash": ("Exits in the middle of the call.", EMPTY_SCHEMA),
    "garbage": ("Answers a line that is not JSON.", EMPTY_SCHEMA),
    "malformed": ("Answers a result that is not a tool result.", EMPTY_SCHEMA),
    "hang": ("Never answers.", EMPTY_SCHEMA),
}


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def text(id_: object, value: str, *, is_error: bool = False) -> None:
    send({"jsonrpc": "2.0", "id": id_, "result": {"content": [{"type": "text", "text": value}], "isError": is_error}})


def call(id_: object, name: str, arguments: dict[str, Any], tools: dict[str, tuple[str, dict[str, Any]]]) -> None:
    if name not in tools:
        send({"jsonrpc": "2.0", "id": id_, "error": {"code": -32602, "message": f"Unknown tool: {name}"}})
    elif name in ("echo", "extra", "quiet"):
        text(id_, f"{name}: {arguments.get('text', '')}")
    elif name == "environment":
        text(id_, json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}))
    elif name == "pid":
        text(id_, str(os.getpid()))
    elif name == "grow":
        tools["extra"] = ("A tool added at run time.", TEXT_SCHEMA)
        send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        text(id_, "grown")
    elif name == "grow_quietly":
        tools["quiet"] = ("A tool added without a notification.", TEXT_SCHEMA)
        text(id_, "grown quietly")
    elif name == "crash":
        os._exit(3)
    elif name == "garbage":
        sys.stdout.write("this line is not JSON-RPC\n")
        sys.stdout.flush()
    elif name == "malformed":
        send({"jsonrpc": "2.0", "id": id_, "result": {"content": "not a list of content blocks"}})
    # "hang": no answer


def main() -> None:
    tools = dict(TOOLS)
    for line in sys.stdin:
        message = json.loads(line)
        id_, method = message.get("id"), message.get("method")
        if id_ is None or method is None:
            continue  # a notification, or an answer
        params = message.get("params") or {}
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": id_, "result": {
                "protocolVersion": VERSION, "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "raw", "version": "1.0"}}})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": id_, "result": {}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": id_, "result": {"tools": [
                {"name": name, "description": description, "inputSchema": schema}
                for name, (description, schema) in tools.items()]}})
        elif method == "tools/call":
            call(id_, params.get("name", ""), params.get("arguments") or {}, tools)
        else:
            send({"jsonrpc": "2.0", "id": id_, "error": {"code": -32601, "message": f"Method not found: {method}"}})


if __name__ == "__main__":
    main()
