"""``--tools`` on ``thinktank users create`` and ``keys create``, and ``thinktank users tools``: on the database."""

from __future__ import annotations

from pathlib import Path

from .helpers import cli, ok


def _column(listing: str, row_has: str, column: str) -> str:
    """The cell of ``column`` in the row holding ``row_has`` (cells start where their heading does)."""
    lines = listing.splitlines()
    at = lines[0].index(f" {column.upper()} ") + 1
    return next(line[at:].split(" ", 1)[0] for line in lines[1:] if row_has in line)


def test_tools_on_users_and_keys_from_the_cli(local_env: Path) -> None:
    made = ok(cli("users", "create", "kim@example.com", "--password", "kim-pass-123",
                  "--tools", "git,knowledge_search"))
    uid = made.split("(")[1].rstrip(")\n")
    assert _column(ok(cli("users", "list")), "kim@example.com", "tools") == "git,knowledge_search"

    ok(cli("keys", "create", "--name", "narrow", "--user", "kim@example.com", "--tools", "git.git_log"))
    ok(cli("keys", "create", "--name", "inherits", "--user", "kim@example.com"))
    ok(cli("keys", "create", "--name", "none", "--user", "kim@example.com", "--tools", ""))
    listing = ok(cli("keys", "list"))
    assert _column(listing, " narrow ", "tools") == "git.git_log"
    assert _column(listing, " inherits ", "tools") == "git,knowledge_search"
    assert _column(listing, " none ", "tools") == "-"

    r = cli("keys", "create", "--name", "wider", "--user", "kim@example.com", "--tools", "git,fetch_url")
    assert r.exit_code == 2 and "cannot allow tools its creator may not use: fetch_url" in r.stderr
    r = cli("keys", "create", "--name", "bad", "--tools", "git log")
    assert r.exit_code == 2 and r.stderr.startswith("error: tools.0: ") and "letters, digits" in r.stderr
    assert " wider " not in ok(cli("keys", "list")) and " bad " not in ok(cli("keys", "list"))

    assert ok(cli("users", "tools", uid, "git.*")) == "kim@example.com may use tools: git.*\n"
    assert ok(cli("users", "tools", uid, "*")) == "kim@example.com may use tools: *\n"
    assert ok(cli("users", "tools", uid, "")) == "kim@example.com may use tools: -\n"
    r = cli("users", "tools", uid, "git.*x")
    assert r.exit_code == 2 and "server.*" in r.stderr
    r = cli("users", "tools", "usr_nobody", "git")
    assert r.exit_code == 2 and "No such user" in r.stderr
    assert _column(ok(cli("users", "list")), "kim@example.com", "tools") == "-"
    r = cli("users", "create", "lee@example.com", "--password", "lee-pass-123", "--tools", "*x")
    assert r.exit_code == 2 and "tools.0" in r.stderr
