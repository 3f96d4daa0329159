"""``thinktank mock-upstream``, run as a real process."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from ..fakes.process import free_port


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
