"""``thinktank db|users|keys|teams`` on the database; a key made there used on the server, and ``usage``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from ..fakes.process import Server, clean_env
from .helpers import cli, ok


def test_users_create_asks_for_the_password_without_echoing_it(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "thinktank", "users", "create", "root@example.com", "--admin"],
                       env=clean_env(tmp_path), input="s3cret-pass\ns3cret-pass\n", capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "created admin root@example.com" in r.stdout
    assert "s3cret-pass" not in r.stdout + r.stderr


def test_admin_commands_and_a_cli_key_on_the_server(server: type[Server], local_env: Path, tmp_path: Path) -> None:
    assert ok(cli("db", "upgrade")) == "database is up to date\n"
    made = ok(cli("users", "create", "root@example.com", "--admin", stdin="s3cret-pass\ns3cret-pass\n"))
    assert "created admin root@example.com (" in made and "s3cret-pass" not in made
    r = cli("users", "create", "root@example.com", "--password", "another-pass")
    assert r.exit_code == 2 and "exists already" in r.stderr
    r = cli("users", "create", "bob@example.com", "--password", "short")
    assert r.exit_code == 2 and r.stderr.startswith("error: password: ")

    made = ok(cli("teams", "create", "research", "--budget", "20"))
    assert made.startswith("created team research (team_")
    team_id = made.split("(")[1].rstrip(")\n")
    assert ok(cli("teams", "list")).splitlines()[1].split()[:3] == [team_id, "research", "$20/month"]
    ok(cli("users", "create", "ann@example.com", "--password", "ann-pass-123", "--team", team_id))
    assert "ann@example.com" in ok(cli("users", "list"))

    key = ok(cli("keys", "create", "--name", "ci", "--user", "root@example.com", "--budget", "5", "--period", "day",
                 "--rpm", "100")).strip()
    assert key.startswith("tt-")
    listed = ok(cli("keys", "list"))
    assert "ci" in listed and "$5/day" in listed and key not in listed
    key_id = next(line.split()[0] for line in listed.splitlines() if " ci " in line)

    # The server on the same data directory takes the key.
    s = server(["--demo"], {**clean_env(tmp_path), "THINKTANK_ADMIN_KEY": "k"})
    body = {"model": "demo/echo", "messages": [{"role": "user", "content": "ping"}]}
    assert httpx.post(s.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}).status_code == 200
    # usage asks the server (which flushes its usage rows first); with the admin key: everyone's.
    table = ok(cli("usage", "--by", "key", env={"THINKTANK_URL": s.url, "THINKTANK_API_KEY": "k"}))
    assert table.splitlines()[0].split()[:3] == ["KEY", "REQUESTS", "PROMPT"]
    assert [line.split()[:2] for line in table.splitlines()[1:]] == [[key_id, "1"]]
    # With the key itself: its owner's usage, here as the server's JSON.
    mine = json.loads(ok(cli("usage", "--by", "model", "--json", env={"THINKTANK_URL": s.url,
                                                                       "THINKTANK_API_KEY": key})))
    assert mine["group_by"] == "model"
    assert [(row["group"], row["requests"]) for row in mine["data"]] == [("demo/echo", 1)]
    r = cli("usage", "--by", "colour", env={"THINKTANK_URL": s.url, "THINKTANK_API_KEY": "k"})
    assert r.exit_code == 2 and "--by takes model, key, user, deployment or day" in r.stderr

    assert ok(cli("keys", "revoke", key_id)) == f"revoked {key_id}\n"
    assert cli("keys", "revoke", "key_nope").exit_code == 2
