from __future__ import annotations

import subprocess
import sys

import thinktank


def test_exported_names_are_locked() -> None:
    assert sorted(thinktank.__all__) == sorted([
        "ChatChunk", "ChatModel", "ChatRequest", "ChatResponse", "EmbeddingRequest", "EmbeddingResponse",
        "GatewayConfig", "Message", "Router", "Settings", "ThinktankError", "Usage", "__version__",
        "create_app", "load_config",
    ])
    for name in thinktank.__all__:
        assert getattr(thinktank, name) is not None


def test_import_is_light() -> None:
    """Importing the package loads neither the web stack nor the HTTP client."""
    code = "import sys, thinktank; print(sorted(m for m in ('fastapi', 'aiohttp', 'uvicorn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
