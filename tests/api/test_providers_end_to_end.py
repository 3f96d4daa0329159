"""Every native provider through the whole stack: OpenAI SDK -> thinktank -> provider -> fake upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from ..fakes import anthropic as anthropic_fmt
from ..fakes import gemini as gemini_fmt
from ..fakes.upstream import FakeUpstream
from .conftest import ADMIN, Start


@pytest.fixture
async def fakes() -> AsyncIterator[dict[str, FakeUpstream]]:
    out = {"anthropic": FakeUpstream(anthropic_fmt.default_handler), "gemini": FakeUpstream(gemini_fmt.default_handler)}
    for f in out.values():
        await f.start()
    yield out
    for f in out.values():
        await f.close()


def config(fakes: dict[str, FakeUpstream], fake_openai: FakeUpstream) -> dict[str, Any]:
    return {"models": [
        {"name": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5", "base_url": fakes["anthropic"].url,
         "api_key": "sk-ant"},
        {"name": "gemini", "provider": "gemini", "model": "gemini-2.5-flash", "base_url": fakes["gemini"].url,
         "api_key": "g-key"},
        {"name": "gpt", "provider": "openai", "model": "gpt-4o-mini", "base_url": fake_openai.url + "/v1",
         "api_key": "sk-oa"},
    ]}


@pytest.mark.parametrize("model", ["claude", "gemini", "gpt"])
async def test_every_provider_answers_through_the_gateway(
    gateway: Start, fakes: dict[str, FakeUpstream], fake_openai: FakeUpstream, model: str
) -> None:
    url = await gateway(config(fakes, fake_openai))
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0)
    resp = await sdk.chat.completions.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ping"}],
        max_tokens=50,
    )
    assert resp.choices[0].message.content == "echo: ping"
    assert resp.usage is not None and resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    cost = resp.model_dump()["usage"]["cost"]
    assert cost > 0  # priced from the shipped table (claude-sonnet-4-5, gemini-2.5-flash, gpt-4o-mini)

    stream = await sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "one two three"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.replace(" ", "") == "echo:onetwothree"
    assert chunks[-1].usage is not None and chunks[-1].model_dump()["usage"]["cost"] > 0
