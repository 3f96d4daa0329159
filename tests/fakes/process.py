"""thinktank run as a real process, for the CLI and multi-process tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(root: Path) -> dict[str, str]:
    """This process's environment without thinktank's or any provider's settings, with its own data
    directory and home under ``root`` (and no Ollama to find)."""
    clean = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("THINKTANK_")}
    return {**clean, "THINKTANK_DATA_DIR": str(root / "data"), "OLLAMA_HOST": "127.0.0.1:9", "HOME": str(root)}


def run(args: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thinktank", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


class Server:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "thinktank", "serve", "--port", str(self.port), *args],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=15)
        return err
