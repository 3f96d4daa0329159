from __future__ import annotations

import math

import pytest

from thinktank.config import DeploymentConfig
from thinktank.errors import ConfigError, InvalidRequestError, UpstreamRateLimitError, UpstreamServerError
from thinktank.providers.base import ProviderContext
from thinktank.providers.mock import MockProvider
from thinktank.types import ChatRequest, EmbeddingRequest

from ..fakes.clock import FakeClock


def mock(ctx: ProviderContext, **options: object) -> MockProvider:
    return MockProvider(DeploymentConfig(name="m", provider="mock", options=options), ctx)


def req(text: str = "hello") -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": text}]})


async def test_scripted_replies_cycle_and_prompts_are_recorded(ctx: ProviderContext) -> None:
    m = mock(ctx, replies=["one", "two"])
    texts = [(await m.complete(req(str(i)))).choices[0].message.content for i in range(3)]
    assert texts == ["one", "two", "one"]
    assert [r.messages[0].content for r in m.requests] == ["0", "1", "2"]


async def test_echo_usage_and_stream(ctx: ProviderContext) -> None:
    m = mock(ctx)
    resp = await m.complete(req("what is up"))
    assert resp.choices[0].message.content == "[mock m] You said: what is up"
    assert resp.usage is not None and resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    chunks = [c async for c in m.stream(req("a b"))]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[mock m] You said: a b"
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage is not None


async def test_latency_goes_through_the_clock(ctx: ProviderContext, clock: FakeClock) -> None:
    m = mock(ctx, latency=2.5, chunk_delay=0.1)
    await m.complete(req())
    assert clock.sleeps == [2.5]
    [c async for c in m.stream(req("a b c"))]
    words = len(["[mock", "m]", "You", "said:", "a", "b", "c"])
    assert clock.sleeps[1:] == [2.5] + [0.1] * (words - 1)


async def test_failure_injection(ctx: ProviderContext) -> None:
    m = mock(ctx, fail_first=2, fail_status=429, retry_after=3)
    for _ in range(2):
        with pytest.raises(UpstreamRateLimitError) as info:
            await m.complete(req())
        assert info.value.retry_after == 3
    assert (await m.complete(req())).choices
    flaky = mock(ctx, fail_rate=0.5, seed=1)
    outcomes = []
    for _ in range(200):
        try:
            await flaky.complete(req())
            outcomes.append(True)
        except UpstreamServerError:
            outcomes.append(False)
    assert 70 < outcomes.count(False) < 130


async def test_embeddings_are_deterministic_unit_vectors(ctx: ProviderContext) -> None:
    m = mock(ctx, embedding_dimensions=8)
    a = await m.embed(EmbeddingRequest(model="m", input=["x", "y"]))
    b = await m.embed(EmbeddingRequest(model="m", input="x"))
    assert a.data[0].embedding == b.data[0].embedding != a.data[1].embedding
    vec = a.data[0].embedding
    assert isinstance(vec, list) and len(vec) == 8
    assert math.isclose(sum(v * v for v in vec), 1.0)


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]])
async def test_embeddings_refuse_token_ids(ctx: ProviderContext, tokens: list[object]) -> None:
    with pytest.raises(InvalidRequestError, match="cannot take token ids") as info:
        await mock(ctx).embed(EmbeddingRequest.model_validate({"model": "m", "input": tokens}))
    assert info.value.status == 400 and info.value.param == "input"


def test_bad_options_name_the_field(ctx: ProviderContext) -> None:
    with pytest.raises(ConfigError, match=r"model 'm': options.fail_rate"):
        mock(ctx, fail_rate=3)
    with pytest.raises(ConfigError, match=r"options.colour"):
        mock(ctx, colour="red")


def conversation(system: str, user: str) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    )


async def reply(m: MockProvider, request: ChatRequest) -> str | None:
    return (await m.complete(request)).choices[0].message.content


async def test_rule_matches_text_of_a_system_message(ctx: ProviderContext) -> None:
    m = mock(ctx, rules=[{"match": r"security\s+ENGINEER", "reply": "patch it"}])
    assert await reply(m, conversation("You are a Security engineer.", "what now?")) == "patch it"
    assert await reply(m, conversation("You are a historian.", "what now?")) == "[mock m] You said: what now?"


async def test_rule_regex_spans_messages_with_dotall(ctx: ProviderContext) -> None:
    m = mock(ctx, rules=[{"match": r"critic.*round 2", "reply": "second round"}])
    assert await reply(m, conversation("You are the critic.", "This is round 2.")) == "second round"


async def test_first_matching_rule_wins(ctx: ProviderContext) -> None:
    m = mock(
        ctx,
        rules=[
            {"match": "nothing-here", "reply": "never"},
            {"match": "budget", "reply": "first"},
            {"match": "budget|cost", "reply": "second"},
        ],
    )
    assert await reply(m, req("the budget is tight")) == "first"
    assert await reply(m, req("the cost is high")) == "second"


