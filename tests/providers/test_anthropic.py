from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from thinktank.config import DeploymentConfig
from thinktank.errors import (
    ConfigError,
    ContextWindowExceededError,
    InvalidRequestError,
    UpstreamAuthError,
    UpstreamBadRequestError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamRateLimitError,
    UpstreamServerError,
)
from thinktank.providers.anthropic import AnthropicProvider
from thinktank.providers.base import ChatModel, ProviderContext
from thinktank.types import ChatChunk, ChatRequest

from ..fakes import anthropic as fmt
from ..fakes.upstream import FakeUpstream, Reply, named_sse

KEY = "sk-ant-secret-canary-123"


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(fmt.default_handler)
    await fake.start()
    yield fake
    await fake.close()


def deployment(url: str, **kw: object) -> DeploymentConfig:
    return DeploymentConfig.model_validate(
        {"name": "claude", "provider": "anthropic", "model": fmt.MODEL, "base_url": url, "api_key": KEY, **kw}
    )


def provider(fake: FakeUpstream, ctx: ProviderContext, **kw: object) -> AnthropicProvider:
    return AnthropicProvider(deployment(fake.url, **kw), ctx)


def req(messages: list[dict[str, Any]] | None = None, **kw: object) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "claude", "messages": messages or [{"role": "user", "content": "hi"}], **kw}
    )


async def collect(p: AnthropicProvider, request: ChatRequest, into: list[ChatChunk] | None = None) -> list[ChatChunk]:
    """Every chunk of a stream; with ``into``, chunks land there as they arrive (kept if it raises)."""
    got = [] if into is None else into
    async for c in p.stream(request):
        got.append(c)
    return got


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


# -- request translation ------------------------------------------------------------------------
async def test_request_translation(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    p = provider(fake_anthropic, ctx)
    assert isinstance(p, ChatModel)
    assert p.name == "claude"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "user", "content": [{"type": "text", "text": "And Lyon."}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "15C rain"},
        {"role": "user", "content": "Thanks, summarise."},
    ]
    resp = await p.complete(req(messages, tools=[WEATHER_TOOL], tool_choice="required", stop="END",
                                temperature=1.7, top_p=0.9, user="user-42", seed=3))
    sent = fake_anthropic.requests[-1]
    assert sent.method == "POST"
    assert sent.path == "/v1/messages"
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers
    body = sent.json
    assert body["model"] == fmt.MODEL
    assert body["system"] == "You are terse.\n\nAnswer in French."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                     {"type": "text", "text": "And Lyon."}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Lyon"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "15C rain"},
            {"type": "text", "text": "Thanks, summarise."},
        ]},
    ]
    assert body["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                              "input_schema": WEATHER_TOOL["function"]["parameters"]}]  # type: ignore[index]
    assert body["tool_choice"] == {"type": "any"}
    assert body["stop_sequences"] == ["END"]
    assert body["max_tokens"] == 4096
    assert body["temperature"] == 1.0
    assert body["top_p"] == 0.9
    assert body["metadata"] == {"user_id": "user-42"}
    for absent in ("stream", "seed", "stop", "user", "n"):
        assert absent not in body
    assert resp.choices[0].message.content == "echo: Thanks, summarise."


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ],
)
async def test_tool_choice(fake_anthropic: FakeUpstream, ctx: ProviderContext, choice: object,
                           expected: dict[str, Any]) -> None:
    await provider(fake_anthropic, ctx).complete(req(tools=[WEATHER_TOOL], tool_choice=choice))
    assert fake_anthropic.requests[-1].json["tool_choice"] == expected


