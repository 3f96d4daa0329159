"""Running the CLI in this process (typer's CliRunner) against a server, or with ``--local``."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from thinktank.cli import app

from ..fakes.process import Server

ADMIN = "tt-test-admin-key-0123456789"


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    """``thinktank ARGS`` with ``env`` added to the environment (wide enough for the tables)."""
    return CliRunner(env={"COLUMNS": "120", **(env or {})}).invoke(app, list(args), input=stdin)


def client_env(server: Server, key: str = ADMIN) -> dict[str, str]:
    """What points the CLI at ``server``."""
    return {"THINKTANK_URL": server.url, "THINKTANK_API_KEY": key}


def table_rows(output: str) -> list[list[str]]:
    """The body rows of the rich table in ``output``, as lists of cell texts."""
    return [[c.strip() for c in line.strip().strip("│").split("│")]
            for line in output.splitlines() if line.strip().startswith("│")]


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout
