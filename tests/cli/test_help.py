"""Every command and every option says what it is for, in plain text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import typer

from thinktank.cli import app

from .helpers import cli


def commands(group: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``group`` (the whole CLI by default), with its path (typer's own click objects)."""
    group = typer.main.get_command(app) if group is None else group
    yield path, group
    for name, command in (getattr(group, "commands", None) or {}).items():
        yield from commands(command, (*path, name))


def test_every_command_and_option_has_help() -> None:
    missing: list[str] = []
    found = list(commands())
    assert len(found) > 30  # every group and command, not just the top
    for path, command in found:
        where = " ".join(("thinktank", *path))
        if not (command.help or "").strip():
            missing.append(where)
        for param in command.params:
            if param.name != "help" and not (getattr(param, "help", None) or "").strip():
                missing.append(f"{where} {param.name}")
    assert missing == []


def test_help_pages_are_plain_text() -> None:
    for path, command in commands():
        r = cli(*path, "--help")
        assert r.exit_code == 0, (path, r.output)
        assert "``" not in r.stdout and not re.search(r":(class|mod|func):", r.stdout), (path, r.stdout)
        if command.help:
            assert command.help.splitlines()[0].strip().rstrip(".")[:40] in " ".join(r.stdout.split()), path


def test_eval_retrieval_help_shows_no_markup() -> None:
    out = " ".join(cli("eval", "retrieval", "--help").stdout.split())
    assert "the last line printed is ndcg@10=0.XXXX (of the last mode)" in out
    assert "``" not in out


def test_a_prompted_password_is_not_shown_as_required() -> None:
    create = dict(commands())[("users", "create")]
    password = next(p for p in create.params if p.name == "password")
    assert not password.required and getattr(password, "prompt", None)
    line = next(line for line in cli("users", "create", "--help").stdout.splitlines() if "--password" in line)
    assert "required" not in line and "*" not in line.split("--password")[0]
