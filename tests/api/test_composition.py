"""Every name is a model, and models compose: over HTTP, with a fake OpenAI upstream that records what it
is sent, knowledge bases on SQLite with the real local embedder.

- a thread whose model is an ensemble;
- an ensemble with a ``kb/...`` member that answers with citations;
- a debate whose expert runs on an ensemble (child runs, their cost counted once);
- ``knowledge_bases`` on a debate (and on an ensemble) request;
- cycles refused, at start-up and per request, naming the path;
- a nested run bounded by ``max_cost_usd`` and by the caller's budget;
each streamed and not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from thinktank.api.app import create_app
from thinktank.config import Settings, parse_config
from thinktank.errors import ConfigError
from thinktank.knowledge.embeddings import LocalEmbedder

from ..fakes import openai as fmt
from ..fakes.upstream import Reply
from .conftest import ADMIN, AUTH
from .test_grounded_chat import Env, Scripted, passages, support_kb
from .test_grounded_chat import config as grounded_config


def config(url: str) -> dict[str, Any]:
    cfg = grounded_config(url)
    cfg["knowledge"] = {"model": "mini"}  # kb/... answers with fake-mini
    cfg["ensembles"] = [
        {"name": "duo", "members": ["gpt", "mini"], "strategy": "heuristic"},
        {"name": "librarians", "members": ["kb/support", "gpt"], "strategy": "heuristic"},
        {"name": "outer", "members": ["ensemble/duo", "gpt"], "strategy": "heuristic"},
    ]
    cfg["debates"] = [{"name": "council-panel", "models": ["ensemble/duo"], "moderator": "gpt", "experts": 2,
                       "rounds": 1, "follow_up": False}]
    return cfg


@pytest.fixture
async def env(settings: Settings, local_embedder: LocalEmbedder, db_url: str) -> AsyncIterator[Env]:
    """thinktank on SQLite, then on PostgreSQL."""
    from .apps import served

    script = Scripted()
    on_db = settings.model_copy(update={"database_url": db_url})
    async with served(on_db, local_embedder, script, config) as (url, app, upstream, http):
        yield Env(url, app, upstream, http, script)


def sse_data(text: str) -> list[Any]:
    """The data events of an OpenAI stream (comments skipped), without [DONE]."""
    raw = [e for e in text.split("\n\n") if e and not e.startswith(":")]
    assert raw[-1] == "data: [DONE]", text
    return [orjson.loads(e[6:]) for e in raw[:-1]]


async def run_record(env: Env, run_id: str) -> dict[str, Any]:
    r = await env.http.get(env.url + f"/api/v1/runs/{run_id}", headers=AUTH)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def run_events(env: Env, run_id: str) -> list[dict[str, Any]]:
    r = await env.http.get(env.url + f"/api/v1/runs/{run_id}/events?format=json", headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    return list(body["data"] if isinstance(body, dict) else body)


async def usage_rows(env: Env) -> list[dict[str, Any]]:
    await env.app.state.usage_writer.flush()
    r = await env.http.get(env.url + "/api/v1/usage?group_by=model", headers=AUTH)
    return list(r.json()["data"])


@pytest.mark.parametrize("stream", [False, True])
async def test_an_ensemble_with_a_kb_member_answers_with_its_citations(env: Env, stream: bool) -> None:
    alice, headers = await env.user("alice@example.com")
    await support_kb(env, alice)
    env.script.say("fake-mini", Reply(json=fmt.completion("Refunds take 14 days [1].")))
    env.script.say("fake-model", Reply(json=fmt.completion("About two weeks, I think.")))
    r = await env.chat(headers, model="ensemble/librarians", stream=stream,
                       stream_options={"include_usage": True} if stream else None)
    assert r.status_code == 200, r.text
    run_id = r.headers["x-thinktank-run-id"]
    # the kb member's upstream call carried the passages; the plain member's did not
    [grounded] = env.chats("fake-mini")
    assert {a["source"] for a, _ in passages(grounded["messages"])} == {"refunds.md", "shipping.md"}
    [plain] = env.chats("fake-model")
    assert not any("<passages-" in str(m["content"]) for m in plain["messages"])
    record = await run_record(env, run_id)
    answers = {a["model"]: a for a in record["result"]["answers"]}
    assert [c["source"] for c in answers["kb/support"]["citations"]] == ["refunds.md"]
    assert "citations" not in answers["gpt"]
    # the run's cost is everything it paid for: both answers and the kb member's query embedding
    assert record["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in record["calls"]))
    assert answers["kb/support"]["cost_usd"] > 0 and answers["gpt"]["cost_usd"] > 0
    if stream:
        chunks = sse_data(r.text)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text in ("Refunds take 14 days [1].", "About two weeks, I think.")
        assert chunks[-1]["usage"]["cost"] == pytest.approx(record["cost_usd"])
    else:
        assert r.json()["choices"][0]["message"]["content"] in ("Refunds take 14 days [1].",
                                                                "About two weeks, I think.")
        assert float(r.headers["x-thinktank-cost-usd"]) == pytest.approx(record["cost_usd"])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_thread_on_an_ensemble_grounded_in_a_knowledge_base(env: Env, stream: bool) -> None:
    alice, headers = await env.user("alice@example.com")
    await support_kb(env, alice)
    # (memory would be extracted by the thread's model, ensemble/duo too: another request, not this one's)
    assert (await env.http.put(env.url + "/api/v1/me/memory/settings", headers=headers,
                               json={"enabled": False})).status_code == 200
    r = await env.http.post(env.url + "/api/v1/threads", headers=headers,
                            json={"model": "ensemble/duo", "knowledge_bases": ["support"]})
    assert r.status_code == 201, r.text
    thread = r.json()["id"]
    env.script.say("fake-model", Reply(json=fmt.completion("Fourteen days [1], as the refunds page says.")))
    env.script.say("fake-mini", Reply(json=fmt.completion("14 days [1].")))
    r = await env.http.post(env.url + f"/api/v1/threads/{thread}/messages", headers=headers,
                            json={"content": "How long do refunds take?", "stream": stream})
    assert r.status_code == 200, r.text
    if stream:
        events = [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
        message = events[-1]["message"]
    else:
        message = r.json()["message"]
    # both members got the passages
    for model in ("fake-model", "fake-mini"):
        [sent] = env.chats(model)
        assert {a["source"] for a, _ in passages(sent["messages"])} == {"refunds.md", "shipping.md"}
    assert message["content"] in ("Fourteen days [1], as the refunds page says.", "14 days [1].")
    assert [c["source"] for c in message["context"]["citations"]] == ["refunds.md"]
    run_id = message["context"]["run_id"]
    record = await run_record(env, run_id)
    assert record["kind"] == "ensemble" and record["status"] == "completed"
    assert message["cost_usd"] == pytest.approx(record["cost_usd"])
    # recorded once, as the turn on ensemble/duo: the query's embedding and the whole run
    rows = [u for u in await usage_rows(env) if u["group"] == "ensemble/duo"]
    assert len(rows) == 1 and rows[0]["requests"] == 1
    assert rows[0]["cost_usd"] == pytest.approx(record["cost_usd"])  # the local embedder is free


@pytest.mark.parametrize("stream", [False, True])
async def test_a_debate_whose_experts_are_an_ensemble_makes_child_runs_counted_once(env: Env, stream: bool) -> None:
    _, headers = await env.user("bob@example.com")
    r = await env.chat(headers, model="debate/council-panel", stream=stream,
                       messages=[{"role": "user", "content": "Which database should we use?"}])
    assert r.status_code == 200, r.text
    run_id = r.headers["x-thinktank-run-id"]
    record = await run_record(env, run_id)
    assert record["status"] == "completed", record["error"]
    events = await run_events(env, run_id)
    children = [e["data"]["run_id"] for e in events if e["type"] == "child_run"]
    expert_calls = [c for c in record["calls"] if c["model"] == "ensemble/duo"]
    assert len(children) == len(expert_calls) == 2  # two experts, one round
    total_children = 0.0
    for child_id in children:
        child = await run_record(env, child_id)
        assert child["kind"] == "ensemble" and child["request"]["parent_run"] == run_id
        assert len([c for c in child["calls"] if c["stage"] == "answer"]) == 2
        total_children += child["cost_usd"]
    assert sum(c["cost_usd"] for c in expert_calls) == pytest.approx(total_children)
    # the parent's total holds each child's cost once, and so does the usage record
    assert record["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in record["calls"]))
    rows = [u for u in await usage_rows(env) if u["group"] == "debate/council-panel"]
    assert rows[0]["cost_usd"] == pytest.approx(record["cost_usd"])
    if not stream:
        assert float(r.headers["x-thinktank-cost-usd"]) == pytest.approx(record["cost_usd"])
    # every upstream call was paid once: the upstream saw exactly the calls the records hold
    leaf_calls = len([c for c in record["calls"] if c["model"] != "ensemble/duo"]) + 2 * len(children)
    assert len(env.chats()) == leaf_calls


@pytest.mark.parametrize("stream", [False, True])
async def test_knowledge_bases_on_a_debate_request(env: Env, stream: bool) -> None:
    alice, headers = await env.user("alice@example.com")
    await support_kb(env, alice)
    r = await env.chat(headers, model="debate/council-panel", knowledge_bases=["support"], stream=stream)
    assert r.status_code == 200, r.text
    # every expert answer (on the ensemble's members) was given the passages
    member_calls = [c for c in env.chats() if "<passages-" in "".join(str(m["content"]) for m in c["messages"])]
    assert len(member_calls) >= 4
    if stream:
        chunks = sse_data(r.text)
        assert "citations" in chunks[-1] and chunks[-1]["choices"] == []
    else:
        assert "citations" in r.json()


async def test_cycles_are_refused_naming_the_path(env: Env, tmp_path: Path) -> None:
    # per request: an ensemble given itself as a member
    r = await env.http.post(env.url + "/api/v1/ensembles", headers=AUTH,
                            json={"ensemble": "duo", "members": ["gpt", "ensemble/duo"], "question": "q"})
    assert r.status_code == 400, r.text
    assert "ensemble/duo -> ensemble/duo" in r.json()["error"]["message"]
    # in the configuration: through another ensemble, and through a knowledge base's answering model
    base = {**config(env.upstream.url), "debates": []}
    looped = {**base, "ensembles": [{"name": "a", "members": ["gpt", "ensemble/b"]},
                                    {"name": "b", "members": ["ensemble/a"]}]}
    with pytest.raises(ConfigError, match=r"ensemble/a -> ensemble/b -> ensemble/a"):
        create_app(Settings(data_dir=tmp_path / "a", admin_key=ADMIN), parse_config(looped))
    via_kb = {**base, "knowledge": {"model": "ensemble/k"},
              "ensembles": [{"name": "k", "members": ["gpt", "kb/support"]}]}
    with pytest.raises(ConfigError, match=r"ensemble/k -> kb/support -> ensemble/k"):
        create_app(Settings(data_dir=tmp_path / "b", admin_key=ADMIN), parse_config(via_kb))


@pytest.mark.parametrize("stream", [False, True])
async def test_a_nested_run_is_bounded_by_max_cost_usd(env: Env, stream: bool) -> None:
    _, headers = await env.user("carol@example.com")
    # each call costs about 24 prompt tokens and holds far more: a cap that fits a few calls only
    r = await env.chat(headers, model="ensemble/outer", max_cost_usd=0.00005, max_tokens=10, stream=stream)
    run_id = r.headers["x-thinktank-run-id"]
    record = await run_record(env, run_id)
    assert record["status"] == "budget_exceeded", record
    assert record["cost_usd"] <= 0.00005
    # the child run stopped too: on the cap, or cancelled when its sibling's refusal stopped the parent
    [child_id] = [e["data"]["run_id"] for e in await run_events(env, run_id) if e["type"] == "child_run"]
    child = await run_record(env, child_id)
    assert child["status"] in ("budget_exceeded", "cancelled") and child["request"]["parent_run"] == run_id
    if stream:
        assert r.status_code == 200  # the stream had begun: the refusal is its last event
        [error] = [c for c in sse_data(r.text) if "error" in c]
        assert error["error"]["code"] == "budget_exceeded"
    else:
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"


async def test_a_key_budget_bounds_the_whole_tree(env: Env) -> None:
    _, headers = await env.user("dan@example.com")
    r = await env.http.post(env.url + "/api/v1/keys", headers=headers,
                            json={"name": "tight", "budget_usd": 0.002, "budget_period": "total"})
    assert r.status_code == 201, r.text
    key_id, key = r.json()["id"], r.json()["key"]
    spent = 0.0
    for _ in range(20):
        r = await env.chat({"Authorization": f"Bearer {key}"}, model="ensemble/outer", max_tokens=50)
        if r.status_code == 429:
            break
        spent += float(r.headers["x-thinktank-cost-usd"])
    else:
        pytest.fail("the key's budget never stopped the nested runs")
    assert 0 < spent <= 0.002
    await env.app.state.usage_writer.flush()
    rows = (await env.http.get(env.url + "/api/v1/usage?group_by=key", headers=AUTH)).json()["data"]
    [row] = [u for u in rows if u["group"] == key_id]
    assert spent <= row["cost_usd"] <= 0.002 + 1e-12  # the refused run's partial spend included


async def test_a_thread_on_a_kb_model_with_knowledge_bases_of_its_own_is_grounded_once(env: Env) -> None:
    alice, headers = await env.user("alice@example.com")
    await support_kb(env, alice)
    other = (await env.app.state.knowledge.create(alice, "policies")).kb
    from thinktank.knowledge.ingest import Source

    await env.app.state.knowledge.add(alice, other.id, [Source("returns.md", b"# Returns\n\nRefunds need a receipt.")])
    assert (await env.http.put(env.url + "/api/v1/me/memory/settings", headers=headers,
                               json={"enabled": False})).status_code == 200
    r = await env.http.post(env.url + "/api/v1/threads", headers=headers,
                            json={"model": "kb/support", "knowledge_bases": ["policies"]})
    assert r.status_code == 201, r.text
    env.script.say("fake-mini", Reply(json=fmt.completion("You need a receipt [3].")))
    r = await env.http.post(env.url + f"/api/v1/threads/{r.json()['id']}/messages", headers=headers,
                            json={"content": "What do refunds need?"})
    assert r.status_code == 200, r.text
    [sent] = env.chats("fake-mini")
    # one set of passages, from both knowledge bases, numbered once
    assert {a["source"] for a, _ in passages(sent["messages"])} == {"refunds.md", "shipping.md", "returns.md"}
    cited = r.json()["message"]["context"]["citations"]
    assert len(cited) == 1 and cited[0]["index"] == 3
