"""Spend never passes a budget because an answer was longer than estimated: every attempt goes upstream with a
``max_tokens`` its hold covers (a shorter answer when only that fits, 429 when not even a minimal one does); an
upstream that ignores ``max_tokens`` is charged in full and the requests after it are refused. A model without
a price is refused (403) to a caller with a budget. thinktank served on loopback in front of fake upstreams that
speak OpenAI's wire format; the budgets live in SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from thinktank.accounts.budgets import BudgetSpec
from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import Settings, parse_config
from thinktank.gateway.holds import capped
from thinktank.types import ChatRequest

from ..fakes import openai as wire
from ..fakes.server import serving
from ..fakes.upstream import FakeUpstream, Recorded, Reply, sse

ADMIN = "tt-test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PRICE = {"input_price": 0.0, "output_price": 1000.0}
"""USD per million tokens: 1,000 answer tokens cost $1, the prompt nothing."""
GREEDY_TOKENS = 2000


def answer(rec: Recorded) -> Reply:
    """``honest`` answers exactly as long as it may (``max_tokens`` per choice, else 5,000); ``greedy`` ignores
    ``max_tokens`` and always answers 2,000 tokens; anything else answers 8."""
    body = rec.json if isinstance(rec.json, dict) else {}
    model, n = body.get("model"), int(body.get("n") or 1)
    if model == "honest":
        tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 5000) * n
    elif model == "greedy":
        tokens = GREEDY_TOKENS
    else:
        tokens = 8
    if body.get("stream"):
        events = [wire.chunk({"role": "assistant", "content": ""}), wire.chunk({"content": "word " * 8}),
                  wire.chunk({}, "length"),
                  {"id": "chatcmpl-fake123", "object": "chat.completion.chunk", "created": 1700000000,
                   "model": model, "choices": [],
                   "usage": {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}}]
        return Reply(sse=sse(*events))
    return Reply(json=wire.completion("word " * 8, model=str(model), completion_tokens=tokens,
                                      finish_reason="length"))


def config(url: str, **extra: Any) -> dict[str, Any]:
    base = {"provider": "openai", "base_url": f"{url}/v1", "api_key": "x"}
    return {"models": [
        {"name": "honest", **base, **PRICE},
        {"name": "greedy", **base, **PRICE},
        {"name": "unpriced", **base, "model": "mystery-model-7b"},
        {"name": "mixed", "id": "mixed-unpriced", **base, "model": "mystery-model-7b"},
        {"name": "mixed", "id": "mixed-priced", **base, "model": "honest", **PRICE},
    ], **extra}


class Env:
    def __init__(self, url: str, app: ThinktankApp, upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
        self.url, self.app, self.upstream, self.http = url, app, upstream, http

    async def key(self, budget: float | None) -> tuple[str, dict[str, str]]:
        """A key (with a lifetime budget of ``budget`` USD): its id and headers."""
        body: dict[str, Any] = {"name": "k"}
        if budget is not None:
            body |= {"budget_usd": budget, "budget_period": "total"}
        r = await self.http.post(self.url + "/api/v1/keys", headers=AUTH, json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"], {"Authorization": f"Bearer {r.json()['key']}"}

    async def chat(self, headers: dict[str, str], model: str, **body: Any) -> httpx.Response:
        payload = {"model": model, "messages": [{"role": "user", "content": "Tell me everything."}], **body}
        return await self.http.post(self.url + "/v1/chat/completions", headers=headers, json=payload)

    async def spent(self, key_id: str, limit: float) -> float:
        """What the key's budget has spent (every process's writes and this one's not written yet)."""
        spent, _remaining, _available = await self.app.state.ledger.standing(
            BudgetSpec("key", key_id, limit, "total", "the key"))
        return spent

    def asked(self) -> list[dict[str, Any]]:
        """The chat bodies the upstream received, in order."""
        return [r.json for r in self.upstream.requests if r.path.endswith("/chat/completions")]


@asynccontextmanager
async def running(tmp_path: Path, make_config: Callable[[str], dict[str, Any]] = config) -> AsyncIterator[Env]:
    upstream = FakeUpstream(answer)
    await upstream.start()
    app = create_app(Settings(data_dir=tmp_path / "data", admin_key=ADMIN), parse_config(make_config(upstream.url)))
    try:
        async with serving(app) as url, httpx.AsyncClient(timeout=30) as http:
            yield Env(url, app, upstream, http)
    finally:
        await upstream.close()


