"""The Node.js MCP servers and the MCP Inspector the tests run, installed with ``npm ci`` from the committed
lock file when node_modules is missing or was installed from another lock (a stamp holds the lock's hash)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
MODULES = HERE / "node_modules"
_STAMP = MODULES / ".thinktank-lock.sha256"


def ensure_installed() -> Path:
    """node_modules as package-lock.json says (``npm ci`` first when it is not); the test fails clearly if npm
    or node is missing."""
    wanted = hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()
    if _STAMP.is_file() and _STAMP.read_text().strip() == wanted:
        return MODULES
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("the MCP tests run the reference MCP servers and the MCP Inspector on Node.js: install "
                    f"Node.js 20+ and npm (then `npm ci` in {HERE} is run for you)", pytrace=False)
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True,
                          timeout=900, check=False, env={**os.environ, "npm_config_update_notifier": "false"})
    if done.returncode != 0:
        pytest.fail(f"`npm ci` in {HERE} failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
    _STAMP.write_text(wanted)
    return MODULES
