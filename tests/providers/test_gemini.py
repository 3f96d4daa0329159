from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncGenerator, AsyncIterator
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
from thinktank.providers.base import ChatModel, EmbeddingModel, ProviderContext
from thinktank.providers.gemini import GeminiProvider
from thinktank.providers.registry import ProviderRegistry
from thinktank.types import ChatChunk, ChatRequest, EmbeddingRequest

from ..fakes import gemini as fmt
from ..fakes.clock import FakeClock
from ..fakes.upstream import FakeUpstream, Reply

KEY = "AIza-secret-canary-123"


@pytest.fixture
async def fake_gemini() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(fmt.default_handler)
    await fake.start()
    yield fake
    await fake.close()


def deployment(url: str, **kw: object) -> DeploymentConfig:
    return DeploymentConfig.model_validate(
        {"name": "gem", "provider": "gemini", "model": "gemini-fake-001", "base_url": url + "/v1beta",
         "api_key": KEY, **kw}
    )


def provider(fake: FakeUpstream, ctx: ProviderContext, **kw: object) -> GeminiProvider:
    return GeminiProvider(deployment(fake.url, **kw), ctx)


def req(messages: list[Any] | None = None, **kw: object) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "gem", "messages": messages or [{"role": "user", "content": "hi"}], **kw})


async def collect(p: GeminiProvider, request: ChatRequest) -> list[ChatChunk]:
    return [c async for c in p.stream(request)]


async def collect_until_error(p: GeminiProvider, request: ChatRequest) -> tuple[list[ChatChunk], Exception]:
    got: list[ChatChunk] = []
    try:
        async for c in p.stream(request):
            got.append(c)
    except Exception as exc:
        return got, exc
    raise AssertionError("the stream ended without an error")


PNG_B64 = base64.b64encode(b"\x89PNG fake").decode()
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}


# -- registration and configuration -----------------------------------------------------------
def test_registered_as_gemini_entry_point(ctx: ProviderContext) -> None:
    factory = ProviderRegistry().get("gemini")
    p = factory(DeploymentConfig(name="g", provider="gemini", api_key=KEY), ctx)
    assert isinstance(p, GeminiProvider)
    assert isinstance(p, ChatModel)
    assert isinstance(p, EmbeddingModel)
    assert p.base_url == "https://generativelanguage.googleapis.com/v1beta"
    assert p.name == "g"


def test_missing_key_names_the_fix(ctx: ProviderContext) -> None:
    with pytest.raises(ConfigError, match="api_key_env: GEMINI_API_KEY"):
        GeminiProvider(DeploymentConfig(name="gemini-2.5-flash", provider="gemini"), ctx)


# -- request translation ----------------------------------------------------------------------
async def test_url_and_key_header(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    await provider(fake_gemini, ctx, headers={"x-extra": "1"}).complete(req())
    sent = fake_gemini.requests[-1]
    assert sent.method == "POST"
    assert sent.path == "/v1beta/models/gemini-fake-001:generateContent"
    assert sent.query == {}
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.headers["x-extra"] == "1"
    assert "Authorization" not in sent.headers
    assert KEY not in sent.path
    assert sent.json == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


async def test_tuned_model_resource_is_kept(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    await provider(fake_gemini, ctx, model="tunedModels/my-tune").complete(req())
    assert fake_gemini.requests[-1].path == "/v1beta/tunedModels/my-tune:generateContent"


async def test_conversation_translation(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/pics/cat.webp?size=2"}},
            {"type": "image_url", "image_url": "https://example.com/noext"},
        ]},
        {"role": "user", "content": "And the weather in Paris and Rome?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_time", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp_c": 21, "sky": "clear"}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
        {"role": "assistant", "content": "21C and clear; noon."},
        {"role": "user", "content": "Thanks"},
    ]
    await provider(fake_gemini, ctx).complete(req(messages))
    body = fake_gemini.requests[-1].json
    assert body["systemInstruction"] == {"parts": [{"text": "Be terse."}, {"text": "Use metric units."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [
            {"text": "What is in these?"},
            {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
            {"fileData": {"fileUri": "https://example.com/pics/cat.webp?size=2", "mimeType": "image/webp"}},
            {"fileData": {"fileUri": "https://example.com/noext", "mimeType": "image/jpeg"}},
            {"text": "And the weather in Paris and Rome?"},  # consecutive user turns merged
        ]},
        {"role": "model", "parts": [
            {"text": "Let me check."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "get_time", "args": {}}},
        ]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"content": {"temp_c": 21, "sky": "clear"}}}},
            {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}},
        ]},
        {"role": "model", "parts": [{"text": "21C and clear; noon."}]},
        {"role": "user", "parts": [{"text": "Thanks"}]},
    ]
    assert "generationConfig" not in body
    assert "tools" not in body
    assert "toolConfig" not in body


