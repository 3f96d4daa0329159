"""Every client mistake gets a clear error in OpenAI's shape with the right status, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ..fakes.upstream import FakeUpstream, Reply
from .conftest import AUTH, Start

BODY = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}


def cfg(url: str) -> dict[str, Any]:
    return {"models": [{"name": "gpt", "provider": "openai", "model": "fake-model", "base_url": url + "/v1",
                        "api_key": "sk-x", "timeout": 0.5}],
            "router": {"num_retries": 0, "deadline": 2}}


@pytest.fixture
async def url(gateway: Start, fake_openai: FakeUpstream) -> str:
    return str(await gateway(cfg(fake_openai.url), max_body_bytes=4096))


def assert_error(resp: httpx.Response, status: int, contains: str = "") -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert contains.lower() in err["message"].lower()
    return err


@pytest.mark.parametrize(
    ("content", "status", "contains"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "JSON object"),
        (b'"text"', 400, "JSON object"),
        (b'{"model": "gpt"}', 400, "messages"),
        (b'{"model": "gpt", "messages": []}', 400, "messages"),
        (b'{"model": "gpt", "messages": "hi"}', 400, "messages"),
        (b'{"model": "gpt", "messages": [{"content": "hi"}]}', 400, "role"),
        (b'{"model": "gpt", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "role"),
        (b'{"model": "gpt", "messages": [{"role": "user", "content": 42}]}', 400, "content"),
        (b'{"model": "gpt", "messages": [{"role": "user", "content": [{"text": "x"}]}]}', 400, "type"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (b'{"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}', 400, "temperature"),
        (b'{"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', 400, "max_tokens"),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "does not exist"),
    ],
)
async def test_malformed_requests(url: str, client: httpx.AsyncClient, content: bytes, status: int,
                                  contains: str, fake_openai: FakeUpstream) -> None:
    resp = await client.post(url + "/v1/chat/completions", headers={**AUTH, "content-type": "application/json"},
                             content=content)
    assert_error(resp, status, contains)
    assert fake_openai.requests == []


@pytest.mark.parametrize(
    "extra",
    [
        {"api_base": "http://evil.example/v1"},
        {"base_url": "http://evil.example/v1"},
        {"api_key": "sk-attacker"},
        {"extra_body": {"api_key": "sk-attacker"}},
        {"metadata": {"nested": [{"base_url": "http://169.254.169.254/"}]}},
        {"messages": [{"role": "user", "content": "hi", "api_base": "http://evil.example"}]},
    ],
)
async def test_upstream_url_or_key_in_body_is_refused(url: str, client: httpx.AsyncClient, extra: dict[str, Any],
                                                      fake_openai: FakeUpstream) -> None:
    resp = await client.post(url + "/v1/chat/completions", headers=AUTH, json={**BODY, **extra})
    err = assert_error(resp, 400, "not accepted")
    assert err["code"] == "forbidden_parameter"
    assert fake_openai.requests == []


async def test_tool_schema_may_name_a_property_api_key(url: str, client: httpx.AsyncClient,
                                                       fake_openai: FakeUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "login", "parameters": {
        "type": "object", "properties": {"api_key": {"type": "string"}, "base_url": {"type": "string"}}}}}]
    resp = await client.post(url + "/v1/chat/completions", headers=AUTH, json={**BODY, "tools": tools})
    assert resp.status_code == 200
    assert fake_openai.requests[-1].json["tools"] == tools


async def test_body_over_the_limit(url: str, client: httpx.AsyncClient, fake_openai: FakeUpstream) -> None:
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert_error(await client.post(url + "/v1/chat/completions", headers=AUTH, json=big), 413, "limit")

    async def chunked() -> Any:  # no content-length: the limit still holds while reading
        for _ in range(10):
            yield b"x" * 1000

    resp = await client.post(url + "/v1/chat/completions", headers=AUTH, content=chunked())
    assert_error(resp, 413, "limit")
    assert fake_openai.requests == []
    # the limit holds for every route, not only the OpenAI ones
    assert_error(await client.post(url + "/api/v1/anything", headers=AUTH, content=b"x" * 10_000), 413, "limit")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"},
     {"Authorization": "Bearer ' OR 1=1 --"}, {"x-api-key": "nope"}],
)
async def test_authentication_required(url: str, client: httpx.AsyncClient, headers: dict[str, str],
                                       fake_openai: FakeUpstream) -> None:
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        resp = await client.post(url + path, headers=headers, json=BODY)
        assert_error(resp, 401)
    assert_error(await client.get(url + "/v1/models", headers=headers), 401)
    assert fake_openai.requests == []


async def test_x_api_key_header_works(url: str, client: httpx.AsyncClient) -> None:
    resp = await client.post(url + "/v1/chat/completions", headers={"x-api-key": AUTH["Authorization"][7:]},
                             json=BODY)
    assert resp.status_code == 200


async def test_upstream_garbage_is_502(url: str, client: httpx.AsyncClient, fake_openai: FakeUpstream) -> None:
    fake_openai.queue(Reply(body=b"\x00\xffnot json at all"))
    assert_error(await client.post(url + "/v1/chat/completions", headers=AUTH, json=BODY), 502, "not JSON")


async def test_upstream_hang_is_504(url: str, client: httpx.AsyncClient, fake_openai: FakeUpstream) -> None:
    fake_openai.queue(Reply(hang=True))
    err = assert_error(await client.post(url + "/v1/chat/completions", headers=AUTH, json=BODY), 504)
    assert err["type"] == "timeout_error"


async def test_upstream_rate_limit_passes_retry_after(url: str, client: httpx.AsyncClient,
                                                      fake_openai: FakeUpstream) -> None:
    fake_openai.queue(Reply(status=429, json={"error": {"message": "slow down"}}, headers={"retry-after": "30"}))
    resp = await client.post(url + "/v1/chat/completions", headers=AUTH, json=BODY)
    assert_error(resp, 429)
    assert resp.headers["retry-after"] == "30"


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, "1"),  # the upstream said nothing: a default, never a 429 without Retry-After
    ({"retry-after-ms": "2500"}, "3"),
    ({"retry-after": "0"}, "1"),
    ({"retry-after": "4.2"}, "5"),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_every_429_carries_retry_after(url: str, client: httpx.AsyncClient, fake_openai: FakeUpstream,
                                             headers: dict[str, str], expected: str, stream: bool) -> None:
    fake_openai.queue(Reply(status=429, json={"error": {"message": "slow down"}}, headers=headers))
    resp = await client.post(url + "/v1/chat/completions", headers=AUTH, json={**BODY, "stream": stream})
    assert_error(resp, 429, "slow down")
    assert resp.headers["retry-after"] == expected


async def test_upstream_rate_limit_with_an_http_date(url: str, client: httpx.AsyncClient,
                                                     fake_openai: FakeUpstream) -> None:
    import email.utils
    import time

    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    fake_openai.queue(Reply(status=429, json={"error": {"message": "slow down"}}, headers={"retry-after": when}))
    resp = await client.post(url + "/v1/chat/completions", headers=AUTH, json=BODY)
    assert_error(resp, 429)
    assert 15 <= int(resp.headers["retry-after"]) <= 21


async def test_wrong_method_and_unknown_path(url: str, client: httpx.AsyncClient) -> None:
    resp = await client.get(url + "/v1/chat/completions", headers=AUTH)
    assert_error(resp, 405)
    assert resp.headers["allow"] == "POST"
    assert_error(await client.get(url + "/v1/nothing-here", headers=AUTH), 404)


async def test_embeddings_bad_input(url: str, client: httpx.AsyncClient) -> None:
    assert_error(await client.post(url + "/v1/embeddings", headers=AUTH, json={"model": "gpt", "input": []}),
                 400, "empty")
    assert_error(await client.post(url + "/v1/embeddings", headers=AUTH, json={"model": "gpt"}), 400, "input")


async def test_chunked_body_over_the_limit_on_an_api_route(url: str, client: httpx.AsyncClient) -> None:
    async def chunked() -> Any:
        for _ in range(10):
            yield b"x" * 1000

    resp = await client.post(url + "/api/v1/keys", headers={**AUTH, "content-type": "application/json"},
                             content=chunked())
    assert_error(resp, 413, "limit")