async def test_a_template_rule_fills_in_the_match_groups(ctx: ProviderContext) -> None:
    m = mock(ctx, rules=[{"match": r"name: (?P<name>\w+)", "reply": r"Hello \g<name> \1", "template": True},
                         {"match": "plain (\\w+)", "reply": r"kept \1"}])
    assert await reply(m, req("my name: Ada, hi")) == "Hello Ada Ada"
    assert await reply(m, req("plain text")) == r"kept \1"  # without template, the reply is verbatim


async def test_replies_cycle_within_a_rule(ctx: ProviderContext) -> None:
    m = mock(ctx, rules=[{"match": "a", "replies": ["x", "y"]}, {"match": "b", "replies": ["p", "q", "r"]}])
    texts = [await reply(m, req(t)) for t in ["a", "b", "a", "b", "a", "b", "b"]]
    assert texts == ["x", "p", "y", "q", "x", "r", "p"]


async def test_unmatched_prompt_falls_back_to_replies_then_echo(ctx: ProviderContext) -> None:
    m = mock(ctx, rules=[{"match": "^zzz$", "reply": "rule"}], replies=["one", "two"])
    assert [await reply(m, req("hello")) for _ in range(3)] == ["one", "two", "one"]
    assert await reply(m, req("zzz")) == "rule"
    assert await reply(m, req("hello")) == "two"
    echo = mock(ctx, rules=[{"match": "^zzz$", "reply": "rule"}])
    assert await reply(echo, req("hello")) == "[mock m] You said: hello"


def test_invalid_rule_regex_names_model_and_field(ctx: ProviderContext) -> None:
    with pytest.raises(ConfigError, match=r"model 'm': options\.rules\[1\]\.match: invalid regular expression"):
        mock(ctx, rules=[{"match": "ok", "reply": "x"}, {"match": "(unclosed", "reply": "y"}])


def test_rule_needs_exactly_one_of_reply_and_replies(ctx: ProviderContext) -> None:
    with pytest.raises(ConfigError, match=r"model 'm': options\.rules\.0: .*exactly one of 'reply' or 'replies'"):
        mock(ctx, rules=[{"match": "x"}])
    with pytest.raises(ConfigError, match=r"exactly one of 'reply' or 'replies'"):
        mock(ctx, rules=[{"match": "x", "reply": "a", "replies": ["b"]}])
    with pytest.raises(ConfigError, match=r"options\.rules\.0\.colour"):
        mock(ctx, rules=[{"match": "x", "reply": "a", "colour": "red"}])


async def test_stream_uses_the_matching_rule(ctx: ProviderContext) -> None:
    m = mock(ctx, rules=[{"match": "expert", "replies": ["alpha beta gamma", "delta"]}])
    first = [c async for c in m.stream(conversation("You are an expert.", "go"))]
    second = [c async for c in m.stream(conversation("You are an expert.", "go"))]
    assert "".join(c.choices[0].delta.content or "" for c in first if c.choices) == "alpha beta gamma"
    assert "".join(c.choices[0].delta.content or "" for c in second if c.choices) == "delta"


async def test_a_mock_keeps_only_its_last_requests(ctx: ProviderContext) -> None:
    from thinktank.providers.mock import _KEEP_REQUESTS

    m = mock(ctx)
    for i in range(_KEEP_REQUESTS + 5):
        await m.complete(req(str(i)))
    assert m.calls == _KEEP_REQUESTS + 5 and len(m.requests) == _KEEP_REQUESTS
    assert m.requests[0].messages[0].content == "5" and m.requests[-1].messages[0].content == str(_KEEP_REQUESTS + 4)


async def test_the_demo_librarian_quotes_the_first_passage(ctx: ProviderContext) -> None:
    from thinktank.discovery import demo_config

    [librarian] = [d for d in demo_config().models if d.name == "demo/librarian"]
    m = MockProvider(librarian, ctx)
    passage = '<passage-0a1b2c3d id="1" source="t.md">{}</passage-0a1b2c3d>'
    sentence = await reply(m, conversation(passage.format("Tea is steeped at 80 degrees. More."), "how hot?"))
    assert sentence is not None
    assert sentence.startswith("According to your documents: Tea is steeped at 80 degrees. [1]")
    table = await reply(m, conversation(passage.format("| kettle | 80 |\n| pot | 90 |"), "how hot?"))
    assert table is not None and table.startswith("According to your documents: | kettle | 80 |\n| pot | 90 |… [1]")
    nothing = await reply(m, conversation("...no passages in the knowledge bases matched this question...", "x"))
    assert nothing is not None and nothing.startswith("Your documents contain nothing about that.")