async def test_other_media_parts(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    pdf = base64.b64encode(b"%PDF-1.4").decode()
    messages = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "mp3"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{pdf}"}},
        {"type": "image_url", "image_url": {"url": "data:text/plain,hello%20there"}},
    ]}]
    await provider(fake_gemini, ctx).complete(req(messages))
    assert fake_gemini.requests[-1].json["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/mp3", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": pdf}},
        {"inlineData": {"mimeType": "text/plain", "data": base64.b64encode(b"hello there").decode()}},
    ]


async def test_generation_config_and_tools(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    await provider(fake_gemini, ctx).complete(req(
        temperature=0.3, top_p=0.9, max_completion_tokens=64, max_tokens=999, stop="END", n=2, seed=7,
        presence_penalty=0.5, frequency_penalty=-0.5, response_format={"type": "json_object"},
        tools=[WEATHER_TOOL, {"type": "function", "function": {"name": "no_args"}}], tool_choice="required",
        logprobs=True,
    ))
    body = fake_gemini.requests[-1].json
    assert body["generationConfig"] == {
        "temperature": 0.3, "topP": 0.9, "maxOutputTokens": 64, "stopSequences": ["END"], "candidateCount": 2,
        "seed": 7, "presencePenalty": 0.5, "frequencyPenalty": -0.5, "responseMimeType": "application/json",
    }
    assert body["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "Weather for a city",
         "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"]},  # type: ignore[index]
        {"name": "no_args"},
    ]}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert "logprobs" not in str(body)


async def test_json_schema_response_format(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}
    await provider(fake_gemini, ctx).complete(req(
        max_tokens=10, stop=["a", "b"],
        response_format={"type": "json_schema", "json_schema": {"name": "A", "strict": True, "schema": schema}}))
    cfg = fake_gemini.requests[-1].json["generationConfig"]
    assert cfg == {"maxOutputTokens": 10, "stopSequences": ["a", "b"], "responseMimeType": "application/json",
                   "responseJsonSchema": schema}


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ({"type": "function", "function": {"name": "get_weather"}},
         {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
    ],
)
async def test_tool_choice(fake_gemini: FakeUpstream, ctx: ProviderContext, choice: object,
                           config: dict[str, Any]) -> None:
    await provider(fake_gemini, ctx).complete(req(tools=[WEATHER_TOOL], tool_choice=choice))
    assert fake_gemini.requests[-1].json["toolConfig"] == {"functionCallingConfig": config}


