"""The configuration of agents and MCP servers (the ``agents:`` and ``mcp_servers:`` lists of the YAML file).

An agent::

    agents:
      - name: researcher
        model: gpt-4o                 # the model that thinks: any catalog name
        system: "You research questions for the user..."
        tools:                        # built-in tools, MCP tools (server.tool), or a whole server (server.*)
          - knowledge_search
          - fetch_url
          - {name: memory_remember, approval: required}
          - git.*
        models: [claude, ensemble/council]   # what ask_model may ask
        approval: never               # or required: every tool call waits for a person
        max_steps: 10                 # model calls
        time_limit: 300               # seconds of work (a paused run's wait does not count)
        approval_timeout: 3600        # seconds an approval may wait; then the call is denied

An MCP server: ``url`` (streamable HTTP, or ``transport: sse``) or ``command`` (stdio: a command line, from
this file only, never from a request or a user's settings)::

    mcp_servers:
      - name: git
        command: [mcp-server-git, --repository, /srv/repo]
        approval: required            # every tool of this server waits for a person
      - name: search
        url: https://mcp.example.com/mcp
        headers: {Authorization: "Bearer ..."}
        tools: [search, fetch]        # only these of its tools
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ..bounds import OutputTokens

__all__ = ["BUILTIN_TOOLS", "AgentConfig", "Approval", "McpServerConfig", "ToolRef", "tool_server", "unknown_tool"]

BUILTIN_TOOLS: tuple[str, ...] = (
    "knowledge_search", "ask_model", "fetch_url", "memory_recall", "memory_remember", "memory_forget", "current_time",
)
"""The tools thinktank brings itself (no code execution, no shell)."""

Approval = Literal["required", "never"]
_NAME = r"^[A-Za-z0-9_-]+$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def tool_server(name: str) -> str | None:
    """The MCP server a tool name refers to (``git`` for ``git.log`` or ``git.*``), None for a built-in."""
    return name.split(".", 1)[0] if "." in name else None


def unknown_tool(cfg: AgentConfig, servers: set[str] | frozenset[str]) -> str | None:
    """Why one of the tools ``cfg`` lists is neither built in nor a tool of one of ``servers`` (None: all are)."""
    for ref in cfg.tool_refs():
        server = tool_server(ref.name)
        if server is None and ref.name not in BUILTIN_TOOLS and ref.name not in servers:
            return (f"unknown tool '{ref.name}' (built-in tools: {', '.join(BUILTIN_TOOLS)}; an MCP server's as "
                    "<server>.<tool> or <server>.*)")
        if server is not None and server not in servers:
            return f"tool '{ref.name}': no MCP server '{server}' is configured"
    return None


class ToolRef(_In):
    """A tool an agent may use, with its own approval setting."""

    name: str = Field(min_length=1, max_length=200)
    approval: Approval | None = None
    """Overrides the agent's and the server's setting for this tool."""


class AgentConfig(_In):
    """A model that uses tools in a loop until it answers (``agent/<name>``)."""

    name: str = Field(min_length=1, max_length=200, pattern=_NAME)
    model: str = Field(min_length=1, max_length=256)
    system: str | None = Field(default=None, max_length=100_000)
    tools: list[str | ToolRef] = Field(default_factory=list, max_length=100)
    models: list[str] = Field(default_factory=list, max_length=32)
    """The models ``ask_model`` may ask (any catalog names: models, ensembles, debates, agents)."""
    knowledge_bases: list[str] = Field(default_factory=list, max_length=16)
    """Knowledge bases ``knowledge_search`` searches when the model names none (default: all the user reads)."""
    approval: Approval = "never"
    """``required``: every tool call waits for a person (a tool's or server's own setting wins)."""
    max_steps: int = Field(default=10, ge=1, le=100)
    """Model calls at most; then the run ends ``step_limit`` with what it has."""
    time_limit: float = Field(default=300.0, gt=0, le=86_400)
    """Seconds of work at most (time waiting for an approval does not count)."""
    approval_timeout: float = Field(default=3600.0, gt=0, le=30 * 86_400)
    """Seconds a proposed call waits for a decision; then it is denied."""
    tool_timeout: float = Field(default=60.0, gt=0, le=3600)
    """Seconds one tool call may take (a tool's own timeout is not longer)."""
    step_timeout: float = Field(default=120.0, gt=0, le=3600)
    """Seconds one model call may take."""
    max_tokens: OutputTokens | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    parallel_tools: int = Field(default=4, ge=1, le=32)
    """Tool calls of one step run at once, at most."""
    description: str | None = None
    cache_ttl: float = Field(default=0.0, ge=0, le=366 * 86400.0)
    """Agents answer from tools whose results change: no answer is reused unless this is set."""

    @field_validator("tools")
    @classmethod
    def _unique(cls, v: list[str | ToolRef]) -> list[str | ToolRef]:
        names = [t if isinstance(t, str) else t.name for t in v]
        for name in names:
            if not name or len(name) > 200:
                raise ValueError("a tool name has 1 to 200 characters")
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise ValueError(f"tool '{dup}' is listed twice")
        return v

    def tool_refs(self) -> list[ToolRef]:
        return [ToolRef(name=t) if isinstance(t, str) else t for t in self.tools]

    def models_used(self) -> list[str]:
        """Every catalog name a run of this agent may call."""
        return list(dict.fromkeys([self.model, *self.models]))


class McpServerConfig(_In):
    """An MCP server whose tools agents may use."""

    name: str = Field(min_length=1, max_length=64, pattern=_NAME)
    url: str | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    """Environment of a stdio server (beside PATH and HOME)."""
    cwd: str | None = None
    transport: Literal["streamable_http", "sse", "stdio"] | None = None
    """Default: ``stdio`` for a command, ``streamable_http`` for a URL."""
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    approval: Approval = "never"
    """``required``: every tool of this server waits for a person (a tool's own setting in an agent wins)."""
    tools: list[str] | None = None
    """Only these of the server's tools (default: all it lists)."""
    timeout: float = Field(default=30.0, gt=0, le=3600)
    """Seconds to connect, and a call's limit unless the agent's is shorter."""
    description: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v

    @model_validator(mode="after")
    def _one_way(self) -> McpServerConfig:
        if (self.url is None) == (self.command is None):
            raise ValueError("give url (an HTTP server) or command (a stdio server), not both")
        if self.transport is None:
            self.transport = "stdio" if self.command is not None else "streamable_http"
        if (self.transport == "stdio") != (self.command is not None):
            raise ValueError(f"transport '{self.transport}' needs {'command' if self.transport == 'stdio' else 'url'}")
        return self