async def test_parallel_tool_calls_off_and_no_tool_choice_without_tools(
    fake_anthropic: FakeUpstream, ctx: ProviderContext
) -> None:
    p = provider(fake_anthropic, ctx)
    await p.complete(req(tools=[WEATHER_TOOL], parallel_tool_calls=False))
    assert fake_anthropic.requests[-1].json["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    await p.complete(req(tool_choice="auto"))
    assert "tool_choice" not in fake_anthropic.requests[-1].json
    assert "tools" not in fake_anthropic.requests[-1].json


async def test_limits_and_sampling(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    p = provider(fake_anthropic, ctx)
    await p.complete(req(max_completion_tokens=77, max_tokens=5, temperature=0.4, stop=["a", "b"]))
    body = fake_anthropic.requests[-1].json
    assert body["max_tokens"] == 77
    assert body["temperature"] == 0.4
    assert body["stop_sequences"] == ["a", "b"]
    await p.complete(req(max_tokens=5, temperature=0))
    body = fake_anthropic.requests[-1].json
    assert body["max_tokens"] == 5
    assert body["temperature"] == 0
    assert "system" not in body
    assert "stop_sequences" not in body
    assert "metadata" not in body


async def test_images(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    await provider(fake_anthropic, ctx).complete(req([{"role": "user", "content": content}]))
    assert fake_anthropic.requests[-1].json["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


async def test_prefill_trailing_whitespace_is_trimmed(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    await provider(fake_anthropic, ctx).complete(
        req([{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi \n"}])
    )
    assert fake_anthropic.requests[-1].json["messages"][-1] == {
        "role": "assistant", "content": [{"type": "text", "text": "Hi"}]}


@pytest.mark.parametrize(
    ("messages", "extra", "param"),
    [
        ([{"role": "user", "content": "x"},
          {"role": "assistant", "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "{oops"}}]}],
         {}, "messages[1].tool_calls[0].function.arguments"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}],
         {}, "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}],
         {}, "messages[0].content[0]"),
        ([{"role": "tool", "content": "no id"}], {}, "messages[0].tool_call_id"),
        ([{"role": "system", "content": "only a system prompt"}], {}, "messages"),
        ([{"role": "user", "content": "x"}], {"n": 2}, "n"),
        ([{"role": "user", "content": "x"}], {"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ],
)
async def test_untranslatable_requests(fake_anthropic: FakeUpstream, ctx: ProviderContext,
                                       messages: list[dict[str, Any]], extra: dict[str, Any], param: str) -> None:
    p = provider(fake_anthropic, ctx)
    with pytest.raises(InvalidRequestError) as info:
        await p.complete(req(messages, **extra))
    assert info.value.param == param
    with pytest.raises(InvalidRequestError):
        await collect(p, req(messages, stream=True, **extra))
    assert fake_anthropic.requests == []


# -- response translation -----------------------------------------------------------------------
async def test_text_response_and_usage_with_cache(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    fake_anthropic.queue(Reply(json=fmt.message("Bonjour.", model="claude-fake-1-20250101", input_tokens=10,
                                                 output_tokens=4, cache_creation=100, cache_read=1000)))
    resp = await provider(fake_anthropic, ctx).complete(req())
    assert resp.id == "msg_01Fake"
    assert resp.created == 1_700_000_000
    assert resp.model == "claude-fake-1-20250101"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "Bonjour."
    assert resp.choices[0].message.tool_calls is None
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (1110, 4, 1114)
    assert resp.usage.model_dump()["prompt_tokens_details"] == {"cached_tokens": 1000}


async def test_tool_use_response(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    uses = [fmt.tool_use("get_weather", {"city": "Paris", "units": ["C"]}, id_="toolu_01A"),
            fmt.tool_use("get_time", {}, id_="toolu_01B")]
    fake_anthropic.queue(Reply(json=fmt.message(None, tool_uses=uses)))
    resp = await provider(fake_anthropic, ctx).complete(req(tools=[WEATHER_TOOL]))
    msg = resp.choices[0].message
    assert msg.content is None
    assert msg.tool_calls is not None
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in msg.tool_calls] == [
        ("toolu_01A", "function", "get_weather", '{"city":"Paris","units":["C"]}'),
        ("toolu_01B", "function", "get_time", "{}"),
    ]
    assert resp.choices[0].finish_reason == "tool_calls"


async def test_text_and_tool_use_response(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    fake_anthropic.queue(Reply(json=fmt.message("Let me check.", tool_uses=[fmt.tool_use("f", {"a": 1})])))
    resp = await provider(fake_anthropic, ctx).complete(req())
    assert resp.choices[0].message.content == "Let me check."
    tc = resp.choices[0].message.tool_calls
    assert tc is not None
    assert tc[0].function.arguments == '{"a":1}'


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls")],
)
async def test_finish_reasons(fake_anthropic: FakeUpstream, ctx: ProviderContext, stop_reason: str,
                              finish: str) -> None:
    fake_anthropic.queue(Reply(json=fmt.message("x", stop_reason=stop_reason)))
    resp = await provider(fake_anthropic, ctx).complete(req())
    assert resp.choices[0].finish_reason == finish


# -- streaming ----------------------------------------------------------------------------------
async def test_stream_text(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    chunks = await collect(provider(fake_anthropic, ctx), req([{"role": "user", "content": "bonjour monde"}],
                                                             stream=True))
    body = fake_anthropic.requests[-1].json
    assert body["stream"] is True
    assert "stream_options" not in body
    assert all(c.id == "msg_01Fake" and c.model == fmt.MODEL and c.created == 1_700_000_000 for c in chunks)
    first = chunks[0]
    assert first.choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: bonjour monde"
    # one chunk per text delta (the ping and block start/stop produce nothing)
    assert [c.choices[0].delta.content for c in chunks[1:4]] == ["echo:", " bonjour", " monde"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert [c.choices[0].finish_reason for c in chunks[:-2]] == [None] * (len(chunks) - 2)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (12, 3, 15)


async def test_stream_usage_counts_cache_and_max_tokens(fake_anthropic: FakeUpstream,
                                                        ctx: ProviderContext) -> None:
    fake_anthropic.queue(Reply(sse=fmt.stream_events(["a", "b"], input_tokens=5, cache_read=50,
                                                     output_tokens=2, stop_reason="max_tokens")))
    chunks = await collect(provider(fake_anthropic, ctx), req(stream=True))
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (55, 2)


async def test_stream_tool_calls(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    fake_anthropic.queue(Reply(sse=fmt.tool_stream_events(
        [("toolu_01A", "get_weather", ['{"city": ', '"Par', 'is"}']),
         ("toolu_01B", "get_time", ['{"tz":"Europe/', 'Paris"}'])],
        text=["Let me", " check."])))
    chunks = await collect(provider(fake_anthropic, ctx), req(tools=[WEATHER_TOOL], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Let me check."
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    starts = [d for d in deltas if "id" in d]
    assert starts == [
        {"index": 0, "id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        {"index": 1, "id": "toolu_01B", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    ]
    args: dict[int, str] = {}
    for d in deltas:
        args[d["index"]] = args.get(d["index"], "") + d["function"]["arguments"]
    assert orjson.loads(args[0]) == {"city": "Paris"}
    assert orjson.loads(args[1]) == {"tz": "Europe/Paris"}
    assert all(d["function"]["arguments"] for d in deltas if "id" not in d)  # empty partials are skipped
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 40
    assert chunks[-1].usage.completion_tokens == 30


async def test_stream_yields_before_the_answer_is_complete(fake_anthropic: FakeUpstream,
                                                           ctx: ProviderContext) -> None:
    # message_start, block start, ping, 2 deltas, then the connection breaks
    fake_anthropic.queue(Reply(sse=fmt.stream_events(["a", "b", "c", "d"]), drop_after=5))
    got: list[ChatChunk] = []
    with pytest.raises(UpstreamConnectionError) as info:
        await collect(provider(fake_anthropic, ctx), req(stream=True), got)
    assert [c.choices[0].delta.content for c in got] == ["", "a", "b"]
    assert info.value.retryable


async def test_stream_ending_without_message_stop(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    fake_anthropic.queue(Reply(sse=fmt.stream_events(["a", "b"])[:-1]))
    with pytest.raises(UpstreamConnectionError, match="message_stop"):
        await collect(provider(fake_anthropic, ctx), req(stream=True))


@pytest.mark.parametrize(
    ("type_", "error"),
    [("overloaded_error", UpstreamServerError), ("api_error", UpstreamServerError),
     ("rate_limit_error", UpstreamRateLimitError), ("invalid_request_error", UpstreamBadRequestError)],
)
async def test_stream_error_event(fake_anthropic: FakeUpstream, ctx: ProviderContext, type_: str,
                                  error: type[Exception]) -> None:
    events = fmt.stream_events(["one", "two", "three"])
    fake_anthropic.queue(Reply(sse=[*events[:5], fmt.error_event(type_, f"{type_} {KEY}"), *events[5:]]))
    got: list[ChatChunk] = []
    with pytest.raises(error) as info:
        await collect(provider(fake_anthropic, ctx), req(stream=True), got)
    assert [c.choices[0].delta.content for c in got] == ["", "one", "two"]
    assert type_ in str(info.value)
    assert KEY not in str(info.value)
    if type_ == "overloaded_error":
        assert isinstance(info.value, UpstreamServerError)
        assert info.value.retryable
        assert info.value.upstream_status == 529


async def test_stream_http_error_before_first_event(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    fake_anthropic.queue(fmt.error(529, "overloaded_error", "Overloaded"))
    with pytest.raises(UpstreamServerError):
        await collect(provider(fake_anthropic, ctx), req(stream=True))


@pytest.mark.parametrize("event", ["event: content_block_delta\ndata: {not json\n\n",
                                   "event: content_block_delta\ndata: [1, 2]\n\n"])
async def test_stream_garbage_event(fake_anthropic: FakeUpstream, ctx: ProviderContext, event: str) -> None:
    fake_anthropic.queue(Reply(sse=[fmt.stream_events(["a"])[0], event]))
    with pytest.raises(UpstreamBadResponseError):
        await collect(provider(fake_anthropic, ctx), req(stream=True))


async def test_stream_answered_with_a_whole_message(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    # A Messages-API server that ignores "stream": true sends the whole message as JSON.
    fake_anthropic.queue(Reply(json=fmt.message("all at once", tool_uses=[fmt.tool_use("f", {"a": 1})],
                                                input_tokens=7, output_tokens=4)))
    chunks = await collect(provider(fake_anthropic, ctx), req(stream=True))
    first, finish, usage = chunks
    delta = first.choices[0].delta
    assert (delta.role, delta.content) == ("assistant", "all at once")
    assert delta.tool_calls == [{"index": 0, "id": "toolu_01A", "type": "function",
                                 "function": {"name": "f", "arguments": '{"a":1}'}}]
    assert finish.choices[0].finish_reason == "tool_calls"
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (7, 4)
    assert {c.id for c in chunks} == {"msg_01Fake"}


@pytest.mark.parametrize("reply", [
    Reply(json={"hello": "world"}),
    Reply(body=b"<html>a proxy's page</html>", headers={"content-type": "text/html"}),
])
async def test_stream_answered_with_neither_stream_nor_message(fake_anthropic: FakeUpstream, ctx: ProviderContext,
                                                               reply: Reply) -> None:
    fake_anthropic.queue(reply)
    with pytest.raises(UpstreamBadResponseError, match="stream request"):
        await collect(provider(fake_anthropic, ctx), req(stream=True))


async def test_stream_answered_with_a_json_error(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    fake_anthropic.queue(Reply(json=fmt.error_body("overloaded_error", "Overloaded")))
    with pytest.raises(UpstreamServerError, match="Overloaded"):
        await collect(provider(fake_anthropic, ctx), req(stream=True))


async def test_stream_ignores_unknown_events_and_thinking(fake_anthropic: FakeUpstream,
                                                          ctx: ProviderContext) -> None:
    events = fmt.stream_events(["x"])
    extra = named_sse(
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        ("future_event", {"type": "future_event", "whatever": True}),
    )
    fake_anthropic.queue(Reply(sse=[*events[:1], *extra, *events[1:]]))
    chunks = await collect(provider(fake_anthropic, ctx), req(stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "x"


@pytest.mark.parametrize("stream", [False, True])
async def test_fragments_of_the_key_and_header_values_are_scrubbed(fake_anthropic: FakeUpstream,
                                                                   ctx: ProviderContext, stream: bool) -> None:
    proxy_token = "pxy-7Hq2Lw9Rt0Zs5Vb8Nc"
    echo = f"rejected {KEY[:10]}**** via proxy token ...{proxy_token[-9:]}"
    if stream:
        events = fmt.stream_events(["one"])
        fake_anthropic.queue(Reply(sse=[events[0], fmt.error_event("overloaded_error", echo)]))
    else:
        fake_anthropic.queue(fmt.error(529, "overloaded_error", echo))
    p = provider(fake_anthropic, ctx, headers={"x-proxy-token": proxy_token})
    with pytest.raises(UpstreamServerError) as info:
        await collect(p, req(stream=stream)) if stream else await p.complete(req())
    assert "rejected ******* via proxy token ...***" in info.value.message  # the key part went, its stars stay
    assert fake_anthropic.requests[-1].headers["x-proxy-token"] == proxy_token


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (fmt.error(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit",
                   headers={"retry-after": "7"}), UpstreamRateLimitError),
        (fmt.error(529, "overloaded_error", "Overloaded"), UpstreamServerError),
        (fmt.error(500, "api_error", "Internal server error"), UpstreamServerError),
        (fmt.error(401, "authentication_error", f"invalid x-api-key {KEY}"), UpstreamAuthError),
        (fmt.error(403, "permission_error", "Your API key does not have permission"), UpstreamAuthError),
        (fmt.error(400, "invalid_request_error", "prompt is too long: 210345 tokens > 200000 maximum"),
         ContextWindowExceededError),
        (fmt.error(400, "invalid_request_error", "temperature: range: 0..1"), UpstreamBadRequestError),
        (Reply(body=b"<html>cloudflare exploded</html>"), UpstreamBadResponseError),
        (Reply(json={"hello": "world"}), UpstreamBadResponseError),
        (Reply(json={"type": "message", "content": "not a list"}), UpstreamBadResponseError),
        (Reply(json=fmt.error_body("overloaded_error", "Overloaded")), UpstreamServerError),
        (Reply(drop=True), UpstreamConnectionError),
    ],
)
async def test_error_mapping(fake_anthropic: FakeUpstream, ctx: ProviderContext, reply: Reply,
                             error: type[Exception]) -> None:
    fake_anthropic.queue(reply)
    with pytest.raises(error) as info:
        await provider(fake_anthropic, ctx).complete(req())
    assert KEY not in str(info.value)
    if isinstance(info.value, UpstreamRateLimitError):
        assert info.value.retry_after == 7
        assert info.value.retryable
    if reply.status == 529:
        assert isinstance(info.value, UpstreamServerError)
        assert info.value.retryable
        assert info.value.upstream_status == 529


async def test_connection_refused(ctx: ProviderContext) -> None:
    fake = FakeUpstream()
    url = await fake.start()
    await fake.close()
    with pytest.raises(UpstreamConnectionError) as info:
        await AnthropicProvider(deployment(url), ctx).complete(req())
    assert KEY not in str(info.value)


# -- configuration and check --------------------------------------------------------------------
async def test_check(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    assert await provider(fake_anthropic, ctx).check() == "ok"
    sent = fake_anthropic.requests[-1]
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert (sent.method, sent.path) == ("GET", "/v1/models")
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"


async def test_check_failures(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    p = provider(fake_anthropic, ctx)
    fake_anthropic.queue(fmt.error(401, "authentication_error", "invalid x-api-key"))
    with pytest.raises(UpstreamAuthError):
        await p.check()
    fake_anthropic.queue(Reply(json={"models": []}))
    with pytest.raises(UpstreamBadResponseError):
        await p.check()


async def test_base_url_with_v1_and_custom_headers(fake_anthropic: FakeUpstream, ctx: ProviderContext) -> None:
    d = deployment(fake_anthropic.url + "/v1/", api_version="2024-01-01",
                   headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    await AnthropicProvider(d, ctx).complete(req())
    sent = fake_anthropic.requests[-1]
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert sent.path == "/v1/messages"
    assert headers["anthropic-version"] == "2024-01-01"
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31"


def test_default_base_url(ctx: ProviderContext) -> None:
    d = DeploymentConfig(name="claude-sonnet-4", provider="anthropic", api_key=KEY)
    assert AnthropicProvider(d, ctx).base_url == "https://api.anthropic.com"


def test_key_from_env(ctx: ProviderContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env-key")
    d = DeploymentConfig(name="claude", provider="anthropic", api_key_env="ANTHROPIC_API_KEY")
    assert AnthropicProvider(d, ctx)._headers["x-api-key"] == "from-env-key"


def test_missing_key_names_the_fix(ctx: ProviderContext) -> None:
    d = DeploymentConfig(name="claude", provider="anthropic")
    with pytest.raises(ConfigError, match="api_key_env: ANTHROPIC_API_KEY"):
        AnthropicProvider(d, ctx)