@pytest.mark.parametrize(
    ("messages", "kw", "param"),
    [
        ([{"role": "user", "content": "x"},
          {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                "function": {"name": "f", "arguments": "{not json"}}]}],
         {}, "messages[1].tool_calls[0].function.arguments"),
        ([{"role": "user", "content": "x"},
          {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                "function": {"name": "f", "arguments": "[1, 2]"}}]}],
         {}, "messages[1].tool_calls[0].function.arguments"),
        ([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}],
         {}, "messages[1]"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://host/a.png"}}]}],
         {}, "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": "video", "video": {}}]}], {}, "messages[0].content[0]"),
        (None, {"tools": [{"type": "web_search"}]}, "tools[0]"),
        (None, {"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ],
)
async def test_untranslatable_requests_are_client_errors(
    fake_gemini: FakeUpstream, ctx: ProviderContext, messages: list[dict[str, Any]] | None,
    kw: dict[str, Any], param: str,
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await provider(fake_gemini, ctx).complete(req(messages, **kw))
    assert info.value.param == param
    assert info.value.status == 400
    assert fake_gemini.requests == []  # refused before anything was sent


async def test_system_only_conversation_becomes_user_turn(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    await provider(fake_gemini, ctx).complete(req([{"role": "system", "content": "Say hi."}]))
    body = fake_gemini.requests[-1].json
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Say hi."}]}]
    assert "systemInstruction" not in body


# -- response translation ---------------------------------------------------------------------
async def test_text_response(fake_gemini: FakeUpstream, ctx: ProviderContext, clock: FakeClock) -> None:
    resp = await provider(fake_gemini, ctx).complete(req())
    assert resp.id == "chatcmpl-fakeResp123"
    assert resp.created == int(clock.time())
    assert resp.model == "gemini-fake-001"
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hi"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (12, 8, 20)


async def test_id_and_model_fallbacks(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    body = fmt.response("x", response_id=None)
    del body["modelVersion"]
    fake_gemini.queue(Reply(json=body), Reply(json=body))
    p = provider(fake_gemini, ctx)
    a, b = await p.complete(req()), await p.complete(req())
    assert a.id.startswith("chatcmpl-")
    assert len(a.id) > len("chatcmpl-") + 8
    assert a.id != b.id
    assert a.model == "gemini-fake-001"


async def test_multiple_candidates(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(json=fmt.response(candidates=[
        fmt.candidate("first"), fmt.candidate("second", index=1, finish_reason="MAX_TOKENS")])))
    resp = await provider(fake_gemini, ctx).complete(req(n=2))
    assert [(c.index, c.message.content, c.finish_reason) for c in resp.choices] == [
        (0, "first", "stop"), (1, "second", "length")]


async def test_function_calls_and_thought_signature_round_trip(fake_gemini: FakeUpstream,
                                                               ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(json=fmt.response(None, parts=[
        fmt.function_call("get_weather", {"city": "Paris", "days": [1, 2]}, signature="c2lnLTE="),
        fmt.function_call("get_time", {}),
    ])))
    p = provider(fake_gemini, ctx)
    resp = await p.complete(req(tools=[WEATHER_TOOL]))
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in calls] == [
        ("call_0", "function", "get_weather", '{"city":"Paris","days":[1,2]}'),
        ("call_1", "function", "get_time", "{}"),
    ]
    assert calls[0].model_dump()["extra_content"] == {"google": {"thought_signature": "c2lnLTE="}}
    # the client sends the assistant message back with the results: the signature returns to Gemini
    history = [{"role": "user", "content": "weather?"},
               {"role": "assistant", "content": None,
                "tool_calls": [c.model_dump(exclude_none=True) for c in calls]},
               {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
               {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}]
    await p.complete(req(history))
    contents = fake_gemini.requests[-1].json["contents"]
    assert contents[1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "days": [1, 2]}},
         "thoughtSignature": "c2lnLTE="},
        {"functionCall": {"name": "get_time", "args": {}}},
    ]}
    assert [p["functionResponse"]["name"] for p in contents[2]["parts"]] == ["get_weather", "get_time"]


