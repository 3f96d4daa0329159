"""Processes started as a deployment starts them, and the health checks the artefacts give them run as their
runtime runs them: a command in the container (Docker's ``CMD`` check, Kubernetes' ``exec`` probe) whose exit
status says healthy or not."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["on_port", "passes", "start", "stop", "until_passes"]


def on_port(parts: list[str], port: int, new: int) -> list[str]:
    """A command (or a check) with ``port`` replaced by ``new``, where it names the port as a number of its own
    (``9100``, not ``19100``): the tests run on free ports, not on the ports the artefacts fix."""
    pattern = re.compile(rf"(?<![0-9]){port}(?![0-9])")
    assert any(pattern.search(p) for p in parts), (parts, port)
    return [pattern.sub(str(new), p) for p in parts]


def _here(command: list[str]) -> list[str]:
    """A check that runs ``python`` (the image's: its virtualenv's) or a ``thinktank`` command, with this Python."""
    if command[0] == "python":
        return [sys.executable, *command[1:]]
    assert command[0] == "thinktank", command
    return [sys.executable, "-m", "thinktank", *command[1:]]


def passes(check: list[str], timeout: float) -> bool:
    """Whether the check exits 0 within ``timeout`` seconds (as the runtime, a check that takes longer fails)."""
    try:
        done = subprocess.run(_here(check), capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """``command`` (``thinktank ...``), its standard error written to ``log`` (a pipe could fill up and block it)."""
    with log.open("w") as err:
        return subprocess.Popen(_here(command), env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)


def until_passes(check: list[str], proc: subprocess.Popen[str], log: Path, *, timeout: float,
                 allowance: float) -> None:
    """Runs the check as the runtime does (more often), until it passes; fails if the process exits first or
    ``allowance`` seconds (what the runtime grants before it gives up) go by."""
    deadline = time.monotonic() + allowance
    while not passes(check, timeout):
        assert proc.poll() is None, f"exited with {proc.returncode}: {log.read_text()}"
        assert time.monotonic() < deadline, f"the check did not pass within its allowance: {log.read_text()}"
        time.sleep(0.2)
    assert proc.poll() is None, log.read_text()


def stop(proc: subprocess.Popen[str], log: Path, grace: float, *, server: bool = False) -> str:
    """SIGTERM, as the runtime stops a container: the process must end cleanly before the runtime would kill it
    (``grace`` seconds). Returns what it wrote to standard error. A ``server`` (uvicorn) raises the signal again
    once it has shut down, so that its parent sees why it ended: its end is then that signal's, not 0."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"still running {grace} s after SIGTERM: {log.read_text()}") from None
    err = log.read_text()
    assert proc.returncode == (-signal.SIGTERM if server else 0), f"exited with {proc.returncode}: {err}"
    assert "Traceback" not in err, err
    return err
