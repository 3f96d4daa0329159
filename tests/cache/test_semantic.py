"""The semantic layer over real HTTP, with the real local embedding model: a paraphrase is answered from
the cache, a near-miss never is, and only deterministic requests are answered semantically at all."""

from __future__ import annotations

from typing import Any

import pytest

from thinktank.knowledge.embeddings import LocalEmbedder

from ..fakes import openai as fmt
from ..fakes.upstream import Reply
from .conftest import ALLOW, CacheEnv, Start

SEMANTIC = {"models": {"gpt": {"semantic": {"enabled": True}}}}


def ask(text: str, **more: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "temperature": 0, **more}


@pytest.fixture
async def env(cache_env: Start, local_embedder: LocalEmbedder) -> CacheEnv:
    started: CacheEnv = await cache_env(SEMANTIC, local_embedder=local_embedder)
    return started


async def test_a_paraphrase_is_answered_from_the_cache(env: CacheEnv) -> None:
    env.upstream.queue(Reply(json=fmt.completion("Paris.")))
    first = await env.chat(**ask("What is the capital of France?"))
    assert first.headers["x-thinktank-cache"] == "miss"
    for paraphrase in ("what's the capital of france", "Tell me the capital of France, please.",
                       "Can you tell me what the capital of France is?"):
        r = await env.chat(**ask(paraphrase))
        assert r.status_code == 200, r.text
        assert r.headers["x-thinktank-cache"] == "hit", paraphrase
        assert r.headers["x-thinktank-cache-match"] == "semantic"
        assert r.json()["choices"][0]["message"]["content"] == "Paris."
    assert env.calls() == 1
    counts = env.app.state.response_cache.counts
    assert counts["hit_semantic"] == 3 and counts["miss"] == 1
    rows = await env.usage()
    assert [r["cache_hit"] for r in rows] == [False, True, True, True]


@pytest.mark.parametrize(("asked", "near_miss"), [
    ("what is 1+1", "what is 21+1"),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"),
    ("Convert 10 kilograms to pounds", "Convert 10 pounds to kilograms"),
    ("How many grams are in a cup of flour?", "How many ounces are in a cup of flour?"),
    ("What's the weather on Monday?", "What's the weather on Tuesday?"),
    ("Which is bigger, the Sun or the Moon?", "Which is smaller, the Sun or the Moon?"),
    ("When was Albert Einstein born?", "Where was Albert Einstein born?"),
    ("How do I turn on Bluetooth?", "How do I turn off Bluetooth?"),
    ("Who is the CEO of Apple?", "Who was the CEO of Apple?"),
])
async def test_a_near_miss_is_never_answered_from_the_cache(env: CacheEnv, asked: str, near_miss: str) -> None:
    await env.chat(**ask(asked))
    r = await env.chat(**ask(near_miss))
    assert r.headers["x-thinktank-cache"] == "miss", (asked, near_miss)
    assert env.calls() == 2
    assert r.json()["choices"][0]["message"]["content"] == f"echo: {near_miss}"


@pytest.mark.parametrize("sampling", [
    {"temperature": None}, {"temperature": 0.7}, {"temperature": 0, "n": 2},
    {"temperature": 0, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    {"temperature": 0, "tool_choice": "none"},
])
async def test_requests_that_are_not_deterministic_are_never_answered_semantically(
        env: CacheEnv, sampling: dict[str, Any]) -> None:
    body = {k: v for k, v in sampling.items() if v is not None}
    first = {"messages": [{"role": "user", "content": "What is the capital of France?"}], **body}
    await env.chat(**first)
    again = await env.chat(**first)
    assert again.headers["x-thinktank-cache"] == "hit" and again.headers["x-thinktank-cache-match"] == "exact"
    paraphrase = await env.chat(**{**first, "messages": [{"role": "user", "content": "what's the capital of france"}]})
    assert paraphrase.headers["x-thinktank-cache"] == "miss"
    assert env.calls() == 2


async def test_questions_are_compared_only_within_their_scope(env: CacheEnv) -> None:
    await env.chat(**ask("What is the capital of France?"))
    system = [{"role": "system", "content": "Answer in French."}]
    other_scopes: list[tuple[dict[str, str], dict[str, Any]]] = [
        ({}, {"messages": [*system, {"role": "user", "content": "what's the capital of france"}]}),  # system prompt
        ({}, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                           {"role": "user", "content": "what's the capital of france"}]}),  # earlier turns
        ({}, {"max_tokens": 5}),  # another parameter
        ({}, {"model": "mini"}),  # another model (not semantic at all)
        (await env.user("alice@example.com"), {}),  # another tenant
        ({"x-thinktank-cache": "exact"}, {}),  # the request asks for exact matches only
    ]
    for headers, change in other_scopes:
        r = await env.chat({**ALLOW, **headers}, **{**ask("what's the capital of france"), **change})
        assert r.headers["x-thinktank-cache"] == "miss", change or headers
    assert env.calls() == 1 + len(other_scopes)


async def test_a_streamed_request_gets_a_semantic_hit_as_a_stream(env: CacheEnv) -> None:
    env.upstream.queue(Reply(json=fmt.completion("Paris.")))
    await env.chat(**ask("What is the capital of France?"))
    r = await env.chat(**ask("what's the capital of france", stream=True))
    assert r.headers["x-thinktank-cache"] == "hit" and "data: [DONE]" in r.text and "Paris." in r.text
    assert env.calls() == 1


async def test_a_model_with_the_semantic_layer_on_is_cached_without_being_asked(env: CacheEnv) -> None:
    plain = {"Authorization": ALLOW["Authorization"]}
    assert (await env.chat(plain, **ask("How many legs does a spider have?"))).headers["x-thinktank-cache"] == "miss"
    r = await env.chat(plain, **ask("how many legs does a spider have"))
    assert r.headers["x-thinktank-cache"] == "hit" and r.headers["x-thinktank-cache-match"] == "semantic"
    assert "x-thinktank-cache" not in (await env.chat(plain, model="mini")).headers, "mini is not cached"


def test_the_index_is_bounded() -> None:
    import numpy as np

    from thinktank.cache.semantic import SemanticIndex

    index = SemanticIndex(max_scopes=3, max_questions=10)
    vector = np.ones(4, np.float32) / 2
    for scope in range(5):
        for i in range(4):
            index.add(f"s{scope}", f"question {i}", vector, f"k{scope}-{i}", expires_at=100, now=0, max_entries=3)
    assert len(index) <= 10
    assert index.find("s0", "question 1", vector, 0.9, now=0) is None, "the least recently used scope went"
    found = index.find("s4", "question 3", vector, 0.9, now=0)
    assert found is not None and found.key == "k4-3"
    assert [e.key for e in index._scopes["s4"].entries] == ["k4-1", "k4-2", "k4-3"], "3 kept per scope"
    assert index.find("s4", "question 3", vector, 0.9, now=100) is None, "expired"