async def test_repeated_call_ids_resolve_to_the_latest_call(fake_gemini: FakeUpstream,
                                                            ctx: ProviderContext) -> None:
    def call(name: str) -> dict[str, Any]:
        return {"role": "assistant", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": name, "arguments": "{}"}}]}
    history = [{"role": "user", "content": "go"}, call("first"), {"role": "tool", "tool_call_id": "call_0",
                                                                  "content": "1"},
               call("second"), {"role": "tool", "tool_call_id": "call_0", "content": "2"}]
    await provider(fake_gemini, ctx).complete(req(history))
    contents = fake_gemini.requests[-1].json["contents"]
    responses = [c["parts"][0]["functionResponse"] for c in contents[1:] if c["role"] == "user"]
    assert responses == [{"name": "first", "response": {"content": 1}},
                         {"name": "second", "response": {"content": 2}}]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
     ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
     ("OTHER", "stop"), ("FINISH_REASON_UNSPECIFIED", "stop")],
)
async def test_finish_reasons(fake_gemini: FakeUpstream, ctx: ProviderContext, reason: str, expected: str) -> None:
    fake_gemini.queue(Reply(json=fmt.response("partial", finish_reason=reason)))
    resp = await provider(fake_gemini, ctx).complete(req())
    assert resp.choices[0].finish_reason == expected
    assert resp.choices[0].message.content == "partial"


async def test_candidate_stopped_for_safety_without_content(fake_gemini: FakeUpstream,
                                                            ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(json=fmt.response(candidates=[{"finishReason": "SAFETY", "safetyRatings": []}])))
    resp = await provider(fake_gemini, ctx).complete(req())
    assert resp.choices[0].message.content == ""
    assert resp.choices[0].finish_reason == "content_filter"


async def test_blocked_prompt(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(json=fmt.blocked("PROHIBITED_CONTENT")))
    resp = await provider(fake_gemini, ctx).complete(req())
    assert resp.id == "chatcmpl-fakeBlocked1"
    assert len(resp.choices) == 1
    assert resp.choices[0].message.content == ""
    assert resp.choices[0].finish_reason == "content_filter"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 9
    assert resp.usage.completion_tokens == 0


async def test_thinking_tokens_and_thought_parts(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(json=fmt.response(
        candidates=[{"content": {"role": "model", "parts": [
            {"text": "Let me reason about this...", "thought": True}, {"text": "The answer"}, {"text": " is 4."}]},
            "finishReason": "STOP"}],
        prompt_tokens=10, completion_tokens=5, thoughts_tokens=100)))
    resp = await provider(fake_gemini, ctx).complete(req())
    assert resp.choices[0].message.content == "The answer is 4."
    u = resp.usage
    assert u is not None
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (10, 105, 115)
    assert u.model_dump()["completion_tokens_details"] == {"reasoning_tokens": 100}