def budget_refusal(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "budget_exceeded"


async def test_an_answer_without_max_tokens_is_capped_at_what_the_budget_holds(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        key_id, headers = await env.key(1.0)
        r = await env.chat(headers, "honest")  # the default 4,096 tokens ($4.10) do not fit: 1,000 ($1) do
        assert r.status_code == 200, r.text
        assert env.asked()[-1]["max_tokens"] == 1000
        assert r.json()["usage"]["completion_tokens"] == 1000
        assert await env.spent(key_id, 1.0) == pytest.approx(1.0)  # exactly the limit, never past it
        budget_refusal(await env.chat(headers, "honest"))  # not even a minimal answer fits now
        assert len(env.asked()) == 1


async def test_max_tokens_larger_than_the_budget_holds_is_lowered(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        key_id, headers = await env.key(1.0)
        r = await env.chat(headers, "honest", max_tokens=300)  # fits: goes as asked
        assert r.status_code == 200 and env.asked()[-1]["max_tokens"] == 300
        r = await env.chat(headers, "honest", max_tokens=5000, stream=True,  # $5 asked, $0.70 left: 700 tokens
                           stream_options={"include_usage": True})
        assert r.status_code == 200, r.text
        assert env.asked()[-1]["max_tokens"] == 700
        assert b'"completion_tokens":700' in r.content.replace(b" ", b"")
        assert await env.spent(key_id, 1.0) == pytest.approx(1.0)
        budget_refusal(await env.chat(headers, "honest", max_tokens=10))


async def test_several_choices_share_what_the_hold_covers(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        key_id, headers = await env.key(1.0)
        r = await env.chat(headers, "honest", n=2, max_completion_tokens=4000)
        assert r.status_code == 200, r.text
        assert env.asked()[-1]["max_completion_tokens"] == 500  # two answers of 500 tokens: $1
        assert "max_tokens" not in env.asked()[-1]
        assert await env.spent(key_id, 1.0) == pytest.approx(1.0)


async def test_a_caller_without_a_budget_is_not_capped(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        _key_id, headers = await env.key(None)
        for h in (headers, AUTH):
            r = await env.chat(h, "honest")
            assert r.status_code == 200, r.text
            assert "max_tokens" not in env.asked()[-1]
            assert r.json()["usage"]["completion_tokens"] == 5000


async def test_an_upstream_that_ignores_max_tokens_is_charged_and_then_refused(tmp_path: Path) -> None:
    """The safe choice: the money was spent upstream, so all of it is charged (the budget then shows more spent
    than its limit, by that one answer's excess), and no request is let in after it."""
    async with running(tmp_path) as env:
        key_id, headers = await env.key(1.0)
        r = await env.chat(headers, "greedy", max_tokens=100)  # held $0.10; the upstream answers $2 worth
        assert r.status_code == 200, r.text
        assert env.asked()[-1]["max_tokens"] == 100
        assert r.json()["usage"]["completion_tokens"] == GREEDY_TOKENS
        assert await env.spent(key_id, 1.0) == pytest.approx(2.0)
        for model in ("greedy", "honest"):
            budget_refusal(await env.chat(headers, model, max_tokens=1))
        assert len(env.asked()) == 1


async def test_a_model_without_a_price_is_refused_to_a_caller_with_a_budget(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        _key_id, budgeted = await env.key(5.0)
        r = await env.chat(budgeted, "unpriced", max_tokens=10)
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        assert error["code"] == "model_unpriced" and error["param"] == "model"
        assert "'unpriced'" in error["message"] and "mystery-model-7b" in error["message"]
        assert "input_price" in error["message"] and "pricing" in error["message"]
        assert env.asked() == []
        _key_id, free = await env.key(None)
        for h in (free, AUTH):  # callers without a budget still use it
            assert (await env.chat(h, "unpriced", max_tokens=10)).status_code == 200
        for _ in range(6):  # a group: the deployment with a price answers the budgeted caller
            r = await env.chat(budgeted, "mixed", max_tokens=10)
            assert r.status_code == 200, r.text
            assert r.headers["x-thinktank-deployment"] == "mixed-priced"


async def test_a_default_price_makes_an_unpriced_model_usable_with_a_budget(tmp_path: Path) -> None:
    def with_default(url: str) -> dict[str, Any]:
        return config(url, pricing={"default": {"input_price": 0.0, "output_price": 2000.0}},
                      rate_limits={"window": "sliding"})

    async with running(tmp_path, with_default) as env:
        key_id, headers = await env.key(1.0)
        r = await env.chat(headers, "unpriced", max_tokens=100)
        assert r.status_code == 200, r.text
        assert await env.spent(key_id, 1.0) == pytest.approx(8 * 2000 / 1e6)  # 8 tokens at the default price
        assert env.app.state.limiter.window == "sliding"  # and the other section of this config


def test_capped_lowers_the_limits_a_request_carries_or_adds_the_models_own() -> None:
    def request(**body: Any) -> ChatRequest:
        return ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], **body})

    class Reasoning:
        output_limit_field = "max_completion_tokens"

    plain = request()
    assert capped(plain, None, object()) is plain
    assert capped(plain, 100, object()).max_tokens == 100
    assert capped(plain, 100, Reasoning()).model_dump(exclude_none=True)["max_completion_tokens"] == 100
    small = request(max_tokens=50)
    assert capped(small, 100, object()) is small
    both = capped(request(max_tokens=500, max_completion_tokens=80), 100, object())
    assert (both.max_tokens, both.max_completion_tokens) == (100, 80)
    assert orjson.loads(plain.model_dump_json(exclude_none=True)).get("max_tokens") is None  # not changed
