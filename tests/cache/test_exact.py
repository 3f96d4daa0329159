"""The exact cache over real HTTP: the second identical request does not reach the upstream; anything that
changes the answer, another tenant, an error or an expired entry does."""

from __future__ import annotations

import pytest

from thinktank.accounts.budget_backends import BudgetSpec

from ..fakes import openai as fmt
from ..fakes.upstream import Reply
from .conftest import ALLOW, AUTH, OffsetClock, Start


async def test_a_second_identical_request_is_served_from_the_cache(cache_env: Start) -> None:
    env = await cache_env()
    first = await env.chat(temperature=0.2)
    second = await env.chat(temperature=0.2)
    assert first.status_code == second.status_code == 200, first.text
    assert env.calls() == 1, "the hit did not reach the upstream"
    assert (first.headers["x-thinktank-cache"], second.headers["x-thinktank-cache"]) == ("miss", "hit")
    assert second.headers["x-thinktank-cache-match"] == "exact" and int(second.headers["age"]) >= 0
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["choices"][0]["message"]["content"] == "echo: hello"
    # the hit costs nothing; the usage it reports is the answer's, its cost zero
    assert float(first.headers["x-thinktank-cost-usd"]) > 0
    assert float(second.headers["x-thinktank-cost-usd"]) == 0 and second.json()["usage"]["cost"] == 0
    assert second.json()["usage"]["prompt_tokens"] == first.json()["usage"]["prompt_tokens"]
    assert second.headers["x-thinktank-deployment"] == "gpt"


@pytest.mark.parametrize("change", [
    {"temperature": 0.3}, {"top_p": 0.5}, {"max_tokens": 7}, {"seed": 1}, {"stop": ["x"]}, {"n": 2},
    {"response_format": {"type": "json_object"}}, {"model": "mini"},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    {"frequency_penalty": 0.5}, {"logit_bias": {"50256": -100}},
])
async def test_what_changes_the_answer_is_a_miss(cache_env: Start, change: dict[str, object]) -> None:
    env = await cache_env()
    assert (await env.chat(temperature=0.2)).status_code == 200
    changed = await env.chat(**{"temperature": 0.2, **change})
    assert changed.status_code == 200, changed.text
    assert changed.headers["x-thinktank-cache"] == "miss" and env.calls() == 2


async def test_what_does_not_change_the_answer_is_a_hit(cache_env: Start) -> None:
    env = await cache_env()
    await env.chat(temperature=0)
    again = await env.chat(temperature=0, user="someone-else", stream_options=None, metadata={"a": "b"})
    assert again.headers["x-thinktank-cache"] == "hit" and env.calls() == 1


async def test_tenants_never_share_answers(cache_env: Start) -> None:
    env = await cache_env()
    alice, bob = await env.user("alice@example.com"), await env.user("bob@example.com")
    for who in (alice, bob, AUTH):
        r = await env.chat({**who, "x-thinktank-cache": "allow"})
        assert r.headers["x-thinktank-cache"] == "miss", "no answer crosses tenants"
    assert env.calls() == 3
    # each tenant's own answer is theirs: a key of alice's shares her space, not the admin key's
    _, alice_key = await env.key(alice)
    assert (await env.chat({**alice_key, "x-thinktank-cache": "allow"})).headers["x-thinktank-cache"] == "hit"
    _, admin_made_key = await env.key(AUTH)
    r = await env.chat({**admin_made_key, "x-thinktank-cache": "allow"})
    assert r.headers["x-thinktank-cache"] == "miss", "the admin key's space is its own"
    assert env.calls() == 4


async def test_hits_are_recorded_at_zero_cost_and_leave_budgets_alone(cache_env: Start) -> None:
    env = await cache_env()
    alice = await env.user("alice@example.com")
    key_id, key = await env.key(alice, budget_usd=1.0, budget_period="day")
    spec = BudgetSpec("key", key_id, 1.0, "day", "key 'k'")
    ledger = env.app.state.ledger
    miss = await env.chat({**key, "x-thinktank-cache": "allow"}, max_tokens=20)
    spent = 1.0 - await ledger.remaining(spec)
    assert spent == pytest.approx(float(miss.headers["x-thinktank-cost-usd"])) and spent > 0
    for _ in range(3):
        hit = await env.chat({**key, "x-thinktank-cache": "allow"}, max_tokens=20)
        assert hit.headers["x-thinktank-cache"] == "hit"
    assert 1.0 - await ledger.remaining(spec) == pytest.approx(spent), "a hit spends nothing"
    rows = [r for r in await env.usage() if r["key_id"] == key_id]
    assert [r["cache_hit"] for r in rows] == [False, True, True, True]
    assert rows[0]["cost_usd"] > 0 and rows[0]["prompt_tokens"] > 0
    assert all(r["cost_usd"] == 0 and r["prompt_tokens"] == r["completion_tokens"] == 0 and r["status"] == 200
               for r in rows[1:])


