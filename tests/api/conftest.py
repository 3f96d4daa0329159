from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from thinktank.api.app import create_app
from thinktank.config import Settings, parse_config

from ..fakes.server import serving

ADMIN = "tt-test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}

Start = Callable[..., Any]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", admin_key=ADMIN)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Start]:
    """``url = await gateway(config_dict, **settings_overrides)`` starts thinktank on loopback."""
    stack: list[Any] = []

    async def start(cfg: dict[str, Any], **overrides: Any) -> str:
        s = Settings.model_validate({**settings.model_dump(), **overrides})
        app = create_app(s, parse_config(cfg))
        cm = serving(app)
        url = await cm.__aenter__()
        stack.append(cm)
        return url

    yield start
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c
