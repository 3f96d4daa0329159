from __future__ import annotations

import asyncio
import base64
import logging
import struct
from typing import Any

import httpx
import openai
import orjson
import pytest

from thinktank.accounts.budget_backends import BudgetSpec
from thinktank.api.app import create_app
from thinktank.config import Settings, parse_config

from ..fakes import openai as fmt
from ..fakes.server import serving
from ..fakes.upstream import FakeUpstream, Reply, sse
from .conftest import ADMIN, AUTH, Start

CANARY = "sk-canary-provider-key-XYZZY"


def cfg(url: str, **kw: Any) -> dict[str, Any]:
    return {"models": [{"name": "gpt", "provider": "openai", "model": "fake-model", "base_url": url + "/v1",
                        "api_key": CANARY, "input_price": 1, "output_price": 2, **kw}]}


BODY = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}


async def test_openai_sdk_non_streaming(gateway: Start, fake_openai: FakeUpstream) -> None:
    url = await gateway(cfg(fake_openai.url))
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0)
    raw = await sdk.chat.completions.with_raw_response.create(
        model="gpt", messages=[{"role": "user", "content": "hello"}], temperature=0.3
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "echo: hello"
    assert resp.usage is not None and resp.usage.prompt_tokens == 12
    cost = (12 * 1 + 8 * 2) / 1e6
    assert float(raw.headers["x-thinktank-cost-usd"]) == pytest.approx(cost)
    assert resp.model_dump()["usage"]["cost"] == pytest.approx(cost)
    assert raw.headers["x-thinktank-deployment"] == "gpt"
    # the upstream got thinktank's key, not the client's
    assert fake_openai.requests[-1].headers["Authorization"] == f"Bearer {CANARY}"
    assert fake_openai.requests[-1].json["temperature"] == 0.3


async def test_openai_sdk_streaming_with_usage(gateway: Start, fake_openai: FakeUpstream) -> None:
    url = await gateway(cfg(fake_openai.url))
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0)
    stream = await sdk.chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "a b c"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo:abc"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].model_dump()["usage"]["cost"] == pytest.approx((12 + 4 * 2) / 1e6)


async def test_stream_wire_format_without_usage(gateway: Start, fake_openai: FakeUpstream,
                                                client: httpx.AsyncClient) -> None:
    url = await gateway(cfg(fake_openai.url))
    resp = await client.post(url + "/v1/chat/completions", headers=AUTH, json={**BODY, "stream": True})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    objs = [orjson.loads(e[6:]) for e in events[:-1]]
    assert all(o["object"] == "chat.completion.chunk" and "usage" not in o for o in objs)
    assert all("finish_reason" in o["choices"][0] for o in objs)
    assert objs[-1]["choices"][0]["finish_reason"] == "stop"


async def test_chunks_are_forwarded_as_they_arrive(gateway: Start, fake_openai: FakeUpstream,
                                                   client: httpx.AsyncClient) -> None:
    gate = asyncio.Event()
    fake_openai.queue(Reply(sse=fmt.stream_events(["first", "second"]), gate=gate))
    url = await gateway(cfg(fake_openai.url))
    async with client.stream("POST", url + "/v1/chat/completions", headers=AUTH,
                             json={**BODY, "stream": True}) as resp:
        lines = resp.aiter_lines()
        first = await asyncio.wait_for(anext(lines), 5)  # arrives while the upstream is still held
        assert first.startswith("data: ") and '"role":"assistant"' in first
        gate.set()
        rest = [line async for line in lines]
    assert "data: [DONE]" in rest


async def test_client_disconnect_cancels_upstream(gateway: Start, fake_openai: FakeUpstream) -> None:
    never = asyncio.Event()
    fake_openai.queue(Reply(sse=fmt.stream_events(["first", "second"]), gate=never))
    url = await gateway(cfg(fake_openai.url))
    async with httpx.AsyncClient(timeout=10) as c, c.stream(
        "POST", url + "/v1/chat/completions", headers=AUTH, json={**BODY, "stream": True}
    ) as resp:
        await anext(resp.aiter_lines())
    # the client is gone: thinktank must drop the upstream request
    await asyncio.wait_for(fake_openai.cancel_event.wait(), 5)
    assert fake_openai.cancelled == 1


