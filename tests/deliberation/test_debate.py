"""DebateRunner on the real path: LiveRun -> real Router -> mock deployments (and a fake OpenAI upstream)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from thinktank.config import DebateConfig
from thinktank.deliberation.debate import DebateRunner
from thinktank.deliberation.experts import Persona, load_library
from thinktank.deliberation.runs import LiveRun
from thinktank.errors import RunFailedError
from thinktank.gateway.router import Router
from thinktank.providers.base import ProviderContext

from ..fakes import openai as oa
from ..fakes.clock import FakeClock
from ..fakes.upstream import FakeUpstream, Reply
from .conftest import make_router, make_run, mock, of_type, prompt_of, requests_of, rule, user

Q = "Should we replace passwords with passkeys for our customer login?"
SECURITY_Q = "How can we secure our login API against credential-stuffing attacks?"

ADA = Persona("Ada Stone", "information security", "Ada has run security teams.", "cautious",
              keywords=("security", "login", "passkeys"))
BEN = Persona("Ben Cole", "economics", "Ben studies costs.", "pragmatic", keywords=("cost", "budget"))
CY = Persona("Cy Park", "critical thinking", "Cy questions plans.", "contrarian: doubts the popular view",
             keywords=("assumption",))
PANEL = [ADA, BEN, CY]
NAMES = [p.name for p in PANEL]
R1 = {"Ada Stone": "ADA-R1: adopt passkeys now.", "Ben Cole": "BEN-R1: budget for support costs first.",
      "Cy Park": "CY-R1: users will lose their devices."}
R2 = {"Ada Stone": "STANCE: rebut\nADA-R2: device loss is handled by recovery codes.",
      "Ben Cole": "STANCE: revise\nBEN-R2: a phased rollout keeps costs down.",
      "Cy Park": "stance - hold\nCY-R2: recovery is the weak point."}

ANALYSIS = {"domains": ["information security", "economics"], "kind": "decision", "needs": ["a recommendation"]}
SYNTHESIS = "## Answer\nAdopt passkeys in phases.\n## Points of agreement\nRecovery matters.\n## Confidence\nHigh."
PLAN = "# Plan\n## Goal\nPasskeys for every customer."
TASKS = "# Tasks\n1. Add WebAuthn. **Owner role**: backend."


def agreement(score: float) -> str:
    return json.dumps({"agreement": score, "summary": "scripted"})


def moderator(*, analysis: str | None = None, judge: str | list[str] | None = None, follow: str = "What would it cost?",
              recruit: str | list[str] | None = None) -> dict[str, Any]:
    rules = [
        rule("Write the task list", TASKS),
        rule("Turn it into a plan", PLAN),
        rule(r"Recruit \d+ experts", recruit if recruit is not None else "no experts today"),
        rule("Classify this question", analysis if analysis is not None else json.dumps(ANALYSIS)),
        rule("How much do they agree", judge if judge is not None else agreement(0.2)),
        rule("pose one short follow-up", follow),
        rule("write the final answer", SYNTHESIS),
    ]
    return mock("mod", rules=rules)


def experts(r1: dict[str, str] | None = None, later: dict[str, str | list[str]] | None = None,
            **options: Any) -> dict[str, Any]:
    """One deployment playing every expert: each is recognised by its system prompt ("You are NAME,")."""
    first: dict[str, str] = r1 or R1
    then: dict[str, str | list[str]] = dict(later or R2)
    rules: list[dict[str, Any]] = []
    for name in NAMES:
        rules.append(rule(rf"You are {name},.*Your previous position", then[name]))
        rules.append(rule(rf"You are {name},", first[name]))
    return mock("expert", rules=rules, **options)


def debate_cfg(**kw: Any) -> DebateConfig:
    return DebateConfig.model_validate({"name": "d", "models": ["expert"], "moderator": "mod", **kw})


def debate(router: Router, clock: FakeClock, cfg: DebateConfig, library: list[Persona] | None = None,
           question: str = Q) -> tuple[LiveRun, DebateRunner]:
    run = make_run(router, clock, kind="debate")
    return run, DebateRunner(run, cfg, user(question), library if library is not None else PANEL)


def expert_prompts(router: Router, name: str) -> list[str]:
    """The user prompts the named expert received, round by round."""
    return [str(r.messages[-1].content) for r in requests_of(router, "expert")
            if str(r.messages[0].content).startswith(f"You are {name},")]


def others_section(prompt: str) -> str:
    return prompt.split("The other experts' latest positions:", 1)[1]


# --------------------------------------------------------------------------------------------------------------
# 1. analysis
# --------------------------------------------------------------------------------------------------------------


async def test_analysis_is_parsed_from_the_analysts_json(ctx: ProviderContext, clock: FakeClock) -> None:
    reply = ('Here it is:\n```json\n{"domains": ["security", "economics", 3, " ", "law", "ux", "ops"], '
             '"kind": "decision", "needs": ["a recommendation", "costs"]}\n```')
    router = make_router(ctx, [moderator(), mock("analyst", replies=[reply]), experts()])
    run, runner = debate(router, clock, debate_cfg(analyst="analyst"))
    analysis = await runner.analyse()
    assert analysis == {"domains": ["security", "economics", "law", "ux"], "kind": "decision",
                        "needs": ["a recommendation", "costs"]}
    assert of_type(run, "analysis")[0].data == analysis
    assert run.partial["analysis"] == analysis
    [request] = requests_of(router, "analyst")
    assert Q in prompt_of(request)
    assert requests_of(router, "mod") == []
    assert run.calls[0].role == "analyst" and run.calls[0].stage == "analysis"


async def test_unparseable_analysis_twice_is_an_error_and_the_panel_still_comes_from_the_library(
    ctx: ProviderContext, clock: FakeClock,
) -> None:
    router = make_router(ctx, [moderator(analysis="It is mostly about security, I think."), experts()])
    run, runner = debate(router, clock, debate_cfg(), library=list(load_library()), question=SECURITY_Q)
    analysis = await runner.analyse()
    assert analysis["error"].startswith("unparseable reply twice (")
    assert {k: v for k, v in analysis.items() if k != "error"} == {"domains": [], "kind": "unknown", "needs": []}
    assert len(requests_of(router, "mod")) == 2
    panel = await runner.recruit(analysis)
    assert [e.persona.name for e in panel] == ["Marcus Hale", "Priya Raman", "Victor Crane"]
    assert [e.model for e in panel] == ["expert"] * 3
    [event] = of_type(run, "panel")
    assert "fallback_reason" not in event.data
    assert [x["name"] for x in event.data["experts"]] == ["Marcus Hale", "Priya Raman", "Victor Crane"]


# --------------------------------------------------------------------------------------------------------------
# 2. panel
# --------------------------------------------------------------------------------------------------------------

FOUR = ["information security", "economics", "clinical medicine", "education"]


@pytest.mark.parametrize(("domains", "size"), [([], 3), (FOUR[:1], 3), (FOUR[:2], 3), (FOUR[:3], 4), (FOUR, 5)])
async def test_default_panel_size_follows_the_number_of_domains(
    ctx: ProviderContext, clock: FakeClock, domains: list[str], size: int,
) -> None:
    router = make_router(ctx, [moderator(), experts()])
    run, runner = debate(router, clock, debate_cfg(), library=list(load_library()))
    panel = await runner.recruit({"domains": domains})
    assert len(panel) == size
    assert len({e.persona.name for e in panel}) == size
    assert of_type(run, "stage_started")[0].data == {"stage": "panel", "method": "library", "size": size}
    assert run.partial["panel"] == [e.public() for e in panel]


@pytest.mark.parametrize("n", [1, 2, 7])
async def test_experts_setting_is_honoured(ctx: ProviderContext, clock: FakeClock, n: int) -> None:
    router = make_router(ctx, [moderator(), experts()])
    _, runner = debate(router, clock, debate_cfg(experts=n), library=list(load_library()))
    assert len(await runner.recruit({"domains": FOUR})) == n


async def test_personas_restrict_the_panel_and_models_are_assigned_in_turn(
    ctx: ProviderContext, clock: FakeClock,
) -> None:
    allowed = ["Marcus Hale", "Elena Novak", "Samuel Osei", "Grace Mbeki"]
    router = make_router(ctx, [moderator(), mock("x"), mock("y")])
    _, runner = debate(router, clock, debate_cfg(models=["x", "y"], personas=allowed), library=list(load_library()))
    panel = await runner.recruit({"domains": ["clinical medicine"]})
    assert len(panel) == 3
    assert {e.persona.name for e in panel} <= set(allowed)
    assert panel[0].persona.name == "Samuel Osei"  # the one matching the domain
    assert [e.model for e in panel] == ["x", "y", "x"]

    _, runner = debate(router, clock, debate_cfg(personas=["Marcus Hale", "Elena Novak"]), library=list(load_library()))
    assert sorted(e.persona.name for e in await runner.recruit({"domains": FOUR})) == ["Elena Novak", "Marcus Hale"]


RECRUITS = {"experts": [
    {"name": "Dr Kay", "domain": "cryptography", "backstory": "Designs protocols.", "stance": "rigorous",
     "keywords": ["webauthn"]},
    {"name": "Lee Ford", "domain": "customer support", "backstory": "Runs a help desk.", "stance": "practical"},
    {"name": "Mo Said", "domain": "risk", "backstory": "Audits plans.", "stance": "sceptical"},
    {"name": "Extra One", "domain": "spare", "backstory": "Not needed.", "stance": "quiet"},
]}


async def test_recruit_by_model_uses_the_scripted_experts(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, [moderator(recruit=json.dumps(RECRUITS)), mock("x"), mock("y")])
    run, runner = debate(router, clock, debate_cfg(models=["x", "y"], recruit="model"))
    panel = await runner.recruit(ANALYSIS)
    assert [(e.persona.name, e.persona.domain, e.model) for e in panel] == [
        ("Dr Kay", "cryptography", "x"), ("Lee Ford", "customer support", "y"), ("Mo Said", "risk", "x")]
    assert panel[0].persona.keywords == ("webauthn",)
    [request] = requests_of(router, "mod")
    assert "Recruit 3 experts" in prompt_of(request)
    assert "Domains: information security, economics." in prompt_of(request)
    [event] = of_type(run, "panel")
    assert "fallback_reason" not in event.data
    assert [x["name"] for x in event.data["experts"]] == ["Dr Kay", "Lee Ford", "Mo Said"]


@pytest.mark.parametrize("reply", [
    "I would pick a cryptographer and a lawyer.",
    json.dumps({"experts": [RECRUITS["experts"][0], RECRUITS["experts"][0]]}),  # the same name twice
    json.dumps({"experts": [{"name": "No Domain"}]}),
])
async def test_garbage_recruit_falls_back_to_the_library(ctx: ProviderContext, clock: FakeClock, reply: str) -> None:
    router = make_router(ctx, [moderator(recruit=reply), experts()])
    run, runner = debate(router, clock, debate_cfg(recruit="model"))
    panel = await runner.recruit(ANALYSIS)
    assert sorted(e.persona.name for e in panel) == sorted(NAMES)
    assert len(requests_of(router, "mod")) == 2  # asked once more, then given up
    [event] = of_type(run, "panel")
    assert event.data["fallback_reason"].startswith(
        "recruiting by model failed (unparseable reply twice (")
    assert event.data["fallback_reason"].endswith("); the panel comes from the library")


# --------------------------------------------------------------------------------------------------------------
# 3. rounds
# --------------------------------------------------------------------------------------------------------------


async def test_rounds_show_the_others_positions_and_the_follow_up(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, [moderator(), experts()])
    run, runner = debate(router, clock, debate_cfg(rounds=2))
    result = await runner()
    assert result["stopped"] == "max_rounds" and result["rounds_held"] == 2
    for name in NAMES:
        first, second = expert_prompts(router, name)
        # Round 1: independent answers.
        for text in R1.values():
            assert text not in first
        # Round 2: its own previous position, and every other expert's but not its own as an "other".
        assert f"Your previous position:\n<<<\n{R1[name]}\n>>>" in second
        others = others_section(second)
        assert R1[name] not in others and f"{name} (" not in others
        for other in NAMES:
            if other != name:
                assert f"{other} (" in others and R1[other] in others
        assert "The moderator asks: What would it cost?" in second
    # The follow-up was asked once, after round 1.
    assert [e.data for e in of_type(run, "follow_up")] == [{"round": 1, "question": "What would it cost?"}]
    assert [r["follow_up"] for r in result["rounds"]] == [None, "What would it cost?"]


async def test_stance_lines_are_parsed_and_stripped(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, [moderator(), experts()])
    _, runner = debate(router, clock, debate_cfg(rounds=2))
    result = await runner()
    first, second = result["rounds"]
    assert [(p["expert"], p["stance"], p["text"]) for p in first["positions"]] == [
        (p["expert"], "initial", R1[p["expert"]]) for p in first["positions"]]
    by_name = {p["expert"]: p for p in second["positions"]}
    assert (by_name["Ada Stone"]["stance"], by_name["Ada Stone"]["text"]) == (
        "rebut", "ADA-R2: device loss is handled by recovery codes.")
    assert (by_name["Ben Cole"]["stance"], by_name["Ben Cole"]["text"]) == (
        "revise", "BEN-R2: a phased rollout keeps costs down.")
    assert (by_name["Cy Park"]["stance"], by_name["Cy Park"]["text"]) == ("hold", "CY-R2: recovery is the weak point.")
    assert all(p["error"] is None for p in second["positions"])


# --------------------------------------------------------------------------------------------------------------
# 4. convergence and stopping
# --------------------------------------------------------------------------------------------------------------


async def test_converged_after_round_one(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, [moderator(judge=agreement(0.9)), experts()])
    run, runner = debate(router, clock, debate_cfg(rounds=3))
    result = await runner()
    assert result["stopped"] == "converged" and result["rounds_held"] == 1
    assert result["rounds"][0]["convergence"] == 0.9
    assert len(requests_of(router, "expert")) == 3
    assert not of_type(run, "follow_up")
    assert of_type(run, "convergence")[0].data == {"round": 1, "score": 0.9, "threshold": 0.8}
    synth = [prompt_of(r) for r in requests_of(router, "mod") if "write the final answer" in prompt_of(r)]
    assert len(synth) == 1 and "The panel converged." in synth[0]


@pytest.mark.parametrize("later", [
    {name: f"STANCE: hold\n{name} holds a new wording." for name in NAMES},
    {name: R1[name] for name in NAMES},  # no STANCE line, the same text: unchanged
])
async def test_stable_when_every_position_holds(ctx: ProviderContext, clock: FakeClock, later: dict[str, str]) -> None:
    router = make_router(ctx, [moderator(judge=agreement(0.3)), experts(later=dict(later))])
    _, runner = debate(router, clock, debate_cfg(rounds=3))
    result = await runner()
    assert result["stopped"] == "stable" and result["rounds_held"] == 2
    assert len(requests_of(router, "expert")) == 6


async def test_max_rounds_when_positions_keep_changing(ctx: ProviderContext, clock: FakeClock) -> None:
    later: dict[str, str | list[str]] = {
        name: [f"STANCE: revise\n{name} second thoughts on recovery.", f"STANCE: revise\n{name} third: cost wins."]
        for name in NAMES}
    router = make_router(ctx, [moderator(judge=agreement(0.3)), experts(later=later)])
    run, runner = debate(router, clock, debate_cfg(rounds=3))
    result = await runner()
    assert result["stopped"] == "max_rounds" and result["rounds_held"] == 3
    assert [r["convergence"] for r in result["rounds"]] == [0.3, 0.3, 0.3]
    assert len(requests_of(router, "expert")) == 9
    assert [e.data["round"] for e in of_type(run, "follow_up")] == [1, 2]  # none after the last round
    assert result["rounds"][2]["positions"][0]["text"].endswith("third: cost wins.")


async def test_an_unparseable_judge_is_reported_and_the_debate_goes_on(
    ctx: ProviderContext, clock: FakeClock,
) -> None:
    router = make_router(ctx, [moderator(judge="They mostly agree."), experts()])
    run, runner = debate(router, clock, debate_cfg(rounds=2))
    result = await runner()
    assert result["rounds_held"] == 2 and result["stopped"] == "max_rounds"
    events = [e.data for e in of_type(run, "convergence")]
    assert [(e["round"], e["score"]) for e in events] == [(1, None), (2, None)]
    assert all(e["error"].startswith("unparseable reply twice (") for e in events)
    judged = [r for r in requests_of(router, "mod") if "How much do they agree" in prompt_of(r)]
    assert len(judged) == 4  # asked twice in each round


# --------------------------------------------------------------------------------------------------------------
# 5/6. synthesis and plan
# --------------------------------------------------------------------------------------------------------------


async def test_synthesis_is_streamed_and_the_plan_documents_are_written(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, [moderator(judge=agreement(0.9)), experts()])
    run, runner = debate(router, clock, debate_cfg(plan=True))
    result = await runner()
    assert result["answer"] == SYNTHESIS
    tokens = [e.data["text"] for e in of_type(run, "synthesis_token")]
    assert len(tokens) > 1 and "".join(tokens) == SYNTHESIS
    assert run.documents == {"plan.md": PLAN, "tasks.md": TASKS}
    assert result["documents"] == ["plan.md", "tasks.md"]
    assert [e.data for e in of_type(run, "document")] == [{"name": "plan.md", "chars": len(PLAN)},
                                                          {"name": "tasks.md", "chars": len(TASKS)}]
    prompts = [prompt_of(r) for r in requests_of(router, "mod")]
    synth = next(p for p in prompts if "write the final answer" in p)
    for name in NAMES:
        assert R1[name] in synth
    plan_prompt = next(p for p in prompts if "Turn it into a plan" in p)
    assert SYNTHESIS in plan_prompt
    tasks_prompt = next(p for p in prompts if "Write the task list" in p)
    assert PLAN in tasks_prompt
    assert [e.data["stage"] for e in of_type(run, "stage_started")] == [
        "analysis", "panel", "round 1", "synthesis", "planning"]


async def test_a_failing_planner_keeps_the_debate_answer(
    ctx: ProviderContext, clock: FakeClock, fake_openai: FakeUpstream,
) -> None:
    # The moderator is a fake upstream answering in order: analysis, convergence, synthesis (streamed), plan.
    fake_openai.queue(Reply(json=oa.completion(json.dumps(ANALYSIS))), Reply(json=oa.completion(agreement(0.9))),
                      Reply(sse=oa.stream_events(["Adopt", " passkeys."])), oa.error(500, "planner down"))
    mod = {"name": "mod", "provider": "openai", "model": "fake-model", "base_url": fake_openai.url + "/v1",
           "api_key": "sk-x"}
    router = make_router(ctx, [mod, experts()])
    _, runner = debate(router, clock, debate_cfg(plan=True))
    try:
        result = await runner()
    finally:
        assert len(fake_openai.requests) == 4
        assert "Turn it into a plan" in fake_openai.requests[3].json["messages"][-1]["content"]
    assert result["answer"] == "Adopt passkeys."


# --------------------------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------------------------


async def test_an_expert_failing_in_a_round_keeps_its_previous_position(
    ctx: ProviderContext, clock: FakeClock, fake_openai: FakeUpstream,
) -> None:
    fake_openai.queue(Reply(json=oa.completion(R1["Ben Cole"])), oa.error(500, "boom"),
                      Reply(json=oa.completion("STANCE: revise\nBEN-R3: fund recovery support.")))
    flaky = {"name": "flaky", "provider": "openai", "model": "fake-model", "base_url": fake_openai.url + "/v1",
             "api_key": "sk-x"}
    ben = Persona(BEN.name, BEN.domain, BEN.backstory, BEN.stance, model="flaky", keywords=BEN.keywords)
    later: dict[str, str | list[str]] = {
        name: [f"STANCE: revise\n{name} round two.", f"STANCE: revise\n{name} round three."] for name in NAMES}
    router = make_router(ctx, [moderator(), experts(later=later), flaky])
    run, runner = debate(router, clock, debate_cfg(rounds=3), library=[ADA, ben, CY])
    result = await runner()
    assert result["rounds_held"] == 3
    ben_positions = [next(p for p in r["positions"] if p["expert"] == "Ben Cole") for r in result["rounds"]]
    assert [(p["model"], p["stance"], p["text"]) for p in ben_positions] == [
        ("flaky", "initial", R1["Ben Cole"]), ("flaky", "absent", R1["Ben Cole"]),
        ("flaky", "revise", "BEN-R3: fund recovery support.")]
    assert ben_positions[1]["error"] == "upstream flaky answered 500: boom"
    assert ben_positions[2]["error"] is None
    # Round 3: the others still see Ben's round-1 position; Ben is shown its kept position as its own.
    third = expert_prompts(router, "Ada Stone")[2]
    assert R1["Ben Cole"] in others_section(third)
    ben_round3 = fake_openai.requests[2].json["messages"][-1]["content"]
    assert f"Your previous position:\n<<<\n{R1['Ben Cole']}\n>>>" in ben_round3
    [failed] = [e.data for e in of_type(run, "model_failed")]
    assert (failed["stage"], failed["role"], failed["model"]) == ("round 2", "Ben Cole", "flaky")
    round2 = next(e.data for e in of_type(run, "round") if e.data["round"] == 2)
    assert {"expert": "Ben Cole", "model": "flaky", "stance": "absent", "text": R1["Ben Cole"],
            "error": "upstream flaky answered 500: boom"} in round2["positions"]


async def test_every_expert_failing_in_round_one_fails_the_run(ctx: ProviderContext, clock: FakeClock) -> None:
    router = make_router(ctx, [moderator(), experts(fail_first=1000, fail_status=500)])
    run, runner = debate(router, clock, debate_cfg())
    with pytest.raises(RunFailedError) as info:
        await runner()
    message = info.value.message
    assert message.startswith("Every expert failed in round 1 (")
    for name in NAMES:
        assert f"{name} (expert): upstream expert answered 500: mock failure (failure injection)" in message
    assert len(requests_of(router, "expert")) == 3
    assert not of_type(run, "round")
    assert not [r for r in requests_of(router, "mod") if "write the final answer" in prompt_of(r)]
