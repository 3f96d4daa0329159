"""The ``thinktank`` command, run as a real process."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ..fakes.process import Server, free_port, run


def test_serve_generates_admin_key_once_and_stores_only_its_hash(server: type[Server], env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    s = server(["--demo"], env)
    err = s.stop()
    key = next(line.strip() for line in err.splitlines() if line.strip().startswith("tt-admin-"))
    stored = (tmp_path / "data" / "admin_key.sha256").read_text()
    assert stored.splitlines()[0] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in stored
    s2 = server(["--demo"], env)
    body = {"model": "demo/echo", "messages": [{"role": "user", "content": "ping"}]}
    assert httpx.post(s2.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.post(s2.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": "Bearer tt-admin-wrong"}).status_code == 401
    said = s2.stop()
    assert key not in said  # not printed again; only which key is in force
    assert f"admin key: the one stored in {tmp_path / 'data' / 'admin_key.sha256'} ({key[:13]}…)" in said


def test_serve_without_models_starts_and_says_how_to_add_one(server: type[Server], env: dict[str, str]) -> None:
    s = server([], {**env, "THINKTANK_ADMIN_KEY": "k"})
    assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer k"}).json()["data"] == []
    err = s.stop()
    assert "No models are configured" in err and "--demo" in err and "OPENAI_API_KEY" in err


def test_serve_with_workers(server: type[Server], env: dict[str, str], fake_upstream_thread: str,
                            tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models:\n  - {{name: m, provider: openai, base_url: '{fake_upstream_thread}/v1', api_key: x}}\n")
    s = server(["--config", str(cfg), "--workers", "2"], {**env, "THINKTANK_ADMIN_KEY": "k"})
    children = Path(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read_text().split()
    assert len(children) >= 2
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(10):
        r = httpx.post(s.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: hi"


def test_serve_config_error_exits_2_naming_the_file(env: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("models:\n  - {name: a, provider: openai, base_url: nope}\n")
    r = run(["serve", "--config", str(cfg)], env)
    assert r.returncode == 2
    assert f"{cfg}: models[0] ('a'): base_url" in r.stderr


def test_chat_streams_to_the_terminal(env: dict[str, str]) -> None:
    r = run(["chat", "hello there", "-m", "demo/echo", "--demo"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[mock demo/echo] You said: hello there"
    assert "in," in r.stderr and "$" in r.stderr


def test_chat_unknown_model(env: dict[str, str]) -> None:
    r = run(["chat", "hi", "-m", "nope", "--demo"], env)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_models_checks_each_upstream(env: dict[str, str], tmp_path: Path, fake_upstream_thread: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"models:\n  - {{name: good, provider: openai, model: fake-model, base_url: '{fake_upstream_thread}/v1',"
        " api_key: x}\n  - {name: dead, provider: openai, base_url: 'http://127.0.0.1:9/v1', api_key: x}\n")
    r = run(["models", "--config", str(cfg)], env)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert lines["good"].rstrip().endswith("ok")
    assert "cannot reach" in lines["dead"]


def test_mock_upstream_answers(env: dict[str, str]) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "thinktank", "mock-upstream", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                               json={"model": "x", "messages": [{"role": "user", "content": "yo"}]})
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert r.json()["choices"][0]["message"]["content"] == "Mock answer to: yo"
    finally:
        proc.terminate()
        proc.wait(10)


def test_admin_commands_and_a_cli_key_on_the_server(server: type[Server], env: dict[str, str],
                                                   tmp_path: Path) -> None:
    r = run(["db", "upgrade"], env)
    assert r.returncode == 0 and "up to date" in r.stdout
    r = subprocess.run([sys.executable, "-m", "thinktank", "users", "create", "root@example.com", "--admin"],
                       env=env, input="s3cret-pass\ns3cret-pass\n", capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "created admin root@example.com" in r.stdout
    assert "s3cret-pass" not in r.stdout + r.stderr
    r = run(["users", "create", "root@example.com", "--password", "another-pass"], env)
    assert r.returncode == 2 and "exists already" in r.stderr
    r = run(["keys", "create", "--name", "ci", "--user", "root@example.com", "--budget", "5", "--period", "day",
             "--rpm", "100"], env)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("tt-")
    listed = run(["keys", "list"], env).stdout
    assert "ci" in listed and "$5/day" in listed and key not in listed

    s = server(["--demo"], {**env, "THINKTANK_ADMIN_KEY": "k"})
    body = {"model": "demo/echo", "messages": [{"role": "user", "content": "ping"}]}
    assert httpx.post(s.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}).status_code == 200
    s.stop()  # flushes the usage rows
    table = run(["usage", "--by", "key"], env).stdout
    assert "ci" not in table and any(line.split()[1] == "1" for line in table.splitlines()[1:])
    key_id = next(line.split()[0] for line in listed.splitlines() if " ci " in line)
    assert run(["keys", "revoke", key_id], env).returncode == 0
    assert run(["keys", "revoke", "key_nope"], env).returncode == 2
