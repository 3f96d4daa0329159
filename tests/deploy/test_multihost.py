"""deploy/multihost's files, read as their consumers read them: HAProxy accepts the rendered haproxy.cfg, its error
files are HTTP responses in the OpenAI error shape, thinktank loads the hosts' config, run.py starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from deploy.multihost.fleet import render_config
from deploy.multihost.services import render_haproxy

from thinktank.config import load_config

from .artefacts import DEPLOY, tool

MULTIHOST = DEPLOY / "multihost"


def test_haproxy_accepts_the_rendered_config(tmp_path: Path) -> None:
    haproxy = tool("haproxy", "apt-get install haproxy")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render_haproxy([18001, 18002, 18003], port=18000, stats_port=18404))
    checked = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    text = cfg.read_text()
    for i, port in enumerate((18001, 18002, 18003), 1):
        assert f"server host{i} 127.0.0.1:{port} check" in text
        assert f"server host{i}-open 127.0.0.1:{port} backup" in text
    assert "$" not in text  # every placeholder filled


@pytest.mark.parametrize("status", [502, 503, 504])
def test_haproxys_own_errors_are_json_in_the_openai_shape(status: int) -> None:
    raw = (MULTIHOST / "errors" / f"{status}.http").read_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} ")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert ("Retry-After" in headers) == (status == 503)


def test_thinktank_loads_the_hosts_config(tmp_path: Path) -> None:
    cfg = tmp_path / "thinktank.yaml"
    cfg.write_text(render_config("http://127.0.0.1:18080"))
    config = load_config(cfg)
    assert [m.base_url for m in config.models] == ["http://127.0.0.1:18080/v1"] * 2


def test_run_py_explains_itself() -> None:
    done = subprocess.run([sys.executable, str(MULTIHOST / "run.py"), "--help"], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--database" in done.stdout and "--hosts" in done.stdout
