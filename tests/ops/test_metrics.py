"""``/metrics`` after real requests over loopback to a fake upstream: what it counts equals what the usage
table recorded, and refusals, failures, cooldowns, fallbacks, streams, runs and the run cache are counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from thinktank.api.app import ThinktankApp, create_app
from thinktank.config import Settings, parse_config
from thinktank.store.tables import UsageRow

from ..fakes import openai as openai_fmt
from ..fakes.server import serving
from ..fakes.upstream import FakeUpstream, Recorded, Reply
from .scrape import Scrape, parse

ADMIN = "tt-test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def handler(rec: Recorded) -> Reply:
    body = rec.json if isinstance(rec.json, dict) else {}
    if body.get("model") == "down":
        return Reply(status=500, json={"error": {"message": "upstream is down"}})
    return openai_fmt.default_handler(rec)


def config(url: str) -> dict[str, Any]:
    def model(name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "provider": "openai", "base_url": url + "/v1", "api_key": "sk-x", **extra}

    return {
        # "free" and "down" cost nothing (a price of 0: a model without any price is refused to a key with a budget)
        "models": [model("priced", input_price=2.5, output_price=10), model("free", input_price=0, output_price=0),
                   model("down", input_price=0, output_price=0)],
        "groups": [{"name": "safe", "models": ["down"], "fallbacks": ["priced"]}],
        "router": {"num_retries": 0, "allowed_fails": 1, "cooldown": 60},
        "ensembles": [{"name": "pair", "members": ["priced", "free"], "strategy": "heuristic"}],
    }


@dataclass
class Env:
    url: str
    app: ThinktankApp
    upstream: FakeUpstream
    http: httpx.AsyncClient

    async def key(self, **fields: Any) -> str:
        r = await self.http.post(self.url + "/api/v1/keys", headers=AUTH, json={"name": "k", **fields})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    async def chat(self, key: str, model: str, content: str = "hello there", **extra: Any) -> httpx.Response:
        return await self.http.post(self.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                    json={"model": model, "messages": [{"role": "user", "content": content}], **extra})

    async def stream(self, key: str, model: str) -> list[str]:
        body = {"model": model, "messages": [{"role": "user", "content": "stream me please"}], "stream": True,
                "stream_options": {"include_usage": True}}
        async with self.http.stream("POST", self.url + "/v1/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status_code == 200
            return [line async for line in r.aiter_lines() if line.startswith("data: ")]

    async def scrape(self) -> Scrape:
        r = await self.http.get(self.url + "/metrics", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse(r.text)


@pytest.fixture
async def env(tmp_path: Path, db_url: str) -> AsyncIterator[Env]:
    upstream = FakeUpstream(handler)
    await upstream.start()
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN, database_url=db_url)
    app = create_app(settings, parse_config(config(upstream.url)))
    try:
        async with serving(app) as url, httpx.AsyncClient(timeout=30) as http:
            yield Env(url, app, upstream, http)
    finally:
        await upstream.close()


async def usage_rows(app: ThinktankApp) -> list[UsageRow]:
    await app.state.usage_writer.flush()
    async with app.state.db.session() as s:
        return list((await s.execute(select(UsageRow))).scalars().all())


async def test_counts_equal_the_usage_rows(env: Env) -> None:
    key = await env.key(budget_usd=1000, budget_period="day", rpm=10_000)
    for i in range(5):
        assert (await env.chat(key, "priced", f"question {i}")).status_code == 200
    for _ in range(2):
        assert (await env.chat(key, "free")).status_code == 200
    for _ in range(3):
        lines = await env.stream(key, "priced")
        assert lines[-1] == "data: [DONE]"
    assert (await env.chat(key, "down")).status_code == 502  # fails, and starts a cooldown (allowed_fails 1)
    fell_back = await env.chat(key, "safe")  # 'down' again (the only one), then its fallback
    assert fell_back.status_code == 200 and fell_back.headers["x-thinktank-deployment"] == "priced"
    assert (await env.chat(key, "nope")).status_code == 404  # never admitted: in no count, and no label

    rows = await usage_rows(env.app)
    m = await env.scrape()
    by_model_status = Counter((r.model, str(r.status)) for r in rows)
    assert by_model_status == {("priced", "200"): 8, ("free", "200"): 2, ("down", "502"): 1, ("safe", "200"): 1}
    for (model, status), n in by_model_status.items():
        assert m.value("thinktank_requests_total", model=model, status=status) == n
    assert m.value("thinktank_requests_total") == len(rows)
    assert m.value("thinktank_request_duration_seconds_count") == len(rows)
    assert m.value("thinktank_requests_total", model="safe", deployment="priced") == 1
    assert m.value("thinktank_requests_total", model="down", deployment="none") == 1
    assert m.value("thinktank_tokens_total", type="input") == sum(r.prompt_tokens for r in rows) > 0
    assert m.value("thinktank_tokens_total", type="output") == sum(r.completion_tokens for r in rows) > 0
    for model in ("priced", "free", "safe"):
        mine = [r for r in rows if r.model == model]
        assert m.value("thinktank_tokens_total", model=model, type="input") == sum(r.prompt_tokens for r in mine)
        assert m.value("thinktank_cost_usd_total", model=model) == pytest.approx(sum(r.cost_usd for r in mine))
    assert m.value("thinktank_cost_usd_total", model="priced") > 0
    assert m.value("thinktank_cost_usd_total", model="free") == 0
    # Streams: one time to first token each; the other requests have none.
    assert m.value("thinktank_time_to_first_token_seconds_count", model="priced") == 3
    assert m.value("thinktank_time_to_first_token_seconds_count") == 3
    # The upstream side: every answer timed, every failed attempt counted, each one a cooldown here.
    assert m.value("thinktank_upstream_duration_seconds_count", deployment="priced") == 9
    down_calls = sum(1 for r in env.upstream.requests if isinstance(r.json, dict) and r.json.get("model") == "down")
    assert down_calls == 2
    assert m.value("thinktank_upstream_failures_total", deployment="down", reason="server_error") == down_calls
    assert m.value("thinktank_upstream_cooldowns_total", deployment="down") == down_calls
    until = m.value("thinktank_upstream_cooldown_until_timestamp_seconds", deployment="down")
    assert until > env.app.state.clock.time()
    assert m.value("thinktank_fallbacks_total", model="safe", fallback="priced") == 1
    # Labels come from the configuration only.
    assert m.label_values("thinktank_requests_total", "model") <= {"priced", "free", "down", "safe"}
    assert "nope" not in m.text
    # The key's budget, read at scrape time: it spent in its period.
    assert m.value("thinktank_budgets_active", scope="key") == 1
    assert m.value("thinktank_budget_limit_usd", scope="key") == 1000
    spent = sum(r.cost_usd for r in rows)
    assert 1000 - spent - 0.01 <= m.value("thinktank_budget_remaining_usd", scope="key") <= 1000


async def test_refusals_are_counted_by_reason(env: Env) -> None:
    limited = await env.key(rpm=1)
    assert (await env.chat(limited, "free")).status_code == 200
    refused = await env.chat(limited, "free")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    too_large = await env.key(tpm=10)
    refused = await env.chat(too_large, "free", "x" * 400)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "request_too_large"
    poor = await env.key(budget_usd=0.000001, budget_period="day")
    refused = await env.chat(poor, "priced")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert (await env.chat(poor, "free")).status_code == 200  # it costs nothing: no hold, no refusal
    capped = await env.http.post(env.url + "/api/v1/ensembles", headers=AUTH, json={
        "ensemble": "pair", "question": "q", "max_cost_usd": 0.0000001})
    assert capped.status_code == 429 and capped.json()["error"]["code"] == "budget_exceeded"

    m = await env.scrape()
    assert m.value("thinktank_refusals_total", reason="rate_limit", scope="key") == 1
    assert m.value("thinktank_refusals_total", reason="request_too_large", scope="key") == 1
    assert m.value("thinktank_refusals_total", reason="budget", scope="key") == 1
    assert m.value("thinktank_refusals_total", reason="budget", scope="run") >= 1  # the run's own cap
    # A rate-limit refusal is never admitted (no usage row); a budget refusal is, with its 429.
    rows = await usage_rows(env.app)
    assert m.value("thinktank_requests_total", status="429") == sum(r.status == 429 for r in rows) >= 1
    assert m.value("thinktank_runs_total", kind="ensemble", status="budget_exceeded") == 1
    assert m.value("thinktank_run_duration_seconds_count", kind="ensemble") == 1


async def test_runs_and_the_run_cache(env: Env) -> None:
    body = {"ensemble": "pair", "question": "cache me", "cache": True}
    first = await env.http.post(env.url + "/api/v1/ensembles", headers=AUTH, json=body)
    second = await env.http.post(env.url + "/api/v1/ensembles", headers=AUTH, json=body)
    assert second.json()["cached_from"] == first.json()["id"]
    chat = await env.chat(ADMIN, "ensemble/pair", "through the OpenAI endpoint")
    assert chat.status_code == 200

    m = await env.scrape()
    assert m.value("thinktank_cache_misses_total", model="ensemble/pair", kind="run") == 1
    assert m.value("thinktank_cache_hits_total", model="ensemble/pair", kind="run") == 1
    assert m.value("thinktank_runs_total", kind="ensemble", status="completed") == 2  # the cache hit ran nothing
    assert m.value("thinktank_run_duration_seconds_count", kind="ensemble") == 2
    # Each member's answer is accounted to the public model asked for, by the deployment that gave it.
    assert m.value("thinktank_tokens_total", model="ensemble/pair", deployment="priced", type="input") > 0
    assert m.value("thinktank_tokens_total", model="ensemble/pair", deployment="free", type="input") > 0


async def test_a_metrics_sink_that_is_off_costs_nothing_and_serves_nothing(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data", admin_key=ADMIN, metrics=False),
                     parse_config({"models": [{"name": "m", "provider": "mock"}]}))
    assert not app.state.metrics.enabled and app.state.metrics_endpoint is None
    async with serving(app) as url, httpx.AsyncClient() as http:
        assert (await http.post(url + "/v1/chat/completions", headers=AUTH, json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}]})).status_code == 200
        r = await http.get(url + "/metrics", headers=AUTH)
        assert r.status_code == 404


async def test_ingestion_counts_documents_and_chunks(env: Env) -> None:
    kbs = env.url + "/api/v1/knowledge-bases"
    r = await env.http.post(kbs, headers=AUTH, json={"name": "notes", "embedding_model": "free"})
    assert r.status_code == 201, r.text
    docs = [{"name": "a.md", "text": "# Tea\n\n" + "Green tea is steeped briefly. " * 60},
            {"name": "b.md", "text": "Coffee is brewed hot."}]
    first = await env.http.post(kbs + "/notes/documents", headers=AUTH, json={"documents": docs})
    again = await env.http.post(kbs + "/notes/documents", headers=AUTH, json={"documents": docs[:1]})
    assert first.status_code == 201 and again.status_code == 200, (first.text, again.text)
    results = first.json()["data"] + again.json()["data"]
    assert [d["status"] for d in results] == ["added", "added", "unchanged"]

    m = await env.scrape()
    assert m.value("thinktank_ingested_documents_total", status="added") == 2
    assert m.value("thinktank_ingested_documents_total", status="unchanged") == 1
    written = sum(d["chunks"] for d in first.json()["data"])
    assert written >= 3
    assert m.value("thinktank_ingested_chunks_total") == written
    # The embeddings were requests through the gate too, by the embedding model.
    assert m.value("thinktank_requests_total", model="free", status="200") >= 1


async def test_response_cache_hits_and_misses(env: Env) -> None:
    """The response cache's lookups are counted: a miss (kind ``response``), then exact hits, which are also
    requests at no cost."""
    allow = {"x-thinktank-cache": "allow"}
    key = await env.key()
    answers = []
    for _ in range(3):
        r = await env.http.post(env.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}", **allow},
                                json={"model": "priced", "messages": [{"role": "user", "content": "cache this"}]})
        assert r.status_code == 200, r.text
        answers.append(r.headers["x-thinktank-cache"])
    assert answers == ["miss", "hit", "hit"]
    m = await env.scrape()
    assert m.value("thinktank_cache_misses_total", model="priced", kind="response") == 1
    assert m.value("thinktank_cache_hits_total", model="priced", kind="exact") == 2
    assert m.value("thinktank_requests_total", model="priced", deployment="priced", status="200") >= 1
