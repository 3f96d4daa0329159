"""Model health: cooldowns, failures in a row and the last errors of each deployment, after real failures of a
fake upstream on loopback; error messages never carry a secret."""

from __future__ import annotations

import random
from typing import Any

import pytest

from thinktank.config import parse_config
from thinktank.errors import UpstreamRateLimitError, UpstreamServerError
from thinktank.gateway.health import MESSAGE_CHARS, scrub_message
from thinktank.gateway.router import Router
from thinktank.providers.base import ProviderContext
from thinktank.types import ChatRequest

from ..fakes import openai as fmt
from ..fakes.clock import FakeClock
from ..fakes.upstream import FakeUpstream

LEAKY = ("Incorrect API key provided: sk-abc123def456ghi789jkl012mno345 for "
         "https://admin:hunter2pass@upstream.example/v1?key=AIzaSyA1234567890abcdefghijk "
         "(Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig)")
SECRET_BITS = ("sk-abc123", "abc123def456", "hunter2", "AIzaSy", "1234567890abcdef", "eyJhbGci", "payload.sig")


def req(model: str = "m") -> ChatRequest:
    return ChatRequest.model_validate({"model": model, "messages": [{"role": "user", "content": "hi"}]})


def build(ctx: ProviderContext, url: str, **router: Any) -> Router:
    cfg = {
        "models": [
            {"name": "m", "id": "flaky", "provider": "openai", "model": "x", "base_url": url + "/v1",
             "api_key": "sk-configured-key-000000000000"},
            {"name": "other", "provider": "mock"},
        ],
        "groups": [{"name": "team", "models": ["m", "other"]}],
        "router": {"num_retries": 0, "allowed_fails": 2, "cooldown": 30, **router},
    }
    return Router(parse_config(cfg), ctx, rng=random.Random(1))


async def test_failures_cooldown_and_recovery(fake_openai: FakeUpstream, ctx: ProviderContext,
                                              clock: FakeClock) -> None:
    r = build(ctx, fake_openai.url)
    snap = {d["id"]: d for d in r.health_snapshot()}
    assert snap["flaky"] == {
        "id": "flaky", "model": "m", "groups": ["team"], "provider": "openai", "status": "ok", "cooling_down": False,
        "cooldown_remaining_s": 0.0, "consecutive_failures": 0, "in_flight": 0, "avg_latency_ms": None,
        "recent_errors": [],
    }
    assert snap["other"]["provider"] == "mock" and snap["other"]["groups"] == ["team"]

    fake_openai.queue(fmt.error(500, LEAKY, type_="server_error"))
    with pytest.raises(UpstreamServerError):
        await r.complete(req())
    flaky = r.health_snapshot()[0]
    assert (flaky["status"], flaky["consecutive_failures"], flaky["cooling_down"]) == ("failing", 1, False)
    [first] = flaky["recent_errors"]
    assert (first["status"], first["kind"], first["ts"]) == (500, "UpstreamServerError", clock.time())
    assert first["message"].startswith("upstream flaky answered 500: ")
    for bit in SECRET_BITS:
        assert bit not in str(flaky), bit
    assert len(first["message"]) <= MESSAGE_CHARS

    clock.advance(5)
    fake_openai.queue(fmt.error(429, "slow down", headers={"Retry-After": "40"}))
    with pytest.raises(UpstreamRateLimitError):
        await r.complete(req())
    flaky = r.health_snapshot()[0]
    assert (flaky["status"], flaky["consecutive_failures"], flaky["cooling_down"]) == ("cooling_down", 2, True)
    assert flaky["cooldown_remaining_s"] == 40.0  # the upstream's Retry-After, longer than the 30 s configured
    assert [(e["status"], e["kind"]) for e in flaky["recent_errors"]] == [
        (429, "UpstreamRateLimitError"), (500, "UpstreamServerError")]  # newest first
    clock.advance(15)
    assert r.health_snapshot()[0]["cooldown_remaining_s"] == 25.0

    clock.advance(25)
    await r.complete(req())  # the fake answers: a success ends the run of failures
    flaky = r.health_snapshot()[0]
    assert (flaky["status"], flaky["consecutive_failures"], flaky["cooling_down"]) == ("ok", 0, False)
    assert flaky["avg_latency_ms"] is not None
    assert len(flaky["recent_errors"]) == 2  # the history stays


async def test_only_the_last_few_errors_are_kept(fake_openai: FakeUpstream, ctx: ProviderContext) -> None:
    r = build(ctx, fake_openai.url, allowed_fails=100)
    for i in range(8):
        fake_openai.queue(fmt.error(503, f"overloaded #{i}"))
        with pytest.raises(UpstreamServerError):
            await r.complete(req())
    flaky = r.health_snapshot()[0]
    assert flaky["consecutive_failures"] == 8
    assert [e["message"][-2:] for e in flaky["recent_errors"]] == ["#7", "#6", "#5", "#4", "#3"]


def test_cooldown_again_after_one_more_failure(clock: FakeClock) -> None:
    from thinktank.gateway.health import Cooldowns

    c = Cooldowns(clock, allowed_fails=3, cooldown=10)
    assert [c.failure("d") for _ in range(3)] == [False, False, True]
    clock.advance(11)
    assert not c.cooling("d") and c.failures("d") == 3
    assert c.failure("d") and c.cooling("d") and c.failures("d") == 4  # one more is enough
    c.success("d")
    assert c.failures("d") == 0 and not c.cooling("d")


@pytest.mark.parametrize("text", [
    "key sk-proj-AbCdEf0123456789 was refused", "Authorization: Bearer abc.def.ghi", "bearer tt-0123456789abcdef",
    "see https://user:pa55word@host/x", "GET /v1?api_key=s3cr3tvalue&x=1", "token=abcdefgh", "password: swordfish",
    "AIzaSyD-0123456789abcdefghij", "opaque 0f9e8d7c6b5a49382716af9e8d7c6b5a4938 blob",
])
def test_scrub_removes_secrets(text: str) -> None:
    out = scrub_message(text)
    for bit in ("AbCdEf", "abc.def", "0123456789ab", "pa55word", "s3cr3t", "abcdefgh", "swordfish", "0f9e8d7c"):
        assert bit not in out, out
    assert "***" in out


def test_scrub_keeps_plain_messages_and_shortens() -> None:
    assert scrub_message("upstream m answered 503: The server is overloaded.\n Try later") == (
        "upstream m answered 503: The server is overloaded. Try later")
    long = scrub_message("word " * 100)
    assert len(long) == MESSAGE_CHARS and long.endswith("…")
