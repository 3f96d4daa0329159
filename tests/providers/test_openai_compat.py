from __future__ import annotations

from typing import Any

import pytest

from thinktank.config import DeploymentConfig
from thinktank.errors import (
    ConfigError,
    ContextWindowExceededError,
    UpstreamAuthError,
    UpstreamBadRequestError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamRateLimitError,
    UpstreamServerError,
)
from thinktank.providers.base import ProviderContext
from thinktank.providers.openai_compat import AzureOpenAIProvider, OllamaProvider, OpenAIProvider
from thinktank.types import ChatRequest, EmbeddingRequest

from ..fakes import openai as fmt
from ..fakes.upstream import FakeUpstream, Reply, sse


def deployment(url: str, **kw: object) -> DeploymentConfig:
    return DeploymentConfig.model_validate(
        {"name": "gpt", "provider": "openai", "model": "fake-model", "base_url": url + "/v1",
         "api_key": "sk-secret-canary-123", **kw}
    )


def req(**kw: object) -> ChatRequest:
    return ChatRequest.model_validate({"model": "gpt", "messages": [{"role": "user", "content": "hi"}], **kw})


async def test_complete_passes_parameters_through(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    p = OpenAIProvider(deployment(fake_openai.url), ctx)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    resp = await p.complete(req(temperature=0.2, max_tokens=5, n=2, seed=7, stop=["x"], tools=tools,
                                tool_choice="auto", response_format={"type": "json_object"}, logprobs=True))
    sent = fake_openai.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == "Bearer sk-secret-canary-123"
    assert sent.json["model"] == "fake-model"
    for k, v in {"temperature": 0.2, "max_tokens": 5, "n": 2, "seed": 7, "stop": ["x"], "tools": tools,
                 "tool_choice": "auto", "response_format": {"type": "json_object"}, "logprobs": True}.items():
        assert sent.json[k] == v
    assert "stream" not in sent.json
    assert resp.choices[0].message.content == "echo: hi"
    assert resp.usage is not None and resp.usage.prompt_tokens == 12 and resp.usage.completion_tokens == 8
    # unknown upstream fields survive
    assert resp.model_dump()["system_fingerprint"] == "fp_fake"


async def test_tool_calls_come_back(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    fake_openai.queue(Reply(json=fmt.completion(tool_calls=[call])))
    resp = await OpenAIProvider(deployment(fake_openai.url), ctx).complete(req())
    tc = resp.choices[0].message.tool_calls
    assert tc is not None and tc[0].function.name == "get_weather" and tc[0].function.arguments == '{"city":"Paris"}'
    assert resp.choices[0].finish_reason == "tool_calls"


async def test_stream_yields_chunks_and_usage(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    p = OpenAIProvider(deployment(fake_openai.url), ctx)
    chunks = [c async for c in p.stream(req(stream=True))]
    sent = fake_openai.requests[-1].json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo:hi"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (fmt.error(429, "slow down", headers={"retry-after": "7"}), UpstreamRateLimitError),
        (fmt.error(500, "boom", type_="server_error"), UpstreamServerError),
        (fmt.error(503, "overloaded"), UpstreamServerError),
        (fmt.error(401, "Incorrect API key provided: sk-secret-canary-123"), UpstreamAuthError),
        (fmt.error(400, "This model's maximum context length is 8192 tokens", code="context_length_exceeded"),
         ContextWindowExceededError),
        (fmt.error(400, "bad temperature"), UpstreamBadRequestError),
        (Reply(body=b"<html>gateway exploded</html>"), UpstreamBadResponseError),
        (Reply(json={"hello": "world"}), UpstreamBadResponseError),
        (Reply(drop=True), UpstreamConnectionError),
    ],
)
async def test_error_mapping(fake_openai: FakeUpstream, ctx: ProviderContext, reply: Reply,
                             error: type[Exception]) -> None:
    fake_openai.queue(reply)
    with pytest.raises(error) as info:
        await OpenAIProvider(deployment(fake_openai.url), ctx).complete(req())
    assert "sk-secret-canary-123" not in str(info.value)
    if isinstance(info.value, UpstreamRateLimitError):
        assert info.value.retry_after == 7


SECRET = "sk-secret-canary-123"
HEADER_SECRET = "org-Zq81hXvP0wLm44tYbK"


def fragments(secret: str) -> list[str]:
    """How upstreams echo keys: a long prefix, a long suffix, masked both ways, and a middle run."""
    return [secret[:-3], secret[:8] + "*" * 12, "*" * 10 + secret[-7:], secret[:6] + "..." + secret[-6:],
            "xx" + secret[4:11] + "yy", secret]


@pytest.mark.parametrize("echo", fragments(SECRET) + fragments(HEADER_SECRET))
@pytest.mark.parametrize("status", [400, 429, 500])
async def test_fragments_of_secrets_never_come_back(fake_openai: FakeUpstream, ctx: ProviderContext, echo: str,
                                                    status: int) -> None:
    fake_openai.queue(fmt.error(status, f"Incorrect API key provided: {echo}. Find your key on the dashboard."))
    p = OpenAIProvider(deployment(fake_openai.url, headers={"OpenAI-Organization": HEADER_SECRET}), ctx)
    with pytest.raises(Exception) as info:
        await p.complete(req())
    message = str(info.value)
    assert "Incorrect API key provided: " in message and "Find your key on the dashboard." in message
    for secret in (SECRET, HEADER_SECRET):
        assert not any(secret[i:i + 6] in message for i in range(len(secret) - 5)), message
    assert fake_openai.requests[-1].headers["OpenAI-Organization"] == HEADER_SECRET


async def test_short_runs_of_a_key_are_kept(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    # Five characters at each end say which key it was and reveal nothing that helps guess it.
    fake_openai.queue(fmt.error(400, f"key {SECRET[:5]}***{SECRET[-5:]} has no access to model fake-model"))
    with pytest.raises(UpstreamBadRequestError) as info:
        await OpenAIProvider(deployment(fake_openai.url), ctx).complete(req())
    assert info.value.message.endswith(f"key {SECRET[:5]}***{SECRET[-5:]} has no access to model fake-model")


async def test_fragments_in_a_stream_error_event(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    error = {"error": {"message": f"quota of {SECRET[:12]}... exceeded", "type": "server_error"}}
    fake_openai.queue(Reply(sse=sse(fmt.chunk({"role": "assistant", "content": "a"}), error)))
    with pytest.raises(UpstreamServerError) as info:
        async for _ in OpenAIProvider(deployment(fake_openai.url), ctx).stream(req(stream=True)):
            pass
    assert "quota of ***... exceeded" in info.value.message


async def test_stream_error_before_first_chunk(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(fmt.error(500, "boom"))
    with pytest.raises(UpstreamServerError):
        async for _ in OpenAIProvider(deployment(fake_openai.url), ctx).stream(req(stream=True)):
            pass


async def test_stream_garbage_event(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(Reply(sse=["data: {not json\n\n"]))
    with pytest.raises(UpstreamBadResponseError):
        async for _ in OpenAIProvider(deployment(fake_openai.url), ctx).stream(req(stream=True)):
            pass


async def test_stream_broken_connection(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(Reply(sse=fmt.stream_events(["a", "b", "c"]), drop_after=2))
    got = []
    with pytest.raises(UpstreamConnectionError):
        async for c in OpenAIProvider(deployment(fake_openai.url), ctx).stream(req(stream=True)):
            got.append(c)
    assert len(got) == 2


async def test_embeddings(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    p = OpenAIProvider(deployment(fake_openai.url), ctx)
    resp = await p.embed(EmbeddingRequest(model="gpt", input=["a", "b"]))
    assert fake_openai.requests[-1].path == "/v1/embeddings"
    assert [d.index for d in resp.data] == [0, 1]
    assert resp.usage.prompt_tokens == 10


@pytest.mark.parametrize(("tokens", "count"), [([[1, 2, 3], [4, 5]], 2), ([1, 2, 3], 1)])
async def test_embeddings_forward_token_ids_as_they_came(fake_openai: FakeUpstream, ctx: ProviderContext,
                                                         tokens: list[Any], count: int) -> None:
    resp = await OpenAIProvider(deployment(fake_openai.url), ctx).embed(EmbeddingRequest(model="gpt", input=tokens))
    assert fake_openai.requests[-1].json["input"] == tokens
    assert [d.index for d in resp.data] == list(range(count))


async def test_embeddings_base64_refused_upstream_asks_for_floats(fake_openai: FakeUpstream,
                                                                  ctx: ProviderContext) -> None:
    fake_openai.queue(fmt.error(400, "encoding_format: 'base64' is not supported"),
                      Reply(json=fmt.embeddings({"model": "fake-model", "input": ["a"]})))
    p = OpenAIProvider(deployment(fake_openai.url), ctx)
    resp = await p.embed(EmbeddingRequest(model="gpt", input=["a"], encoding_format="base64"))
    assert [r.json["encoding_format"] for r in fake_openai.requests] == ["base64", "float"]
    assert resp.data[0].embedding == fmt.embedding_vector(0)  # the router encodes it


async def test_embeddings_other_bad_requests_are_not_retried(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(fmt.error(400, "dimensions too large"))
    with pytest.raises(UpstreamBadRequestError):
        await OpenAIProvider(deployment(fake_openai.url), ctx).embed(
            EmbeddingRequest(model="gpt", input=["a"], encoding_format="base64", dimensions=60000))
    assert len(fake_openai.requests) == 1


async def test_check_lists_models(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    assert await OpenAIProvider(deployment(fake_openai.url), ctx).check() == "ok"


async def test_azure_url_and_header(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    d = DeploymentConfig(name="az", provider="azure", model="my-deploy", base_url=fake_openai.url,
                         api_key="k-azure-1", api_version="2024-06-01")
    await AzureOpenAIProvider(d, ctx).complete(req())
    sent = fake_openai.requests[-1]
    assert sent.path == "/openai/deployments/my-deploy/chat/completions"
    assert sent.query == {"api-version": "2024-06-01"}
    assert sent.headers["api-key"] == "k-azure-1"
    assert "Authorization" not in sent.headers


async def test_ollama_needs_no_key(fake_openai: FakeUpstream, ctx: ProviderContext,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", fake_openai.url)
    d = DeploymentConfig(name="llama3", provider="ollama")
    resp = await OllamaProvider(d, ctx).complete(req())
    assert fake_openai.requests[-1].path == "/v1/chat/completions"
    assert "Authorization" not in fake_openai.requests[-1].headers
    assert resp.choices[0].message.content == "echo: hi"


def test_missing_key_names_the_fix(ctx: ProviderContext) -> None:
    d = DeploymentConfig(name="gpt-4o", provider="openai")
    with pytest.raises(ConfigError, match="api_key_env: OPENAI_API_KEY"):
        OpenAIProvider(d, ctx)


# -- a stream request answered without a stream ------------------------------------------------------
async def test_stream_answered_with_a_json_completion_becomes_chunks(fake_openai: FakeUpstream,
                                                                     ctx: ProviderContext) -> None:
    # Some OpenAI-compatible servers ignore stream=true and send the whole completion.
    fake_openai.queue(Reply(json=fmt.completion("all at once", prompt_tokens=9, completion_tokens=3)))
    chunks = [c async for c in OpenAIProvider(deployment(fake_openai.url), ctx).stream(req(stream=True))]
    assert fake_openai.requests[-1].json["stream"] is True
    assert all(c.id == "chatcmpl-fake123" and c.model == "fake-model" for c in chunks)
    first, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == "all at once"
    assert first.choices[0].finish_reason is None
    assert finish.choices[0].finish_reason == "stop" and finish.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (9, 3)


async def test_stream_answered_with_json_tool_calls(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
             {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]
    fake_openai.queue(Reply(json=fmt.completion(tool_calls=calls)))
    chunks = [c async for c in OpenAIProvider(deployment(fake_openai.url), ctx).stream(req(stream=True))]
    delta = chunks[0].choices[0].delta
    assert delta.tool_calls == [{"index": 0, **calls[0]}, {"index": 1, **calls[1]}]
    assert chunks[1].choices[0].finish_reason == "tool_calls"


async def test_stream_answered_with_sse_under_another_label(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    body = "".join(fmt.stream_events(["a", "b"])).encode()
    fake_openai.queue(Reply(body=body, headers={"content-type": "text/plain"}))
    chunks = [c async for c in OpenAIProvider(deployment(fake_openai.url), ctx).stream(req(stream=True))]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ab"
    assert chunks[-1].usage is not None


@pytest.mark.parametrize("reply", [
    Reply(json={"hello": "world"}),
    Reply(json=[1, 2, 3]),
    Reply(body=b"<html>a proxy's page</html>", headers={"content-type": "text/html"}),
    Reply(body=b"", headers={"content-type": "application/json"}),
])
async def test_stream_answered_with_neither_stream_nor_completion(fake_openai: FakeUpstream, ctx: ProviderContext,
                                                                   reply: Reply) -> None:
    fake_openai.queue(reply)
    with pytest.raises(UpstreamBadResponseError, match="stream request"):
        async for _ in OpenAIProvider(deployment(fake_openai.url), ctx).stream(req(stream=True)):
            pass


async def test_stream_answered_with_a_json_error_object(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(Reply(json={"error": {"message": "model overloaded, key sk-secret-canary-123"}}))
    with pytest.raises(UpstreamServerError) as info:
        async for _ in OpenAIProvider(deployment(fake_openai.url), ctx).stream(req(stream=True)):
            pass
    assert "overloaded" in info.value.message and "sk-secret-canary-123" not in info.value.message