async def test_rate_limits_still_apply_to_hits(cache_env: Start) -> None:
    env = await cache_env()
    _, key = await env.key(AUTH, rpm=2)
    assert (await env.chat({**key, "x-thinktank-cache": "allow"})).status_code == 200
    assert (await env.chat({**key, "x-thinktank-cache": "allow"})).headers["x-thinktank-cache"] == "hit"
    limited = await env.chat({**key, "x-thinktank-cache": "allow"})
    assert limited.status_code == 429 and "retry-after" in limited.headers
    assert env.calls() == 1


async def test_errors_and_incomplete_answers_are_not_cached(cache_env: Start) -> None:
    env = await cache_env()
    env.upstream.queue(fmt.error(400, "bad request"))
    assert (await env.chat()).status_code == 400
    env.upstream.queue(Reply(json=fmt.completion("partial", finish_reason="content_filter")))
    assert (await env.chat()).status_code == 200
    ok = await env.chat()
    assert ok.status_code == 200 and ok.headers["x-thinktank-cache"] == "miss"
    assert ok.json()["choices"][0]["message"]["content"] == "echo: hello"
    assert (await env.chat()).headers["x-thinktank-cache"] == "hit"
    assert env.calls() == 3


async def test_an_entry_expires_after_its_ttl(cache_env: Start) -> None:
    clock = OffsetClock()
    env = await cache_env({"ttl": 60}, clock=clock)
    await env.chat()
    clock.advance(59)
    assert (await env.chat()).headers["x-thinktank-cache"] == "hit"
    clock.advance(2)
    assert (await env.chat()).headers["x-thinktank-cache"] == "miss"
    # a request's own TTL: how long its answer is kept, and how old an answer it takes
    await env.chat({**ALLOW, "x-thinktank-cache-ttl": "3600"}, temperature=0)
    clock.advance(600)
    assert (await env.chat({**ALLOW, "x-thinktank-cache-ttl": "3600"}, temperature=0)).headers[
        "x-thinktank-cache"] == "hit"
    assert (await env.chat({**ALLOW, "x-thinktank-cache-ttl": "300"}, temperature=0)).headers[
        "x-thinktank-cache"] == "miss", "older than the request accepts"
    assert env.calls() == 4


async def test_cache_control_is_respected(cache_env: Start) -> None:
    env = await cache_env({"enabled": True})
    assert (await env.chat(AUTH)).headers["x-thinktank-cache"] == "miss"
    assert (await env.chat(AUTH)).headers["x-thinktank-cache"] == "hit"
    # no-cache: answered afresh, and the fresh answer is kept
    env.upstream.queue(Reply(json=fmt.completion("fresh")))
    fresh = await env.chat({**AUTH, "cache-control": "no-cache"})
    assert fresh.headers["x-thinktank-cache"] == "miss" and env.calls() == 2
    assert (await env.chat(AUTH)).json()["choices"][0]["message"]["content"] == "fresh"
    # no-store: answered afresh, nothing kept
    env.upstream.queue(Reply(json=fmt.completion("not kept")))
    assert (await env.chat({**AUTH, "cache-control": "no-store"})).headers["x-thinktank-cache"] == "bypass"
    assert (await env.chat(AUTH)).json()["choices"][0]["message"]["content"] == "fresh"
    # max-age: nothing older than that
    assert (await env.chat({**AUTH, "cache-control": "max-age=0"})).headers["x-thinktank-cache"] == "miss"
    assert env.calls() == 4


