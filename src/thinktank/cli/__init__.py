"""The ``thinktank`` command: one module per command group.

Commands that use models (``chat``, ``ask``, ``debate``, ``models``, ``leaderboard``, ``usage``,
``kb``) are clients of a server (see :mod:`.client`); ``serve`` runs one, ``worker`` runs its queued jobs only
and ``mcp`` runs the app behind an MCP stdio session; ``users``, ``keys``,
``teams``, ``db`` and ``admin-key`` work on the server's data directly, where it runs.
"""

from __future__ import annotations

import typer

from .accounts import keys_app, teams_app, users_app
from .admin_key import admin_key_app
from .agents import agent_command
from .db import db_app
from .eval import eval_app
from .kb import kb_app
from .mcp import mcp_command
from .mock_upstream import mock_upstream
from .models import chat_command, models_command
from .runs import ask_command, debate_command, leaderboard_command
from .serve import serve
from .usage import usage_command
from .worker import worker_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="thinktank",
    help="Many LLM providers behind one OpenAI-compatible endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("serve")(serve)
app.command("worker")(worker_command)
app.command("models")(models_command)
app.command("chat")(chat_command)
app.command("ask")(ask_command)
app.command("debate")(debate_command)
app.command("agent")(agent_command)
app.command("leaderboard")(leaderboard_command)
app.command("usage")(usage_command)
app.command("mcp")(mcp_command)
app.add_typer(kb_app, name="kb")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(teams_app, name="teams")
app.add_typer(admin_key_app, name="admin-key")
app.add_typer(db_app, name="db")
app.add_typer(eval_app, name="eval")
app.command("mock-upstream")(mock_upstream)


def main() -> None:
    app()