# -- streaming --------------------------------------------------------------------------------
async def test_stream_text(fake_gemini: FakeUpstream, ctx: ProviderContext, clock: FakeClock) -> None:
    chunks = await collect(provider(fake_gemini, ctx), req([{"role": "user", "content": "hello there"}],
                                                            stream=True, max_tokens=50))
    sent = fake_gemini.requests[-1]
    assert sent.path == "/v1beta/models/gemini-fake-001:streamGenerateContent"
    assert sent.query == {"alt": "sse"}
    assert sent.headers["x-goog-api-key"] == KEY
    assert "stream" not in sent.json
    assert sent.json["generationConfig"] == {"maxOutputTokens": 50}
    assert {c.id for c in chunks} == {"chatcmpl-fakeStream1"}
    assert {c.created for c in chunks} == {int(clock.time())}
    assert {c.model for c in chunks} == {"gemini-fake-001"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.delta.role is None for c in chunks[1:] for ch in c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there"
    finish = chunks[-2]
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content is None
    assert [c.choices[0].finish_reason for c in chunks[:-2]] == [None] * (len(chunks) - 2)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (12, 3, 15)
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_yields_each_event_as_it_arrives(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(sse=fmt.stream_events(["first ", "second"]), chunk_delay=3.0))
    agen = provider(fake_gemini, ctx).stream(req(stream=True))
    assert isinstance(agen, AsyncGenerator)
    first = await asyncio.wait_for(anext(agen), timeout=1.5)
    assert first.choices[0].delta.content == "first "
    await agen.aclose()


async def test_stream_function_calls(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    events = [
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Checking."}]}}],
         "usageMetadata": fmt.usage(20, None), "modelVersion": fmt.MODEL, "responseId": "r1"},
        {"candidates": [{"content": {"role": "model", "parts": [
            fmt.function_call("get_weather", {"city": "Paris"}, signature="sig-A")]}}],
         "usageMetadata": fmt.usage(20, None), "modelVersion": fmt.MODEL, "responseId": "r1"},
        {"candidates": [{"content": {"role": "model", "parts": [fmt.function_call("get_weather", {"city": "Rome"})]},
                         "finishReason": "STOP"}],
         "usageMetadata": fmt.usage(20, 11), "modelVersion": fmt.MODEL, "responseId": "r1"},
    ]
    fake_gemini.queue(Reply(sse=fmt.sse(*events)))
    chunks = await collect(provider(fake_gemini, ctx), req(stream=True, tools=[WEATHER_TOOL]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == "Checking."
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls == [
        {"index": 0, "id": "call_0", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
         "extra_content": {"google": {"thought_signature": "sig-A"}}},
        {"index": 1, "id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
    ]
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 11


async def test_stream_multiple_candidates(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(sse=fmt.sse(
        {"candidates": [fmt.candidate("a", finish_reason=None), fmt.candidate("b", index=1, finish_reason=None)]},
        {"candidates": [fmt.candidate("A"), fmt.candidate("B", index=1, finish_reason="MAX_TOKENS")],
         "usageMetadata": fmt.usage(3, 4)},
    )))
    chunks = await collect(provider(fake_gemini, ctx), req(stream=True, n=2))
    text: dict[int, str] = {0: "", 1: ""}
    finish: dict[int, str | None] = {}
    for c in chunks:
        for ch in c.choices:
            text[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    assert text == {0: "aA", 1: "bB"}
    assert finish == {0: "stop", 1: "length"}
    assert [ch.delta.role for ch in chunks[0].choices] == ["assistant", "assistant"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 7


async def test_stream_blocked_prompt(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(sse=fmt.sse(fmt.blocked())))
    chunks = await collect(provider(fake_gemini, ctx), req(stream=True))
    assert len(chunks) == 2
    choice = chunks[0].choices[0]
    assert (choice.delta.role, choice.delta.content, choice.finish_reason) == ("assistant", "", "content_filter")
    assert chunks[1].choices == []
    assert chunks[1].usage is not None
    assert chunks[1].usage.prompt_tokens == 9


async def test_stream_without_usage_has_no_usage_chunk(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(sse=fmt.sse({"candidates": [fmt.candidate("only")]})))
    chunks = await collect(provider(fake_gemini, ctx), req(stream=True))
    assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"]
    assert all(c.choices for c in chunks)


async def test_stream_answered_with_a_json_array(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    # Without alt=sse (a Gemini-compatible server that ignores it) the events come as one JSON array.
    events = [orjson.loads(e.removeprefix("data: ")) for e in fmt.stream_events(["one ", "two"])]
    fake_gemini.queue(Reply(json=events))
    chunks = await collect(provider(fake_gemini, ctx), req(stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (12, 2)


async def test_stream_answered_with_one_json_response(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(json=fmt.response("whole", prompt_tokens=5, completion_tokens=1)))
    chunks = await collect(provider(fake_gemini, ctx), req(stream=True))
    assert chunks[0].choices[0].delta.content == "whole" and chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 5


@pytest.mark.parametrize("reply", [
    Reply(json={"hello": "world"}),
    Reply(json=[]),
    Reply(json=[{"candidates": "nope"}]),
    Reply(body=b"<html>a proxy's page</html>", headers={"content-type": "text/html"}),
])
async def test_stream_answered_with_neither_stream_nor_response(fake_gemini: FakeUpstream, ctx: ProviderContext,
                                                                reply: Reply) -> None:
    fake_gemini.queue(reply)
    with pytest.raises(UpstreamBadResponseError):
        await collect(provider(fake_gemini, ctx), req(stream=True))


async def test_stream_answered_with_a_json_error(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(json=[{"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}]))
    with pytest.raises(UpstreamServerError, match="overloaded"):
        await collect(provider(fake_gemini, ctx), req(stream=True))


# -- errors -----------------------------------------------------------------------------------
RETRY_INFO: list[dict[str, Any]] = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
              {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]


@pytest.mark.parametrize(
    ("reply", "error", "retry_after"),
    [
        (fmt.error(429, "Resource has been exhausted (e.g. check quota).", headers={"retry-after": "7"}),
         UpstreamRateLimitError, 7.0),
        (fmt.error(429, "You exceeded your current quota.", details=RETRY_INFO), UpstreamRateLimitError, 37.0),
        (fmt.error(500, "An internal error has occurred."), UpstreamServerError, None),
        (fmt.error(503, "The model is overloaded. Please try again later."), UpstreamServerError, None),
        (fmt.error(403, f"Method doesn't allow unregistered callers. key={KEY}"), UpstreamAuthError, None),
        (fmt.error(400, "API key not valid. Please pass a valid API key.", details=[
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com"}]), UpstreamAuthError, None),
        (fmt.error(400, "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."),
         ContextWindowExceededError, None),
        (fmt.error(400, "Invalid value at 'generation_config.temperature' (TYPE_FLOAT)"),
         UpstreamBadRequestError, None),
        (fmt.error(404, "models/gemini-fake-001 is not found for API version v1beta"), UpstreamAuthError, None),
        (Reply(body=b"<html>502 Bad Gateway</html>"), UpstreamBadResponseError, None),
        (Reply(json={"hello": "world"}), UpstreamBadResponseError, None),
        (Reply(json={"candidates": "nope"}), UpstreamBadResponseError, None),
        (Reply(json=[1, 2, 3]), UpstreamBadResponseError, None),
        (Reply(drop=True), UpstreamConnectionError, None),
    ],
)
async def test_error_mapping(fake_gemini: FakeUpstream, ctx: ProviderContext, reply: Reply,
                             error: type[Exception], retry_after: float | None) -> None:
    fake_gemini.queue(reply)
    with pytest.raises(error) as info:
        await provider(fake_gemini, ctx).complete(req())
    assert type(info.value) is error
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value.args)
    assert getattr(info.value, "deployment", None) == "gem"
    assert getattr(info.value, "retry_after", None) == retry_after


async def test_forbidden_message_is_scrubbed_when_kept(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(fmt.error(429, f"quota for key {KEY} exhausted"))
    with pytest.raises(UpstreamRateLimitError) as info:
        await provider(fake_gemini, ctx).complete(req())
    assert "quota for key *** exhausted" in str(info.value)


async def test_fragments_of_the_key_and_header_values_are_scrubbed(fake_gemini: FakeUpstream,
                                                                   ctx: ProviderContext) -> None:
    project = "proj-81726354-secret"
    fake_gemini.queue(fmt.error(429, f"quota of key {KEY[:9]}... (project {project[5:]}) exhausted"))
    p = provider(fake_gemini, ctx, headers={"x-goog-user-project": project})
    with pytest.raises(UpstreamRateLimitError) as info:
        await p.complete(req())
    assert "quota of key ***... (project ***) exhausted" in info.value.message


async def test_stream_error_before_first_chunk(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(fmt.error(503, "overloaded"))
    with pytest.raises(UpstreamServerError):
        await collect(provider(fake_gemini, ctx), req(stream=True))


async def test_stream_error_event(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(sse=fmt.stream_events(["a ", "b"])[:1] + fmt.sse(
        {"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}})))
    got, exc = await collect_until_error(provider(fake_gemini, ctx), req(stream=True))
    assert isinstance(exc, UpstreamRateLimitError)
    assert len(got) == 1
    assert got[0].choices[0].delta.content == "a "


async def test_stream_garbage_event(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(sse=["data: {not json\r\n\r\n"]))
    with pytest.raises(UpstreamBadResponseError):
        await collect(provider(fake_gemini, ctx), req(stream=True))


async def test_stream_event_of_wrong_shape(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(sse=fmt.sse({"candidates": [{"index": "first"}]})))
    with pytest.raises(UpstreamBadResponseError):
        await collect(provider(fake_gemini, ctx), req(stream=True))


async def test_stream_broken_connection(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(Reply(sse=fmt.stream_events(["a ", "b ", "c"]), drop_after=2))
    got, exc = await collect_until_error(provider(fake_gemini, ctx), req(stream=True))
    assert isinstance(exc, UpstreamConnectionError)
    assert [c.choices[0].delta.content for c in got] == ["a ", "b "]
    assert KEY not in str(exc)


# -- embeddings and check ---------------------------------------------------------------------
async def test_embeddings(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    p = provider(fake_gemini, ctx, model="text-embedding-004", mode="embedding")
    resp = await p.embed(EmbeddingRequest(model="gem", input=["hello world", "abc"], dimensions=3))
    sent = fake_gemini.requests[-1]
    assert sent.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.query == {}
    one = {"model": "models/text-embedding-004", "outputDimensionality": 3}
    assert sent.json == {"requests": [{**one, "content": {"parts": [{"text": "hello world"}]}},
                                      {**one, "content": {"parts": [{"text": "abc"}]}}]}
    assert resp.model == "text-embedding-004"
    assert [(d.index, d.embedding) for d in resp.data] == [(0, [0.1, 0.25, 0.25]), (1, [0.2, 0.25, 0.25])]
    assert resp.usage.prompt_tokens == 3 + 1
    assert resp.usage.total_tokens == 4


async def test_embeddings_single_string_base64(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    p = provider(fake_gemini, ctx, model="text-embedding-004")
    resp = await p.embed(EmbeddingRequest(model="gem", input="hi", encoding_format="base64"))
    assert len(fake_gemini.requests[-1].json["requests"]) == 1
    assert "outputDimensionality" not in fake_gemini.requests[-1].json["requests"][0]
    raw = base64.b64decode(str(resp.data[0].embedding))
    assert struct.unpack("<3f", raw) == pytest.approx((0.1, 0.25, 0.25))


async def test_embeddings_refuse_token_ids(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    with pytest.raises(InvalidRequestError):
        await provider(fake_gemini, ctx).embed(EmbeddingRequest(model="gem", input=[1, 2, 3]))
    assert fake_gemini.requests == []


@pytest.mark.parametrize("body", [{"embeddings": [{"values": [0.1]}]}, {"embeddings": [{"nope": 1}] * 2}, {}])
async def test_embeddings_bad_answer(fake_gemini: FakeUpstream, ctx: ProviderContext, body: object) -> None:
    fake_gemini.queue(Reply(json=body))
    with pytest.raises(UpstreamBadResponseError):
        await provider(fake_gemini, ctx).embed(EmbeddingRequest(model="gem", input=["a", "b"]))


async def test_check(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    assert await provider(fake_gemini, ctx).check() == "ok"
    sent = fake_gemini.requests[-1]
    assert (sent.method, sent.path, sent.query) == ("GET", "/v1beta/models/gemini-fake-001", {})
    assert sent.headers["x-goog-api-key"] == KEY


async def test_check_failures(fake_gemini: FakeUpstream, ctx: ProviderContext) -> None:
    fake_gemini.queue(fmt.error(404, "models/gemini-fake-001 is not found"), Reply(json={"models": []}))
    p = provider(fake_gemini, ctx)
    with pytest.raises(UpstreamAuthError):
        await p.check()
    with pytest.raises(UpstreamBadResponseError):
        await p.check()


def test_fake_stream_is_valid_gemini_sse() -> None:
    """The fake frames events the way Google does, so the CRLF handling is exercised."""
    events = fmt.stream_events(["x"])
    assert events[0].endswith("\r\n\r\n")
    assert orjson.loads(events[0].removeprefix("data: "))["candidates"][0]["finishReason"] == "STOP"