async def test_opt_in_by_config_model_key_and_request(cache_env: Start) -> None:
    env = await cache_env({"models": {"mini": {"enabled": True, "ttl": 30}}})
    # nothing asked: not cached, no header
    r = await env.chat(AUTH)
    assert "x-thinktank-cache" not in r.headers
    assert "x-thinktank-cache" not in (await env.chat(AUTH)).headers and env.calls() == 2
    # the model's configuration
    await env.chat(AUTH, model="mini")
    assert (await env.chat(AUTH, model="mini")).headers["x-thinktank-cache"] == "hit"
    # the request refuses
    assert "x-thinktank-cache" not in (await env.chat({**AUTH, "x-thinktank-cache": "deny"}, model="mini")).headers
    # a key's setting: on with a TTL, or off whatever the configuration says
    _, cached = await env.key(AUTH, cache_ttl=120)
    _, uncached = await env.key(AUTH, cache_ttl=0)
    await env.chat(cached, messages=[{"role": "user", "content": "keyed"}])
    assert (await env.chat(cached, messages=[{"role": "user", "content": "keyed"}])).headers[
        "x-thinktank-cache"] == "hit"
    await env.chat(uncached, model="mini", messages=[{"role": "user", "content": "never"}])
    assert "x-thinktank-cache" not in (await env.chat(uncached, model="mini", messages=[
        {"role": "user", "content": "never"}])).headers
    assert env.calls() == 7  # two not cached, a miss of mini, one denied, a miss of the key, two of the 0 key


async def test_a_key_shows_its_cache_setting_and_refuses_a_bad_one(cache_env: Start) -> None:
    env = await cache_env()
    key_id, _ = await env.key(AUTH, cache_ttl=90)
    shown = (await env.http.get(env.url + f"/api/v1/keys/{key_id}", headers=AUTH)).json()
    assert shown["cache_ttl"] == 90
    for bad in (-1, 10**12, "soon"):
        r = await env.http.post(env.url + "/api/v1/keys", headers=AUTH, json={"name": "x", "cache_ttl": bad})
        assert r.status_code == 422, r.text


@pytest.mark.parametrize(("name", "value", "says"), [
    ("x-thinktank-cache-ttl", "-5", "whole seconds"),
    ("x-thinktank-cache-ttl", "abc", "whole seconds"),
    ("x-thinktank-cache-ttl", "1.5", "whole seconds"),
    ("x-thinktank-cache-ttl", "1e9", "whole seconds"),
    ("x-thinktank-cache-ttl", "", "whole seconds"),
    ("x-thinktank-cache-ttl", "99999999999", "longer than"),
    ("x-thinktank-cache-ttl", "9" * 400, "whole seconds"),
    ("x-thinktank-cache", "sometimes", "allow, exact or deny"),
])
async def test_bad_cache_headers_are_a_clear_400(cache_env: Start, name: str, value: str, says: str) -> None:
    env = await cache_env()
    r = await env.chat({**AUTH, name: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert says in error["message"] and error["param"] == name and error["code"] == "invalid_header"
    assert env.calls() == 0


async def test_agents_are_never_cached(cache_env: Start) -> None:
    env = await cache_env({"enabled": True}, extra={"ensembles": [
        {"name": "pair", "members": ["gpt", "mini"], "strategy": "heuristic"},
        {"name": "with-agent", "members": ["gpt", "agent/bot"], "strategy": "heuristic"}]})
    for model in ("agent/bot", "ensemble/with-agent"):
        for _ in range(2):
            r = await env.chat(ALLOW, model=model)
            assert r.status_code == 200, r.text
            assert r.headers["x-thinktank-cache"] == "bypass"
    assert env.app.state.response_cache.counts == {}, "nothing looked up, nothing kept"
    assert env.calls() >= 6


async def test_observers_are_told_hits_misses_and_stores(cache_env: Start) -> None:
    from thinktank.cache.service import CacheEvent

    env = await cache_env()
    seen: list[CacheEvent] = []
    env.app.state.response_cache.observe(seen.append)
    env.app.state.response_cache.observe(lambda _e: 1 / 0)  # a broken observer changes nothing
    await env.chat()
    assert (await env.chat()).headers["x-thinktank-cache"] == "hit"
    assert [(e.kind, e.layer, e.model) for e in seen] == [("miss", None, "gpt"), ("store", None, "gpt"),
                                                          ("hit", "exact", "gpt")]
    assert seen[-1].saved_usd > 0 and seen[-1].backend == "memory"
    assert env.app.state.response_cache.counts == {"miss": 1, "store": 1, "hit_exact": 1}
