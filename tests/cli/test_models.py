"""``thinktank models`` and ``thinktank chat`` against a real server, and with ``--local``."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..fakes import openai as openai_fmt
from ..fakes.process import Server, clean_env, run
from ..fakes.upstream import FakeUpstream, Reply
from .helpers import ADMIN, cli, client_env, ok


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``thinktank serve --demo`` with a config adding a model and an alias, and a knowledge base made."""
    root = tmp_path_factory.mktemp("server")
    cfg = root / "c.yaml"
    cfg.write_text("models:\n  - {name: m1, provider: mock}\naliases: {quick: m1}\n")
    s = Server(["--demo", "--config", str(cfg)], {**clean_env(root), "THINKTANK_ADMIN_KEY": ADMIN})
    made = httpx.post(f"{s.url}/api/v1/knowledge-bases", json={"name": "handbook"},
                      headers={"Authorization": f"Bearer {ADMIN}"})
    assert made.status_code == 201, made.text
    yield s
    s.stop()


def test_models_lists_every_kind_the_server_serves(server: Server) -> None:
    lines = ok(cli("models", env=client_env(server))).splitlines()
    assert lines[0].split() == ["MODEL", "KIND", "OWNED", "BY", "DESCRIPTION"]
    kinds = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert kinds["m1"] == "model" and kinds["demo/echo"] == "model" and kinds["demo/auto"] == "group"
    assert kinds["quick"] == "alias" and kinds["ensemble/demo-council"] == "ensemble"
    assert kinds["debate/demo-panel"] == "debate" and kinds["kb/handbook"] == "knowledge_base"
    served = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {ADMIN}"}).json()["data"]
    assert list(kinds) == [m["id"] for m in served]  # everything, in the server's order
    echo = next(line for line in lines if line.startswith("demo/echo "))
    assert echo.split(None, 3)[2:] == ["mock", "MOCK (offline demo): echoes your last message"]
    listed = json.loads(ok(cli("models", "--json", env=client_env(server))))
    assert listed == {"object": "list", "data": served}


def test_models_check_needs_local(server: Server) -> None:
    r = cli("models", "--check", env=client_env(server))
    assert r.exit_code == 2 and "--check asks the upstreams from this process: add --local" in r.stderr


def test_chat_streams_to_the_terminal(server: Server) -> None:
    r = cli("chat", "hello there", "-m", "demo/echo", env=client_env(server))
    assert ok(r) == "[mock demo/echo] You said: hello there\n"
    assert r.stderr.startswith("[") and " in, " in r.stderr and "$0.000000]" in r.stderr
    streamed = cli("chat", "one two three", "-m", "demo/slow", "-s", "be brief", env=client_env(server))
    assert ok(streamed).strip() and "out, $" in streamed.stderr


def test_chat_without_streaming_and_unknown_model(server: Server) -> None:
    r = cli("chat", "hi", "-m", "quick", "--no-stream", env=client_env(server))
    assert ok(r).strip() and "in, " in r.stderr
    r = cli("chat", "hi", "-m", "nope", env=client_env(server))
    assert r.exit_code == 2 and r.stderr.startswith("error: The model 'nope' does not exist here.")


# -- --local -----------------------------------------------------------------------------------------

def test_chat_demo_runs_in_this_process(local_env: Path) -> None:
    r = cli("chat", "hello there", "-m", "demo/echo", "--demo")
    assert ok(r).strip() == "[mock demo/echo] You said: hello there"
    assert "in," in r.stderr and "$" in r.stderr


def test_chat_demo_as_a_process(env: dict[str, str]) -> None:
    r = run(["chat", "hello there", "-m", "demo/echo", "--demo"], env)  # starts, answers, stops, exits
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[mock demo/echo] You said: hello there\n"


def test_models_check_probes_each_upstream(local_env: Path, tmp_path: Path, fake_upstream_thread: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"models:\n  - {{name: good, provider: openai, model: fake-model, base_url: '{fake_upstream_thread}/v1',"
        " api_key: x}\n  - {name: dead, provider: openai, base_url: 'http://127.0.0.1:9/v1', api_key: x}\n"
        "groups:\n  - {name: both, models: [good, dead]}\n")
    out = ok(cli("models", "--check", "--config", str(cfg), "--timeout", "5"))
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert out.splitlines()[0].split() == ["MODEL", "KIND", "OWNED", "BY", "STATUS"]
    assert lines["good"].split()[1:] == ["model", "openai", "ok"]
    assert "cannot reach" in lines["dead"]
    assert lines["both"].split() == ["both", "group", "thinktank"]  # groups are not probed themselves
    listed = json.loads(ok(cli("models", "--check", "--config", str(cfg), "--json")))["data"]
    assert {m["id"]: m.get("status") for m in listed}["good"] == "ok"


@pytest.fixture
def scripted_upstream() -> Iterator[FakeUpstream]:
    """The OpenAI fake on a loop of its own in a thread, whose replies the test queues."""
    loop = asyncio.new_event_loop()
    fake = FakeUpstream(openai_fmt.default_handler)
    loop.run_until_complete(fake.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield fake
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.run_until_complete(fake.close())
    loop.close()


def test_chat_stream_broken_midway_prints_what_came_and_the_error(
        local_env: Path, tmp_path: Path, scripted_upstream: FakeUpstream) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models:\n  - {{name: up, provider: openai, base_url: '{scripted_upstream.url}/v1', api_key: x}}\n")
    scripted_upstream.queue(Reply(sse=openai_fmt.stream_events(["Hello", " there", " friend"]), drop_after=3))
    r = cli("chat", "hi", "-m", "up", "--config", str(cfg))
    assert r.exit_code == 2
    assert r.stdout == "Hello there\n"  # what came before the break, on a line of its own
    assert r.stderr.startswith("error: ") and "broke off" in r.stderr and "$" not in r.stderr


def test_models_local_without_models_says_how_to_add_one(local_env: Path) -> None:
    r = cli("models", "--local")
    assert ok(r).startswith("No models are configured. Add one of:") and "--demo" in r.stdout
