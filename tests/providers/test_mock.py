from __future__ import annotations

import math

import pytest

from thinktank.config import DeploymentConfig
from thinktank.errors import ConfigError, UpstreamRateLimitError, UpstreamServerError
from thinktank.providers.base import ProviderContext
from thinktank.providers.mock import MockProvider
from thinktank.types import ChatRequest, EmbeddingRequest

from ..fakes.clock import FakeClock


def mock(ctx: ProviderContext, **options: object) -> MockProvider:
    return MockProvider(DeploymentConfig(name="m", provider="mock", options=options), ctx)


def req(text: str = "hello") -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": text}]})


async def test_scripted_replies_cycle_and_prompts_are_recorded(ctx: ProviderContext) -> None:
    m = mock(ctx, replies=["one", "two"])
    texts = [(await m.complete(req(str(i)))).choices[0].message.content for i in range(3)]
    assert texts == ["one", "two", "one"]
    assert [r.messages[0].content for r in m.requests] == ["0", "1", "2"]


async def test_echo_usage_and_stream(ctx: ProviderContext) -> None:
    m = mock(ctx)
    resp = await m.complete(req("what is up"))
    assert resp.choices[0].message.content == "[mock m] You said: what is up"
    assert resp.usage is not None and resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    chunks = [c async for c in m.stream(req("a b"))]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[mock m] You said: a b"
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage is not None


async def test_latency_goes_through_the_clock(ctx: ProviderContext, clock: FakeClock) -> None:
    m = mock(ctx, latency=2.5, chunk_delay=0.1)
    await m.complete(req())
    assert clock.sleeps == [2.5]
    [c async for c in m.stream(req("a b c"))]
    words = len(["[mock", "m]", "You", "said:", "a", "b", "c"])
    assert clock.sleeps[1:] == [2.5] + [0.1] * (words - 1)


async def test_failure_injection(ctx: ProviderContext) -> None:
    m = mock(ctx, fail_first=2, fail_status=429, retry_after=3)
    for _ in range(2):
        with pytest.raises(UpstreamRateLimitError) as info:
            await m.complete(req())
        assert info.value.retry_after == 3
    assert (await m.complete(req())).choices
    flaky = mock(ctx, fail_rate=0.5, seed=1)
    outcomes = []
    for _ in range(200):
        try:
            await flaky.complete(req())
            outcomes.append(True)
        except UpstreamServerError:
            outcomes.append(False)
    assert 70 < outcomes.count(False) < 130


async def test_embeddings_are_deterministic_unit_vectors(ctx: ProviderContext) -> None:
    m = mock(ctx, embedding_dimensions=8)
    a = await m.embed(EmbeddingRequest(model="m", input=["x", "y"]))
    b = await m.embed(EmbeddingRequest(model="m", input="x"))
    assert a.data[0].embedding == b.data[0].embedding != a.data[1].embedding
    vec = a.data[0].embedding
    assert isinstance(vec, list) and len(vec) == 8
    assert math.isclose(sum(v * v for v in vec), 1.0)


def test_bad_options_name_the_field(ctx: ProviderContext) -> None:
    with pytest.raises(ConfigError, match=r"model 'm': options.fail_rate"):
        mock(ctx, fail_rate=3)
    with pytest.raises(ConfigError, match=r"options.colour"):
        mock(ctx, colour="red")