async def test_stream_error_before_first_chunk_is_a_json_error(gateway: Start, fake_openai: FakeUpstream,
                                                               client: httpx.AsyncClient) -> None:
    fake_openai.queue(*[fmt.error(500, "boom")] * 3)
    url = await gateway(cfg(fake_openai.url), )
    resp = await client.post(url + "/v1/chat/completions", headers=AUTH, json={**BODY, "stream": True})
    assert resp.status_code == 502
    assert resp.json()["error"]["type"] == "upstream_error"


async def test_stream_error_midway_is_an_error_event(gateway: Start, fake_openai: FakeUpstream,
                                                     client: httpx.AsyncClient) -> None:
    fake_openai.queue(Reply(sse=fmt.stream_events(["a", "b", "c"]), drop_after=2))
    url = await gateway(cfg(fake_openai.url))
    resp = await client.post(url + "/v1/chat/completions", headers=AUTH, json={**BODY, "stream": True})
    events = [e for e in resp.text.split("\n\n") if e]
    assert '"error"' in events[-2] and events[-1] == "data: [DONE]"


async def test_models_endpoint(gateway: Start, fake_openai: FakeUpstream, client: httpx.AsyncClient) -> None:
    url = await gateway(cfg(fake_openai.url))
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0)
    models = [m.id async for m in sdk.models.list()]
    assert models == ["gpt"]
    assert (await sdk.models.retrieve("gpt")).id == "gpt"
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("nope/not-here")


async def test_embeddings_endpoint(gateway: Start, fake_openai: FakeUpstream) -> None:
    url = await gateway({"models": [{"name": "emb", "provider": "openai", "model": "text-embedding-3-small",
                                     "base_url": fake_openai.url + "/v1", "api_key": "k", "mode": "embedding"}]})
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0)
    resp = await sdk.embeddings.create(model="emb", input=["x", "y"])
    assert len(resp.data) == 2 and resp.data[1].index == 1
    assert fake_openai.requests[-1].json["model"] == "text-embedding-3-small"


async def test_health_and_ready(gateway: Start, client: httpx.AsyncClient) -> None:
    url = await gateway({"models": []})
    assert (await client.get(url + "/health")).json() == {"status": "ok"}
    ready = (await client.get(url + "/ready")).json()
    assert ready["status"] == "ready" and ready["models"] == 0 and "--demo" in ready["hint"]


