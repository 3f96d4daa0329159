"""``thinktank serve``, run as a real process."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import httpx

from ..fakes.process import Server, run


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
    assert err.count("No models are configured") == 1  # once: not by the log and again by the command
    assert err.count("admin key: ") == 1 and "thinktank serving 0 models on http://127.0.0.1:" in err
    assert "open http://127.0.0.1:" in err


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
    err = s.stop()
    assert err.count("admin key: ") == 1  # said by the command, not again by each worker


def test_serve_config_error_exits_2_naming_the_file(env: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("models:\n  - {name: a, provider: openai, base_url: nope}\n")
    r = run(["serve", "--config", str(cfg)], env)
    assert r.returncode == 2
    assert f"{cfg}: models[0] ('a'): base_url" in r.stderr


def test_serve_unknown_provider_names_the_file_and_entry(env: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "thinktank.yaml"
    cfg.write_text("models:\n  - {name: ok, provider: mock}\n  - {name: a, provider: x}\n")
    r = run(["serve", "--config", str(cfg)], env)
    assert r.returncode == 2
    assert f"error: {cfg}: models[1] ('a'): provider: unknown provider 'x' (known: " in r.stderr
    assert "anthropic" in r.stderr and "Traceback" not in r.stderr


def test_serve_on_a_busy_port_fails_clearly_before_saying_it_serves(env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(["serve", "--demo", "--port", str(port)], env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: cannot serve on http://127.0.0.1:{port}: the address is already in use (another `thinktank serve`, "
        "or another program, listens there): stop it or choose another --port")
    assert "serving" not in r.stderr and "tt-admin-" not in r.stderr  # nothing said (no key made) for a failed start
