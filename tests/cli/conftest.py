from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..fakes.process import Server, clean_env
from .helpers import ADMIN


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's environment as the process tests have it (no thinktank or provider settings), with
    a data directory of the test's own, for commands run with ``--local``; that directory."""
    for name in list(os.environ):
        if name.startswith("THINKTANK_") or name.endswith("_API_KEY"):
            monkeypatch.delenv(name)
    for name, value in clean_env(tmp_path).items():
        if name.startswith(("THINKTANK_", "OLLAMA_", "HOME")):
            monkeypatch.setenv(name, value)
    return tmp_path / "data"


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``thinktank serve --demo`` for the whole module, with the admin key ``ADMIN``."""
    root = tmp_path_factory.mktemp("server")
    server = Server(["--demo"], {**clean_env(root), "THINKTANK_ADMIN_KEY": ADMIN})
    yield server
    server.stop()
