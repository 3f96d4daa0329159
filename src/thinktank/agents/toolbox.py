"""The tools one agent run is offered: its configured tools, less what its caller may not use, each with
whether a call of it waits for a person's approval.

Approval is decided by configuration alone, never by what the model read: a tool is ``approval: required``
when its entry in the agent says so, else when its MCP server says so, else when the agent says so. A
request's overrides can add approvals, never take one away.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .config import BUILTIN_TOOLS, AgentConfig, McpServerConfig, ToolRef, tool_server
from .tools import Tool

if TYPE_CHECKING:
    from ..accounts.principal import Principal

__all__ = ["BuiltinLookup", "McpLookup", "Offered", "Toolbox", "check_arguments"]


class BuiltinLookup(Protocol):
    def get(self, name: str) -> Tool | None: ...


class McpLookup(Protocol):
    async def all_tools(self, servers: Iterable[str]) -> tuple[list[Tool], list[str]]:
        """The tools of ``servers``, and a message for each server that could not be reached."""
        ...

    async def close(self) -> None: ...


@dataclass
class Offered:
    """What a run's model may call, by function name."""

    tools: dict[str, Tool] = field(default_factory=dict)
    approval: dict[str, bool] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def schemas(self) -> list[dict[str, Any]]:
        return [t.spec.openai() for t in self.tools.values()]


def _ref_for(qualified: str, refs: Iterable[ToolRef]) -> ToolRef | None:
    """The agent's entry that brings ``qualified``: its own name first, then its server's."""
    server = tool_server(qualified)
    best: ToolRef | None = None
    for ref in refs:
        if ref.name == qualified:
            return ref
        if server is not None and ref.name in (server, f"{server}.*"):
            best = ref
    return best


def _required(qualified: str, cfg: AgentConfig, servers: Mapping[str, McpServerConfig], *,
              trusted: bool = True) -> bool:
    """Whether a call of ``qualified`` waits for a person. ``trusted``: ``cfg`` is the configuration file's, whose
    tool entries may waive their server's approval; a request's may not."""
    server = tool_server(qualified)
    server_requires = server is not None and server in servers and servers[server].approval == "required"
    ref = _ref_for(qualified, cfg.tool_refs())
    if ref is not None and ref.approval is not None:
        return ref.approval == "required" or (server_requires and not trusted)
    return server_requires or cfg.approval == "required"


class Toolbox:
    def __init__(self, builtin: BuiltinLookup | None, mcp: McpLookup | None,
                 servers: Iterable[McpServerConfig] = ()) -> None:
        self.builtin = builtin
        self._mcp = mcp
        self.servers = {s.name: s for s in servers}

    async def close(self) -> None:
        if self._mcp is not None:
            await self._mcp.close()

    async def offer(self, cfg: AgentConfig, principal: Principal, configured: AgentConfig | None = None, *,
                    from_request: bool = False) -> Offered:
        """The tools ``cfg`` lists that ``principal`` may use. ``from_request``: a request described or changed
        the agent; then ``configured`` (the agent as the config file has it, if any) still decides what waits
        for approval too, and no tool entry of the request waives its server's approval."""
        out = Offered()
        refs = cfg.tool_refs()
        wanted_servers: list[str] = []
        for ref in refs:
            server = tool_server(ref.name) or (ref.name if ref.name in self.servers else None)
            if server is None:
                tool = self.builtin.get(ref.name) if self.builtin is not None and ref.name in BUILTIN_TOOLS else None
                if tool is not None and principal.may_use_tool(ref.name):
                    out.tools[tool.spec.name] = tool
            elif server not in wanted_servers:
                wanted_servers.append(server)
        if wanted_servers and self._mcp is not None:
            tools, warnings = await self._mcp.all_tools(wanted_servers)
            out.warnings += warnings
            for tool in tools:
                qualified = tool.spec.qualified
                if _ref_for(qualified, refs) is not None and principal.may_use_tool(qualified):
                    out.tools[tool.spec.name] = tool
        for name, tool in out.tools.items():
            qualified = tool.spec.qualified
            out.approval[name] = _required(qualified, cfg, self.servers, trusted=not from_request) or (
                from_request and configured is not None and _required(qualified, configured, self.servers))
        return out


@functools.lru_cache(maxsize=512)
def _validator(schema_json: str) -> Any:
    """A checked validator of a tool's schema (None when the schema itself is not valid), made once per schema:
    checking a schema against its meta-schema costs more than a whole agent step."""
    import jsonschema

    schema = orjson.loads(schema_json)
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError:
        return None
    return validator_class(schema)


def check_arguments(schema: dict[str, Any], arguments: Any) -> str | None:
    """Why ``arguments`` do not match the tool's JSON ``schema`` (None when they do, or when the schema
    itself is not valid: the tool then judges its arguments itself)."""
    if not isinstance(arguments, dict):
        return "the arguments must be a JSON object"
    import jsonschema

    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode())
    if validator is None:
        return None
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where + ': ' if where else ''}{error.message}"[:500]
