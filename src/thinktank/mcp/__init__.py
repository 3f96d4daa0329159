"""thinktank as an MCP server: the caller's models, ensembles, debates, knowledge bases and memory as MCP tools,
resources and prompts, over streamable HTTP at ``/mcp`` and over stdio (``thinktank mcp``).

- :mod:`.caller`: what one caller may do, as the HTTP API does it (SDK-free);
- :mod:`.inputs`: the tools' arguments (pydantic models, their JSON schemas are the tools' input schemas);
- :mod:`.server`: the MCP server built for one caller (the official ``mcp`` SDK's low-level ``Server``);
- :mod:`.http`: ``/mcp``, stateless streamable HTTP authenticated by the caller's key;
- :mod:`.stdio`: the stdio session ``thinktank mcp`` runs.

Nothing here imports the MCP SDK: the API loads it the first time ``/mcp`` is asked for (``is_mcp``).
"""

from __future__ import annotations

__all__ = ["MCP_PATH", "is_mcp"]

MCP_PATH = "/mcp"
"""Where the server answers MCP over streamable HTTP."""


def is_mcp(path: str) -> bool:
    """Whether ``path`` is the MCP endpoint (``/mcp``, with or without a trailing slash)."""
    return path == MCP_PATH or path == MCP_PATH + "/"
