from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from thinktank.knowledge.embeddings import LocalEmbedder


@pytest.fixture(scope="session")
def local_embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEmbedder]:
    """The real local model (int8), built once per test session."""
    embedder = LocalEmbedder(Path(tmp_path_factory.mktemp("data")) / "models")  # where the CLI looks
    yield embedder
    embedder.close()
