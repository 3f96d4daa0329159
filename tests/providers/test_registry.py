from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from thinktank.config import parse_config
from thinktank.errors import ConfigError
from thinktank.gateway.router import Router
from thinktank.providers.anthropic import AnthropicProvider
from thinktank.providers.base import ProviderContext
from thinktank.providers.gemini import GeminiProvider
from thinktank.providers.mock import MockProvider
from thinktank.providers.openai_compat import OpenAIProvider
from thinktank.providers.registry import ProviderRegistry
from thinktank.types import ChatRequest

PLUGIN = '''
from thinktank.providers.mock import MockProvider


class ShoutProvider(MockProvider):
    """A third-party provider: answers in capitals."""

    def _reply(self, request):
        text, calls = super()._reply(request)
        return text.upper(), calls
'''


def test_builtins_come_from_entry_points() -> None:
    reg = ProviderRegistry()
    assert {"openai", "anthropic", "gemini", "mock", "ollama", "azure", "openrouter", "groq", "vllm"} <= set(
        reg.names())
    assert reg.get("openai") is OpenAIProvider
    assert reg.get("anthropic") is AnthropicProvider
    assert reg.get("gemini") is GeminiProvider
    assert reg.get("mock") is MockProvider


def test_unknown_provider_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown provider 'nope' \(known: anthropic, azure"):
        ProviderRegistry().get("nope")


async def test_third_party_provider_registers_through_an_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctx: ProviderContext
) -> None:
    (tmp_path / "shout_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "shout_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[thinktank.providers]\nshout = shout_plugin:ShoutProvider\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        router = Router(parse_config({"models": [{"name": "loud", "provider": "shout"}]}), ctx,
                        rng=random.Random(0))
        req = ChatRequest.model_validate({"model": "loud", "messages": [{"role": "user", "content": "hello"}]})
        resp = await router.complete(req)
        assert resp.choices[0].message.content == "[MOCK LOUD] YOU SAID: HELLO"
    finally:
        sys.modules.pop("shout_plugin", None)