async def test_provider_key_never_leaks(gateway: Start, fake_openai: FakeUpstream, client: httpx.AsyncClient,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake_openai.queue(fmt.error(401, f"Incorrect API key provided: {CANARY}"),
                      fmt.error(400, f"bad request for key {CANARY}"),
                      Reply(body=f"<html>{CANARY}</html>".encode()))
    url = await gateway(cfg(fake_openai.url))
    for _ in range(3):
        resp = await client.post(url + "/v1/chat/completions", headers=AUTH, json=BODY)
        assert resp.status_code >= 400
        assert CANARY not in resp.text
    assert CANARY not in caplog.text


async def test_fragments_of_provider_secrets_never_leak(gateway: Start, fake_openai: FakeUpstream,
                                                        client: httpx.AsyncClient,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    org = "org-Hk29sPq7Lm3Xv0Nw"
    fake_openai.queue(
        fmt.error(400, f"Incorrect API key provided: {CANARY[:20]}********"),
        fmt.error(429, f"Rate limit reached for organization {org[:12]}... on key ...{CANARY[-8:]}"),
        Reply(sse=sse(fmt.chunk({"role": "assistant", "content": "a"}),
                      {"error": {"message": f"key {CANARY[3:15]} was revoked", "type": "server_error"}})),
    )
    url = await gateway({**cfg(fake_openai.url, headers={"OpenAI-Organization": org}), "router": {"num_retries": 0}})
    texts = [(await client.post(url + "/v1/chat/completions", headers=AUTH, json=body)).text
             for body in (BODY, BODY, {**BODY, "stream": True})]
    # (this canary is not random: "provided" shares a run with its "provider" and is starred out too)
    assert "Incorrect API key" in texts[0] and "Rate limit reached" in texts[1] and "was revoked" in texts[2]
    for secret in (CANARY, org):
        for text in [*texts, caplog.text]:
            assert not any(secret[i:i + 6] in text for i in range(len(secret) - 5)), text


async def test_stream_answered_with_a_json_completion(gateway: Start, fake_openai: FakeUpstream,
                                                      client: httpx.AsyncClient) -> None:
    # An OpenAI-compatible server that ignores stream=true: the client still gets a proper stream.
    fake_openai.queue(Reply(json=fmt.completion("whole answer", prompt_tokens=10, completion_tokens=2)))
    url = await gateway(cfg(fake_openai.url))
    resp = await client.post(url + "/v1/chat/completions", headers=AUTH,
                             json={**BODY, "stream": True, "stream_options": {"include_usage": True}})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    objs = [orjson.loads(e[6:]) for e in events[:-1]]
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": "whole answer"}
    assert objs[1]["choices"][0]["finish_reason"] == "stop"
    assert objs[-1]["choices"] == []
    assert objs[-1]["usage"]["prompt_tokens"] == 10 and objs[-1]["usage"]["completion_tokens"] == 2
    assert objs[-1]["usage"]["cost"] == pytest.approx((10 * 1 + 2 * 2) / 1e6)


async def test_stream_answered_with_garbage_is_an_error_not_an_empty_200(
    gateway: Start, fake_openai: FakeUpstream, client: httpx.AsyncClient
) -> None:
    fake_openai.queue(Reply(json={"unexpected": True}))
    url = await gateway(cfg(fake_openai.url))
    resp = await client.post(url + "/v1/chat/completions", headers=AUTH, json={**BODY, "stream": True})
    assert resp.status_code == 502
    assert resp.json()["error"]["type"] == "upstream_error" and "stream request" in resp.json()["error"]["message"]
    usage = (await client.get(url + "/api/v1/usage", headers=AUTH)).json()["data"]
    assert usage[0]["requests"] == 1 and usage[0]["errors"] == 1  # counted as the failure it is


async def test_stream_with_no_chunk_at_all_is_an_error(gateway: Start, fake_openai: FakeUpstream,
                                                       client: httpx.AsyncClient) -> None:
    fake_openai.queue(Reply(sse=["data: [DONE]\n\n"]))
    url = await gateway(cfg(fake_openai.url))
    resp = await client.post(url + "/v1/chat/completions", headers=AUTH, json={**BODY, "stream": True})
    assert resp.status_code == 502 and "without sending anything" in resp.json()["error"]["message"]


def emb_cfg(url: str) -> dict[str, Any]:
    return {"models": [
        {"name": "emb", "provider": "openai", "model": "text-embedding-3-small", "base_url": url + "/v1",
         "api_key": "k", "mode": "embedding"},
        {"name": "demo-emb", "provider": "mock", "mode": "embedding", "options": {"embedding_dimensions": 4}},
    ]}


@pytest.mark.parametrize("model", ["emb", "demo-emb"])
async def test_embeddings_with_the_openai_sdk_defaults(gateway: Start, fake_openai: FakeUpstream, model: str) -> None:
    # The SDK asks for base64 unless told otherwise, and decodes it: little-endian float32.
    url = await gateway(emb_cfg(fake_openai.url))
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0)
    floats = await sdk.embeddings.create(model=model, input=["x", "y"], encoding_format="float")
    decoded = await sdk.embeddings.create(model=model, input=["x", "y"])
    assert [d.index for d in decoded.data] == [0, 1]
    for f, d in zip(floats.data, decoded.data, strict=True):
        assert d.embedding == pytest.approx(f.embedding, rel=1e-6)
    raw = await sdk.embeddings.create(model=model, input=["x", "y"], encoding_format="base64")
    for f, r in zip(floats.data, raw.data, strict=True):
        assert isinstance(r.embedding, str)  # asked for explicitly: the SDK hands the string over
        values = struct.unpack(f"<{len(f.embedding)}f", base64.b64decode(r.embedding))
        assert values == pytest.approx(f.embedding, rel=1e-6)
    if model == "emb":
        assert [r.json.get("encoding_format") for r in fake_openai.requests] == ["float", "base64", "base64"]
        assert floats.data[1].embedding == pytest.approx([0.2, 0.2, 0.3])


async def test_embeddings_base64_from_an_upstream_that_sends_floats(gateway: Start, fake_openai: FakeUpstream,
                                                                    client: httpx.AsyncClient) -> None:
    fake_openai.queue(Reply(json=fmt.embeddings({"model": "m", "input": ["a", "b"]}, base64_ok=False)))
    url = await gateway(emb_cfg(fake_openai.url))
    resp = await client.post(url + "/v1/embeddings", headers=AUTH,
                             json={"model": "emb", "input": ["a", "b"], "encoding_format": "base64"})
    assert resp.status_code == 200
    data = resp.json()["data"]
    for i, d in enumerate(data):
        assert struct.unpack("<3f", base64.b64decode(d["embedding"])) == pytest.approx(fmt.embedding_vector(i))


@pytest.mark.parametrize(("tokens", "count"), [([[1, 2, 3]], 1), ([1, 2, 3], 1), ([[1, 2], [3, 4], [5]], 3)])
async def test_embeddings_of_token_ids(gateway: Start, fake_openai: FakeUpstream, client: httpx.AsyncClient,
                                       tokens: list[Any], count: int) -> None:
    # What LangChain's OpenAIEmbeddings sends by default.
    url = await gateway(emb_cfg(fake_openai.url))
    resp = await client.post(url + "/v1/embeddings", headers=AUTH, json={"model": "emb", "input": tokens})
    assert resp.status_code == 200, resp.text
    assert fake_openai.requests[-1].json["input"] == tokens  # forwarded as they came
    assert [d["index"] for d in resp.json()["data"]] == list(range(count))
    assert [d["embedding"] for d in resp.json()["data"]] == [fmt.embedding_vector(i) for i in range(count)]
    refused = await client.post(url + "/v1/embeddings", headers=AUTH, json={"model": "demo-emb", "input": tokens})
    assert refused.status_code == 400  # never 200 with no embeddings
    err = refused.json()["error"]
    assert "cannot take token ids" in err["message"] and err["param"] == "input"


async def test_stream_usage_reported_twice_is_one_figure_everywhere(settings: Settings, fake_openai: FakeUpstream,
                                                                   client: httpx.AsyncClient) -> None:
    # The upstream reports usage as it goes and again at the end: the client, the usage record and the
    # key's budget must all show the last figure, counted once.
    def usage(prompt: int, completion: int, choices: list[Any]) -> dict[str, Any]:
        return {**fmt.chunk({}), "choices": choices,
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}}

    fake_openai.queue(Reply(sse=sse(
        fmt.chunk({"role": "assistant", "content": ""}),
        usage(12, 1, fmt.chunk({"content": "Hello"})["choices"]),
        fmt.chunk({"content": " world"}), fmt.chunk({}, "stop"), usage(12, 3, []),
    )))
    app = create_app(settings, parse_config(cfg(fake_openai.url, input_price=1000, output_price=2000)))
    async with serving(app) as url:
        key = await client.post(url + "/api/v1/keys", headers=AUTH,
                                json={"name": "metered", "budget_usd": 1.0, "budget_period": "day"})
        assert key.status_code == 201, key.text
        resp = await client.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key.json()['key']}"},
                                 json={**BODY, "stream": True, "stream_options": {"include_usage": True},
                                       "max_tokens": 10})
        assert resp.status_code == 200, resp.text
        objs = [orjson.loads(e[6:]) for e in resp.text.split("\n\n") if e and e != "data: [DONE]"]
        told = [o["usage"] for o in objs if "usage" in o]
        assert len(told) == 1 and objs[-1]["usage"] is told[0] and objs[-1]["choices"] == []
        cost = (12 * 1000 + 3 * 2000) / 1e6
        assert (told[0]["prompt_tokens"], told[0]["completion_tokens"], told[0]["total_tokens"]) == (12, 3, 15)
        assert told[0]["cost"] == pytest.approx(cost)
        # (a stream's headers go out before its cost is known: the figure is in the usage chunk)
        rows = (await client.get(url + "/api/v1/usage", headers=AUTH, params={"group_by": "key"})).json()["data"]
        assert [(r["group"], r["requests"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
            (key.json()["id"], 1, 12, 3)]
        assert rows[0]["cost_usd"] == pytest.approx(cost)
        spec = BudgetSpec("key", key.json()["id"], 1.0, "day", "key 'metered'")
        assert 1.0 - await app.state.ledger.remaining(spec) == pytest.approx(cost)
