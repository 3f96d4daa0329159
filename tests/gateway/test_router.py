from __future__ import annotations

import base64
import email.utils
import json
import random
import struct
from collections import Counter
from typing import Any

import pytest

from thinktank.config import parse_config
from thinktank.errors import (
    ContextWindowExceededError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamBadRequestError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamRateLimitError,
    UpstreamServerError,
)
from thinktank.gateway.router import Router, UsageRecord
from thinktank.providers.base import ProviderContext
from thinktank.providers.mock import MockProvider
from thinktank.types import ChatRequest, EmbeddingRequest, Usage

from ..fakes import openai as fmt
from ..fakes.clock import FakeClock
from ..fakes.upstream import FakeUpstream, Reply, sse


def router(ctx: ProviderContext, cfg: dict[str, Any], seed: int = 1) -> Router:
    return Router(parse_config(cfg), ctx, rng=random.Random(seed))


def oa(name: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "provider": "openai", "model": "fake-model", "base_url": url + "/v1", "api_key": "sk-x", **kw}


def req(model: str = "m", text: str = "hi", **kw: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": model, "messages": [{"role": "user", "content": text}], **kw})


async def test_retries_5xx_with_jittered_backoff(fake_openai: FakeUpstream, ctx: ProviderContext,
                                                 clock: FakeClock) -> None:
    fake_openai.queue(fmt.error(503, "busy"), fmt.error(500, "boom"))
    r = router(ctx, {"models": [oa("m", fake_openai.url)], "router": {"backoff_base": 1, "num_retries": 2}})
    resp = await r.complete(req())
    assert resp.choices[0].message.content == "echo: hi"
    assert len(fake_openai.requests) == 3
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 1 and 0 <= clock.sleeps[1] <= 2


async def test_gives_up_after_num_retries(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(*[fmt.error(500, "boom")] * 5)
    r = router(ctx, {"models": [oa("m", fake_openai.url)], "router": {"num_retries": 2}})
    with pytest.raises(UpstreamServerError):
        await r.complete(req())
    assert len(fake_openai.requests) == 3


async def test_honours_retry_after_seconds_and_date(fake_openai: FakeUpstream, ctx: ProviderContext,
                                                    clock: FakeClock) -> None:
    date = email.utils.formatdate(clock.time() + 12, usegmt=True)
    fake_openai.queue(fmt.error(429, "slow", headers={"retry-after": "7"}),
                      fmt.error(429, "slow", headers={"retry-after": date}))
    r = router(ctx, {"models": [oa("m", fake_openai.url)]})
    await r.complete(req())
    assert clock.sleeps[0] == 7
    assert clock.sleeps[1] == pytest.approx(12 - 7, abs=1)  # the date is 12 s after the first 429


async def test_retry_after_is_capped(fake_openai: FakeUpstream, ctx: ProviderContext, clock: FakeClock) -> None:
    fake_openai.queue(fmt.error(429, "slow", headers={"retry-after": "600"}))
    r = router(ctx, {"models": [oa("m", fake_openai.url)], "router": {"retry_after_max": 20, "deadline": 100}})
    await r.complete(req())
    assert clock.sleeps == [20]


async def test_retry_after_beyond_deadline_gives_up_with_429(fake_openai: FakeUpstream, ctx: ProviderContext,
                                                             clock: FakeClock) -> None:
    fake_openai.queue(fmt.error(429, "slow", headers={"retry-after": "50"}))
    r = router(ctx, {"models": [oa("m", fake_openai.url)], "router": {"deadline": 30}})
    with pytest.raises(UpstreamRateLimitError) as info:
        await r.complete(req())
    assert info.value.headers() == {"Retry-After": "50"}
    assert clock.sleeps == []


async def test_client_errors_are_not_retried(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(fmt.error(400, "bad temperature"))
    r = router(ctx, {"models": [oa("m", fake_openai.url), oa("m", fake_openai.url)],
                     "groups": [{"name": "m", "fallbacks": ["other"]}],
                     "aliases": {"other": "m"}})
    with pytest.raises(UpstreamBadRequestError):
        await r.complete(req())
    assert len(fake_openai.requests) == 1


async def test_connection_refused_is_retried_then_falls_back(fake_openai: FakeUpstream,
                                                             ctx: ProviderContext) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    r = router(ctx, {"models": [oa("primary", dead), oa("backup", fake_openai.url)],
                     "groups": [{"name": "primary", "fallbacks": ["backup"]}],
                     "router": {"num_retries": 1}})
    resp = await r.complete(req("primary"))
    assert resp.served_by == "backup"
    assert len(fake_openai.requests) == 1


async def test_connection_refused_everywhere(ctx: ProviderContext) -> None:
    r = router(ctx, {"models": [oa("m", "http://127.0.0.1:9")], "router": {"num_retries": 1}})
    with pytest.raises(UpstreamConnectionError):
        await r.complete(req())


async def test_per_try_timeout_then_retry(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(Reply(hang=True))
    r = router(ctx, {"models": [oa("m", fake_openai.url, timeout=0.2)], "router": {"backoff_base": 0}})
    resp = await r.complete(req())
    assert resp.choices[0].message.content == "echo: hi"
    assert len(fake_openai.requests) == 2


async def test_overall_deadline_includes_retries(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(Reply(hang=True), Reply(hang=True), Reply(hang=True))
    r = router(ctx, {"models": [oa("m", fake_openai.url)], "router": {"timeout": 5, "deadline": 0.3}})
    with pytest.raises(DeadlineExceededError):
        await r.complete(req())
    assert len(fake_openai.requests) == 1


async def test_ordered_fallbacks(ctx: ProviderContext) -> None:
    cfg = {"models": [
        {"name": "a", "provider": "mock", "options": {"fail_first": 99, "fail_status": 500}},
        {"name": "b", "provider": "mock", "options": {"fail_first": 99, "fail_status": 503}},
        {"name": "c", "provider": "mock", "options": {"replies": ["from c"]}},
    ], "groups": [{"name": "a", "fallbacks": ["b", "c"]}], "router": {"num_retries": 1}}
    r = router(ctx, cfg)
    resp = await r.complete(req("a"))
    assert resp.choices[0].message.content == "from c"
    calls = {d.id: d.model.calls for d in r.deployments if isinstance(d.model, MockProvider)}
    assert calls == {"a": 2, "b": 2, "c": 1}


async def test_context_window_fallback_before_sending(ctx: ProviderContext) -> None:
    cfg = {"models": [
        {"name": "small", "provider": "mock", "context_window": 50, "options": {"replies": ["small"]}},
        {"name": "large", "provider": "mock", "context_window": 100000, "options": {"replies": ["large"]}},
    ], "groups": [{"name": "small", "context_window_fallbacks": ["large"]}]}
    r = router(ctx, cfg)
    assert (await r.complete(req("small", "short"))).choices[0].message.content == "small"
    long = "word " * 400
    assert (await r.complete(req("small", long))).choices[0].message.content == "large"
    with pytest.raises(ContextWindowExceededError, match="largest context window"):
        await r.complete(req("large", "x" * 500_000))


async def test_context_window_error_from_upstream_goes_to_fallback(fake_openai: FakeUpstream,
                                                                   ctx: ProviderContext) -> None:
    fake_openai.queue(fmt.error(400, "This model's maximum context length is 8192 tokens",
                                code="context_length_exceeded"))
    cfg = {"models": [oa("small", fake_openai.url),
                      {"name": "large", "provider": "mock", "options": {"replies": ["large"]}}],
           "groups": [{"name": "small", "context_window_fallbacks": ["large"]}]}
    resp = await router(ctx, cfg).complete(req("small"))
    assert resp.choices[0].message.content == "large"
    assert len(fake_openai.requests) == 1


async def test_cooldown_skips_then_recovers(ctx: ProviderContext, clock: FakeClock) -> None:
    cfg = {"models": [
        {"name": "m", "id": "bad", "provider": "mock", "options": {"fail_first": 2, "fail_status": 500}},
        {"name": "m", "id": "good", "provider": "mock"},
    ], "router": {"allowed_fails": 2, "cooldown": 60, "num_retries": 3}}
    r = router(ctx, cfg)
    bad = next(d for d in r.deployments if d.id == "bad")
    for _ in range(12):
        await r.complete(req())
        if r.cooldowns.cooling("bad"):
            break
    assert r.cooldowns.cooling("bad")
    calls = bad.model.calls  # type: ignore[attr-defined]
    for _ in range(10):
        assert (await r.complete(req())).served_by == "good"
    assert bad.model.calls == calls  # type: ignore[attr-defined]
    clock.advance(61)
    served = Counter([(await r.complete(req())).served_by for _ in range(20)])
    assert served["bad"] > 0  # back in rotation after the cooldown


async def test_cooldown_never_ejects_every_deployment(ctx: ProviderContext, clock: FakeClock) -> None:
    cfg = {"models": [{"name": "m", "provider": "mock", "options": {"fail_first": 4, "fail_status": 500}}],
           "router": {"allowed_fails": 1, "cooldown": 600, "num_retries": 0}}
    r = router(ctx, cfg)
    for _ in range(4):
        with pytest.raises(UpstreamServerError):
            await r.complete(req())
    assert r.cooldowns.cooling("m")
    assert (await r.complete(req())).served_by == "m"


async def test_weighted_strategy_follows_weights(ctx: ProviderContext) -> None:
    cfg = {"models": [{"name": "m", "id": "heavy", "provider": "mock", "weight": 3},
                      {"name": "m", "id": "light", "provider": "mock", "weight": 1}]}
    r = router(ctx, cfg, seed=42)
    served = Counter([(await r.complete(req())).served_by for _ in range(400)])
    assert 250 < served["heavy"] < 350 and served["heavy"] + served["light"] == 400


async def test_least_busy_and_lowest_latency_and_cheapest(ctx: ProviderContext) -> None:
    cfg = {"models": [
        {"name": "m", "id": "a", "provider": "mock", "input_price": 5, "output_price": 5},
        {"name": "m", "id": "b", "provider": "mock", "input_price": 1, "output_price": 1, "context_window": 100},
    ], "groups": [{"name": "busy", "models": ["m"], "strategy": "least_busy"},
                  {"name": "fast", "models": ["m"], "strategy": "lowest_latency"},
                  {"name": "cheap", "models": ["m"], "strategy": "cheapest"}]}
    r = router(ctx, cfg)
    a, b = r.deployments
    a.stats.in_flight = 3
    assert (await r.complete(req("busy"))).served_by == "b"
    a.stats.in_flight, b.stats.in_flight = 0, 5
    assert (await r.complete(req("busy"))).served_by == "a"
    b.stats.in_flight = 0
    a.stats.latency, b.stats.latency = 0.5, 2.0
    assert (await r.complete(req("fast"))).served_by == "a"
    assert (await r.complete(req("cheap"))).served_by == "b"
    # the cheap one does not fit a long request: the cheapest that fits wins
    assert (await r.complete(req("cheap", "word " * 200))).served_by == "a"


async def test_cost_from_config_price_and_observers(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    records: list[UsageRecord] = []
    r = Router(parse_config({"models": [oa("m", fake_openai.url, input_price=1000, output_price=2000)]}), ctx,
               observers=[records.append])
    resp = await r.complete(req())
    assert resp.usage is not None
    assert resp.usage.cost == pytest.approx((12 * 1000 + 8 * 2000) / 1e6)
    assert records[0].cost == resp.usage.cost and records[0].deployment == "m" and records[0].attempts == 1


async def test_cost_from_shipped_price_table(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    cfg = {"models": [{"name": "m", "provider": "openai", "model": "gpt-4o-2024-08-06",
                       "base_url": fake_openai.url + "/v1", "api_key": "k"}]}
    resp = await router(ctx, cfg).complete(req())
    assert resp.usage is not None and resp.usage.cost == pytest.approx((12 * 2.5 + 8 * 10) / 1e6)


async def test_stream_retries_before_first_chunk_and_costs(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(fmt.error(502, "bad gateway"))
    r = router(ctx, {"models": [oa("m", fake_openai.url, input_price=1, output_price=1)]})
    chunks = [c async for c in r.stream(req(stream=True))]
    assert len(fake_openai.requests) == 2
    assert chunks[-1].usage is not None and chunks[-1].usage.cost == pytest.approx((12 + 2) / 1e6)


async def test_stream_without_upstream_usage_is_estimated(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(Reply(sse=fmt.stream_events(["Hello", " world"], usage=False)))
    r = router(ctx, {"models": [oa("m", fake_openai.url, input_price=1, output_price=1)]})
    chunks = [c async for c in r.stream(req(stream=True))]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 3 and usage.prompt_tokens > 0 and usage.cost


async def test_stream_without_any_chunk_is_a_bad_response(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(Reply(sse=["data: [DONE]\n\n"]))
    r = router(ctx, {"models": [oa("m", fake_openai.url)]})
    with pytest.raises(UpstreamBadResponseError, match="without sending anything"):
        async for _ in r.stream(req(stream=True)):
            pass


async def test_stream_without_any_chunk_falls_back(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    records: list[UsageRecord] = []
    fake_openai.queue(Reply(sse=["data: [DONE]\n\n"]))
    cfg = {"models": [oa("a", fake_openai.url), oa("b", fake_openai.url)],
           "groups": [{"name": "a", "fallbacks": ["b"]}]}
    r = Router(parse_config(cfg), ctx, observers=[records.append])
    chunks = [c async for c in r.stream(req("a", stream=True))]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo:hi"
    assert len(fake_openai.requests) == 2
    assert [rec.deployment for rec in records] == ["b"]


def usage_chunk(prompt: int, completion: int, *, choices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-fake123", "object": "chat.completion.chunk", "created": 1700000000, "model": "fake-model",
            "choices": choices or [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


#: Usage reported twice: on a content chunk as it goes (continuous usage stats), then at the end.
RUNNING = [fmt.chunk({"role": "assistant", "content": ""}),
           usage_chunk(12, 1, choices=fmt.chunk({"content": "Hello"})["choices"]),
           fmt.chunk({"content": " world"}), fmt.chunk({}, "stop"), usage_chunk(12, 3)]
#: The same usage chunk sent twice (a proxy that repeats it).
REPEATED = [fmt.chunk({"role": "assistant", "content": "Hello world"}), fmt.chunk({}, "stop"),
            usage_chunk(12, 3), usage_chunk(12, 3)]
#: The prompt count first, the completion count last.
SPLIT = [fmt.chunk({"role": "assistant", "content": "Hello world"}), usage_chunk(12, 0), fmt.chunk({}, "stop"),
         usage_chunk(0, 3)]


@pytest.mark.parametrize("events", [RUNNING, REPEATED, SPLIT])
async def test_stream_usage_reported_twice_is_accounted_once(fake_openai: FakeUpstream, ctx: ProviderContext,
                                                             events: list[dict[str, Any]]) -> None:
    from thinktank.gateway.context import CallContext

    fake_openai.queue(Reply(sse=sse(*events)))
    records: list[UsageRecord] = []
    r = Router(parse_config({"models": [oa("m", fake_openai.url, input_price=1000, output_price=2000)]}), ctx,
               observers=[records.append])
    meter = RecordingMeter()
    chunks = [c async for c in r.stream(req(stream=True), CallContext(meter=meter))]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    with_usage = [c for c in chunks if c.usage is not None]
    assert with_usage == [chunks[-1]] and chunks[-1].choices == []  # one usage, in the last chunk
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (12, 3, 15)
    cost = (12 * 1000 + 3 * 2000) / 1e6
    assert usage.cost == pytest.approx(cost)
    assert [(rec.prompt_tokens, rec.completion_tokens) for rec in records] == [(12, 3)]
    assert records[0].cost == pytest.approx(cost)
    assert [k for k, _, _ in meter.events] == ["reserve", "settle"] and meter.events[-1][2] == pytest.approx(cost)


async def test_stream_without_usage_and_without_budget_is_recorded_once(fake_openai: FakeUpstream,
                                                                        ctx: ProviderContext) -> None:
    fake_openai.queue(Reply(sse=fmt.stream_events(["Hello", " world"], usage=False)))
    records: list[UsageRecord] = []
    r = Router(parse_config({"models": [oa("m", fake_openai.url, input_price=1, output_price=1)]}), ctx,
               observers=[records.append])
    chunks = [c async for c in r.stream(req(stream=True))]
    assert len(records) == 1 and chunks[-1].usage is not None
    assert chunks[-1].usage.cost == records[0].cost


async def test_stream_idle_timeout_midway(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(Reply(sse=fmt.stream_events(["a", "b"]), chunk_delay=5))
    r = router(ctx, {"models": [oa("m", fake_openai.url, timeout=0.3)]})
    got = []
    with pytest.raises(Exception, match="stopped sending"):
        async for c in r.stream(req(stream=True)):
            got.append(c)
    assert len(got) == 1


def emb(name: str, url: str) -> dict[str, Any]:
    return oa(name, url, mode="embedding", input_price=1)


async def test_embeddings_come_back_in_input_order(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    answer = fmt.embeddings({"model": "fake-model", "input": ["a", "b", "c"]})
    answer["data"].reverse()  # an upstream may answer in any order; each carries its index
    fake_openai.queue(Reply(json=answer))
    resp = await router(ctx, {"models": [emb("e", fake_openai.url)]}).embed(
        EmbeddingRequest(model="e", input=["a", "b", "c"]))
    assert [d.index for d in resp.data] == [0, 1, 2]
    assert [d.embedding for d in resp.data] == [fmt.embedding_vector(i) for i in range(3)]


@pytest.mark.parametrize("indexes", [[0], [0, 1, 2], [0, 0], [1, 2]])
async def test_embeddings_not_one_per_input_are_a_bad_response(fake_openai: FakeUpstream, ctx: ProviderContext,
                                                               indexes: list[int]) -> None:
    data = [{"object": "embedding", "index": i, "embedding": [0.5]} for i in indexes]
    fake_openai.queue(Reply(json={"object": "list", "model": "fake-model", "data": data}))
    with pytest.raises(UpstreamBadResponseError, match="embeddings for 2 inputs"):
        await router(ctx, {"models": [emb("e", fake_openai.url)]}).embed(EmbeddingRequest(model="e", input=["a", "b"]))


async def test_embeddings_in_base64_when_the_upstream_sends_floats(fake_openai: FakeUpstream,
                                                                   ctx: ProviderContext) -> None:
    # An OpenAI-compatible server that ignores encoding_format answers floats: encoded here.
    fake_openai.queue(Reply(json=fmt.embeddings({"model": "fake-model", "input": ["a", "b"]}, base64_ok=False)))
    resp = await router(ctx, {"models": [emb("e", fake_openai.url)]}).embed(
        EmbeddingRequest(model="e", input=["a", "b"], encoding_format="base64"))
    assert fake_openai.requests[-1].json["encoding_format"] == "base64"
    for i, d in enumerate(resp.data):
        assert isinstance(d.embedding, str)
        assert struct.unpack("<3f", base64.b64decode(d.embedding)) == pytest.approx(fmt.embedding_vector(i))


async def test_embeddings_of_token_ids_count_the_ids(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    fake_openai.queue(Reply(json={**fmt.embeddings({"model": "fake-model", "input": [[1, 2]]}), "usage": {}}))
    resp = await router(ctx, {"models": [emb("e", fake_openai.url)]}).embed(
        EmbeddingRequest(model="e", input=[[1, 2, 3, 4, 5, 6, 7]]))
    assert resp.usage.cost == pytest.approx(7 / 1e6)  # the upstream reported none: 7 ids, 7 tokens


async def test_embeddings_of_token_ids_on_a_text_only_model(ctx: ProviderContext) -> None:
    r = router(ctx, {"models": [{"name": "e", "provider": "mock", "mode": "embedding"}]})
    with pytest.raises(InvalidRequestError, match="cannot take token ids"):
        await r.embed(EmbeddingRequest(model="e", input=[[1, 2, 3]]))


async def test_unknown_model(ctx: ProviderContext) -> None:
    r = router(ctx, {"models": [{"name": "m", "provider": "mock"}]})
    with pytest.raises(ModelNotFoundError, match="GET /v1/models"):
        await r.complete(req("nope"))


async def test_alias_and_models_listing(ctx: ProviderContext) -> None:
    r = router(ctx, {"models": [{"name": "m", "provider": "mock"}], "groups": [{"name": "g", "models": ["m"]}],
                     "aliases": {"fast": "g"}})
    assert (await r.complete(req("fast"))).served_by == "m"
    assert [(m.id, m.kind) for m in r.models()] == [("m", "model"), ("g", "group"), ("fast", "alias")]


class RecordingMeter:
    """A meter that records what the router holds, settles and releases."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []

    async def reserve(self, deployment: Any, prompt_tokens: int, output_tokens: int | None, choices: int = 1) -> Any:
        meter, dep = self, deployment.id
        meter.events.append(("reserve", dep, 0.0))

        class Hold:
            output_tokens = None

            async def settle(self, cost: float) -> None:
                meter.events.append(("settle", dep, cost))

            async def release(self) -> None:
                meter.events.append(("release", dep, 0.0))

        return Hold()


async def test_retries_and_fallbacks_release_their_holds_and_charge_once(ctx: ProviderContext) -> None:
    from thinktank.gateway.context import CallContext

    cfg = {"models": [
        {"name": "a", "provider": "mock", "input_price": 1, "options": {"fail_first": 99, "fail_status": 500}},
        {"name": "b", "provider": "mock", "input_price": 1, "options": {"replies": ["from b"]}},
    ], "groups": [{"name": "a", "fallbacks": ["b"]}], "router": {"num_retries": 1}}
    meter = RecordingMeter()
    call = CallContext(meter=meter)
    resp = await router(ctx, cfg).complete(req("a"), call)
    assert resp.choices[0].message.content == "from b"
    kinds = [(k, d) for k, d, _ in meter.events]
    assert kinds == [("reserve", "a"), ("release", "a"), ("reserve", "a"), ("release", "a"),
                     ("reserve", "b"), ("settle", "b")]
    assert meter.events[-1][2] == resp.usage.cost if resp.usage else False
    assert len(call.records) == 1 and call.records[0].deployment == "b"


async def test_a_stream_cut_short_settles_what_was_produced(ctx: ProviderContext) -> None:
    from thinktank.gateway.context import CallContext

    cfg = {"models": [{"name": "m", "provider": "mock", "input_price": 1000, "output_price": 1000,
                       "options": {"replies": ["one two three four five six"]}}]}
    meter = RecordingMeter()
    stream = router(ctx, cfg).stream(req("m", stream=True), CallContext(meter=meter))
    first = await anext(aiter(stream))
    assert first.choices[0].delta.content == "one"
    await stream.aclose()  # the client went away
    assert [k for k, _, _ in meter.events] == ["reserve", "settle"]
    assert meter.events[-1][2] > 0  # the prompt and the words produced, never the whole hold twice


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_an_upstream_reports_is_bounded(fake_openai: FakeUpstream, ctx: ProviderContext,
                                                    stream: bool) -> None:
    """A negative count would credit budgets; one past 2**53 is more than a usage row holds: both are bounded.
    (Past 64 bits the answer is not read at all: an upstream bad-response error.)"""
    body = fmt.completion("hi", prompt_tokens=-5_000_000, completion_tokens=2**60)
    if stream:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
                 "usage": body["usage"]}
        fake_openai.queue(Reply(sse=[f"data: {json.dumps(chunk)}\n\n", "data: [DONE]\n\n"]))
    else:
        fake_openai.queue(Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"}))
    records: list[UsageRecord] = []
    r = router(ctx, {"models": [oa("m", fake_openai.url, input_price=1, output_price=2)]})
    r.observers.append(records.append)
    usage: Usage | None
    if stream:
        usage = [c.usage async for c in r.stream(req(stream=True)) if c.usage is not None][-1]
    else:
        usage = (await r.complete(req())).usage
    assert usage is not None
    assert usage.prompt_tokens == 0 and usage.completion_tokens == 2**53 - 1
    assert usage.total_tokens == 2**53 - 1 and usage.cost is not None and usage.cost >= 0
    [record] = records
    assert record.prompt_tokens == 0 and record.completion_tokens == 2**53 - 1 and record.cost == usage.cost
