"""The CLI's client: what a new user sees without a server, without a key, with a wrong one; --local errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..fakes.process import Server, clean_env, free_port
from .helpers import ADMIN, cli, client_env

CLIENT_COMMANDS = [
    ["chat", "hi", "-m", "demo/echo"], ["ask", "q"], ["debate", "q"], ["models"], ["leaderboard"], ["usage"],
    ["kb", "list"], ["kb", "search", "notes", "-q", "tea"],
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("server")
    s = Server([], {**clean_env(root), "THINKTANK_ADMIN_KEY": ADMIN})
    yield s
    s.stop()


@pytest.mark.parametrize("args", CLIENT_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_no_server_says_how_to_start_one(args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = cli(*args, env={"THINKTANK_URL": url, "THINKTANK_API_KEY": "k"})
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"error: cannot reach a thinktank server at {url} ")
    assert "`thinktank serve`" in r.stderr and "--local" in r.stderr
    # Without a key either, the missing server is what to fix first.
    r = cli(*args, env={"THINKTANK_URL": url, "THINKTANK_API_KEY": ""})
    assert r.exit_code == 2 and "cannot reach a thinktank server" in r.stderr


@pytest.mark.parametrize("args", CLIENT_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_no_key_says_how_to_set_one(server: Server, args: list[str]) -> None:
    r = cli(*args, env={"THINKTANK_URL": server.url, "THINKTANK_API_KEY": ""})
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: no API key: set THINKTANK_API_KEY (export THINKTANK_API_KEY=...")
    assert "--api-key" in r.stderr and "--local" in r.stderr


def test_server_errors_are_printed_as_their_message(server: Server) -> None:
    said = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer tt-wrong-key"})
    assert said.status_code == 401
    r = cli("models", env=client_env(server, "tt-wrong-key"))
    assert r.exit_code == 2 and r.stderr == f"error: {said.json()['error']['message']}\n"
    r = cli("chat", "hi", "-m", "nope", env=client_env(server))
    assert r.exit_code == 2
    assert r.stderr == "error: The model 'nope' does not exist here. GET /v1/models lists the models you can use.\n"
    r = cli("models", "--url", server.url, "--api-key", ADMIN, env={"THINKTANK_URL": "http://127.0.0.1:9"})
    assert r.exit_code == 0 and r.stdout.startswith(f"No models at {server.url} for this key")


def test_local_config_error_names_the_file_and_entry(local_env: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "thinktank.yaml"
    cfg.write_text("models:\n  - {name: a, provider: x}\n")
    r = cli("chat", "hi", "-m", "a", "--config", str(cfg))
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {cfg}: models[0] ('a'): provider: unknown provider 'x' (known: ")
    assert "openai" in r.stderr
