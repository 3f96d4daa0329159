"""Streams: a completed streamed answer is kept (put together from its chunks) and a hit on a streamed request
is replayed as OpenAI chunks; a stream that breaks off, fails or loses its client keeps nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ..fakes import openai as fmt
from ..fakes.upstream import Reply, sse
from .conftest import ALLOW, Start, sse_objects, stream_text

STREAM = {"stream": True, "stream_options": {"include_usage": True}}


async def test_a_streamed_miss_is_kept_and_replayed_as_the_same_stream(cache_env: Start) -> None:
    env = await cache_env()
    env.upstream.queue(Reply(sse=fmt.stream_events(["Hello", " there", ",", " friend."], completion_tokens=4)))
    first = await env.chat(**STREAM)
    second = await env.chat(**STREAM)
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-thinktank-cache"], second.headers["x-thinktank-cache"]) == ("miss", "hit")
    assert second.headers["content-type"].startswith("text/event-stream")
    assert env.calls() == 1
    a, b = sse_objects(first.text), sse_objects(second.text)
    assert stream_text(a) == stream_text(b) == "Hello there, friend."
    assert all(c["object"] == "chat.completion.chunk" for c in b)
    assert [c["choices"][0]["finish_reason"] for c in b if c["choices"]][-1] == "stop"
    # the usage chunk comes last, as asked: the answer's tokens, no cost
    assert b[-1]["choices"] == [] and b[-1]["usage"]["completion_tokens"] == a[-1]["usage"]["completion_tokens"] == 4
    assert a[-1]["usage"]["cost"] > 0 and b[-1]["usage"]["cost"] == 0
    # without include_usage the replay has no usage chunk either
    plain = sse_objects((await env.chat(stream=True)).text)
    assert stream_text(plain) == "Hello there, friend." and all("usage" not in c for c in plain)
    # and a plain request gets the same answer as one body
    whole = await env.chat()
    assert whole.headers["x-thinktank-cache"] == "hit"
    assert whole.json()["choices"][0]["message"] == {"role": "assistant", "content": "Hello there, friend."}
    assert env.calls() == 1
    rows = await env.usage()
    assert [(r["stream"], r["cache_hit"]) for r in rows] == [(True, False), (True, True), (True, True),
                                                             (False, True)]


async def test_a_kept_answer_is_replayed_to_a_streamed_request(cache_env: Start) -> None:
    env = await cache_env()
    whole = await env.chat()
    replay = await env.chat(**STREAM)
    assert replay.headers["x-thinktank-cache"] == "hit" and env.calls() == 1
    chunks = sse_objects(replay.text)
    assert stream_text(chunks) == whole.json()["choices"][0]["message"]["content"] == "echo: hello"
    assert chunks[-1]["usage"]["prompt_tokens"] == whole.json()["usage"]["prompt_tokens"]


async def test_streamed_tool_calls_are_put_together(cache_env: Start) -> None:
    env = await cache_env()
    call = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]
    env.upstream.queue(Reply(sse=sse(
        fmt.chunk({"role": "assistant", "content": None, "tool_calls": call}),
        fmt.chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        fmt.chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        fmt.chunk({}, "tool_calls"),
    )))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    first = await env.chat(stream=True, tools=tools)
    assert first.status_code == 200
    whole = await env.chat(tools=tools)
    assert whole.headers["x-thinktank-cache"] == "hit" and env.calls() == 1
    choice = whole.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    replayed = sse_objects((await env.chat(stream=True, tools=tools)).text)
    deltas = [c["choices"][0]["delta"] for c in replayed if c["choices"]]
    assert deltas[0]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert deltas[0]["tool_calls"][0]["index"] == 0


@pytest.mark.parametrize("broken", [
    Reply(sse=fmt.stream_events(["a", "b", "c"]), drop_after=2),  # the upstream breaks off
    Reply(sse=sse(fmt.chunk({"role": "assistant", "content": "half"}))),  # ends without a finish reason
    Reply(sse=sse(fmt.chunk({"role": "assistant", "content": "no"}), fmt.chunk({}, "content_filter"))),
])
async def test_a_broken_stream_keeps_nothing(cache_env: Start, broken: Reply) -> None:
    env = await cache_env()
    env.upstream.queue(broken)
    await env.chat(stream=True)
    again = await env.chat(stream=True)
    assert again.headers["x-thinktank-cache"] == "miss" and env.calls() == 2
    assert stream_text(sse_objects(again.text)) == "echo:hello"


async def test_a_stream_whose_client_goes_away_keeps_nothing(cache_env: Start) -> None:
    env = await cache_env()
    gate = asyncio.Event()
    env.upstream.queue(Reply(sse=fmt.stream_events(["one", "two", "three"]), gate=gate))
    payload: dict[str, Any] = {"model": "gpt", "messages": [{"role": "user", "content": "hello"}], "stream": True}
    async with env.http.stream("POST", env.url + "/v1/chat/completions", headers=ALLOW, json=payload) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break  # the first chunk came: go away
    await asyncio.wait_for(env.upstream.cancel_event.wait(), 10)
    gate.set()
    again = await env.chat(stream=True)
    assert again.headers["x-thinktank-cache"] == "miss" and env.calls() == 2
