"""A composite model is cached like any other: an ensemble's answer (all its members' calls) is served again at
no cost, as a body or as a stream."""

from __future__ import annotations

from .conftest import ALLOW, Start, sse_objects, stream_text


async def test_an_ensemble_is_cached(cache_env: Start) -> None:
    env = await cache_env({"models": {"ensemble/pair": {"enabled": True}}})
    first = await env.chat(ALLOW, model="ensemble/pair")
    assert first.status_code == 200, first.text
    members = env.calls()
    assert members == 2 and float(first.headers["x-thinktank-cost-usd"]) > 0
    run_id = first.headers["x-thinktank-run-id"]
    second = await env.chat(ALLOW, model="ensemble/pair")
    assert second.headers["x-thinktank-cache"] == "hit" and env.calls() == members, "no member was asked again"
    assert second.json()["choices"] == first.json()["choices"]
    assert float(second.headers["x-thinktank-cost-usd"]) == 0
    # the hit is recorded as a run served from the cache, pointing at the run that made the answer
    hit_run = (await env.http.get(env.url + f"/api/v1/runs/{second.headers['x-thinktank-run-id']}",
                                  headers=ALLOW)).json()
    assert hit_run["cached_from"] == run_id and hit_run["cost_usd"] == 0 and hit_run["status"] == "completed"
    assert hit_run["result"]["answer"] == first.json()["choices"][0]["message"]["content"]
    streamed = await env.chat(ALLOW, model="ensemble/pair", stream=True, stream_options={"include_usage": True})
    chunks = sse_objects(streamed.text)
    assert stream_text(chunks) == first.json()["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"]["cost"] == 0 and env.calls() == members
    # the configuration's opt-in needs no header
    assert (await env.chat({"Authorization": ALLOW["Authorization"]}, model="ensemble/pair")).headers[
        "x-thinktank-cache"] == "hit"
    rows = [r for r in await env.usage() if r["model"] == "ensemble/pair"]
    assert [r["cache_hit"] for r in rows] == [False, True, True, True]
    assert rows[0]["cost_usd"] > 0 and all(r["cost_usd"] == 0 for r in rows[1:])


async def test_a_streamed_ensemble_answer_is_kept(cache_env: Start) -> None:
    env = await cache_env()
    first = await env.chat(model="ensemble/pair", stream=True)
    assert first.status_code == 200 and first.headers["x-thinktank-cache"] == "miss"
    text = stream_text(sse_objects(first.text))
    calls = env.calls()
    again = await env.chat(model="ensemble/pair")
    assert again.headers["x-thinktank-cache"] == "hit" and env.calls() == calls
    assert again.json()["choices"][0]["message"]["content"] == text
    hit_run = (await env.http.get(env.url + f"/api/v1/runs/{again.headers['x-thinktank-run-id']}",
                                  headers=ALLOW)).json()
    assert hit_run["cached_from"] == first.headers["x-thinktank-run-id"]
