"""Models from the environment when there is no config file, and the offline demo models."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from typing import Any

from .agents.config import AgentConfig, ToolRef
from .config import DebateConfig, DeploymentConfig, EnsembleConfig, GatewayConfig, GroupConfig, KnowledgeConfig
from .demo_evals import GRADER_RULES, JUDGE_RULES, PANEL_ANSWERS, QUICK_ANSWERS, QUICK_DEFAULT

__all__ = ["NO_MODELS_HELP", "demo_config", "discover", "merge"]

NO_MODELS_HELP = (
    "No models are configured. Add one of:\n"
    "  - a config file:     thinktank serve --config thinktank.yaml   (see README: 'Configuration')\n"
    "  - a provider key:    export OPENAI_API_KEY=... (or ANTHROPIC_API_KEY, GEMINI_API_KEY, ...)\n"
    "  - a local Ollama:    ollama serve   (thinktank looks at OLLAMA_HOST or 127.0.0.1:11434)\n"
    "  - offline mock models to try everything: thinktank serve --demo"
)

# (environment variable, provider, models registered when it is set)
_KEYED: list[tuple[tuple[str, ...], str, list[str]]] = [
    (("OPENAI_API_KEY",), "openai", ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o4-mini"]),
    (("ANTHROPIC_API_KEY",), "anthropic", ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]),
    (("GEMINI_API_KEY", "GOOGLE_API_KEY"), "gemini", ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.0-flash"]),
    (("MISTRAL_API_KEY",), "mistral", ["mistral-large-latest", "mistral-small-latest"]),
    (("GROQ_API_KEY",), "groq", ["llama-3.3-70b-versatile", "llama-3.1-8b-instant"]),
    (("DEEPSEEK_API_KEY",), "deepseek", ["deepseek-chat", "deepseek-reasoner"]),
    (("OPENROUTER_API_KEY",), "openrouter", ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4.5"]),
]
_EMBEDDINGS = {"openai": ["text-embedding-3-small", "text-embedding-3-large"]}


def _ollama_models(environ: Mapping[str, str], timeout: float) -> list[str]:
    host = environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    if not host.startswith(("http://", "https://")):
        host = "http://" + host
    try:
        with urllib.request.urlopen(host.rstrip("/") + "/api/tags", timeout=timeout) as resp:  # noqa: S310
            data: Any = json.loads(resp.read())
    except (OSError, ValueError):
        return []
    models = data.get("models", []) if isinstance(data, dict) else []
    return [m["name"] for m in models if isinstance(m, dict) and isinstance(m.get("name"), str)]


def discover(environ: Mapping[str, str], *, probe_ollama: bool = True, timeout: float = 0.3) -> GatewayConfig:
    """Register the common models of every provider whose usual environment variable is set."""
    models: list[DeploymentConfig] = []
    for env_names, provider, names in _KEYED:
        var = next((v for v in env_names if environ.get(v)), None)
        if var is None:
            continue
        for name in names:
            models.append(DeploymentConfig(name=name, provider=provider, api_key_env=var))
        for name in _EMBEDDINGS.get(provider, []):
            models.append(DeploymentConfig(name=name, provider=provider, api_key_env=var, mode="embedding"))
    if probe_ollama:
        for name in _ollama_models(environ, timeout):
            models.append(DeploymentConfig(name=f"ollama/{name}", provider="ollama", model=name))
    return GatewayConfig(models=models)


def demo_config() -> GatewayConfig:
    """Clearly labelled mock models that answer offline, to try every feature without a key."""

    def mock(name: str, description: str, **options: Any) -> DeploymentConfig:
        return DeploymentConfig(
            name=name, provider="mock", model=name, description=f"MOCK (offline demo): {description}",
            context_window=32000, options=options,
        )

    models = [
        mock("demo/echo", "echoes your last message"),
        mock("demo/fast", "answers at once", replies=["This is a scripted demo answer from demo/fast."]),
        mock("demo/slow", "answers after 1.5 s, streams word by word", latency=1.5, chunk_delay=0.05),
        mock("demo/flaky", "fails half of the time (retries and fallbacks at work)", fail_rate=0.5, seed=7),
        mock("demo/embed", "deterministic hash embeddings", embedding_dimensions=16).model_copy(
            update={"mode": "embedding"}
        ),
        mock("demo/librarian", "answers kb/<name> questions by quoting the best passage", rules=_LIBRARIAN),
        mock("demo/researcher", "an agent's brain: searches your documents, fetches a URL you name, then answers",
             rules=_RESEARCHER),
        # The evaluation demo (thinktank eval answers --demo): see demo_evals.py.
        mock("demo/quick", "answers the sample evaluation's questions at once, mostly right", latency=0.05,
             rules=QUICK_ANSWERS, replies=[QUICK_DEFAULT]),
        mock("demo/judge", "a pairwise judge preferring the answer that states the reference's key fact (else the "
                           "first shown); grades rubrics too", rules=JUDGE_RULES,
             replies=['{"reason": "MOCK demo/judge: not a judging prompt.", "winner": "tie"}']),
        mock("demo/grader", "grades rubric checks PASS or FAIL by the reference's key fact", rules=GRADER_RULES,
             replies=["MOCK demo/grader: not a grading prompt.\nFAIL"]),
    ]
    groups = [GroupConfig(name="demo/auto", models=["demo/flaky"], fallbacks=["demo/fast"])]
    panel = [
        mock(f"demo/{name}", f"a scripted panelist ({view})", latency=latency, chunk_delay=0.01,
             replies=[answer], rules=[*_DEMO_RULES, *PANEL_ANSWERS, _SYNTHESIS])
        for name, view, latency, answer in _DEMO_PANEL
    ]
    ensembles = [EnsembleConfig(
        name="demo-council", members=[m.name for m in panel], strategy="peer_review", chairman="demo/alpha",
        description="MOCK (offline demo): three scripted models answer, rank each other blind, a chairman fuses",
    )]
    debates = [DebateConfig(
        name="demo-panel", models=[m.name for m in panel], rounds=3,
        description="MOCK (offline demo): a scripted expert panel debates, converges and synthesises",
    )]
    agents = [AgentConfig(
        name="demo-researcher", model="demo/researcher",
        tools=["knowledge_search", ToolRef(name="fetch_url", approval="required"), "current_time"],
        description="MOCK (offline demo): searches your knowledge bases, fetches a page after you approve, answers",
    )]
    return GatewayConfig(models=[*models, *panel], groups=groups, ensembles=ensembles, debates=debates,
                         knowledge=KnowledgeConfig(model="demo/librarian"), agents=agents)


# The demo librarian: quotes the first sentence of the best passage it is given, citing it.
_LIBRARIAN: list[dict[str, Any]] = [
    {"match": r"no passages in the knowledge bases matched",
     "reply": "Your documents contain nothing about that. (MOCK demo answer: no passage matched.)"},
    {"match": r'<passage-[0-9a-f]+ id="1"[^>]*>\s*(?P<text>[^<]{1,400}?[.!?])(?=\s|<)', "template": True,
     "reply": "According to your documents: \\g<text> [1]\n\n(MOCK demo answer: the librarian quotes the best "
              "passage it was given.)"},
    {"match": r'<passage-[0-9a-f]+ id="1"[^>]*>\s*(?P<text>[^<]{1,240})', "template": True,  # no sentence end
     "reply": "According to your documents: \\g<text>… [1]\n\n(MOCK demo answer: the librarian quotes the best "
              "passage it was given.)"},
]


# The demo researcher (the brain of agent/demo-researcher): before any tool result, it searches the knowledge
# bases for the question and fetches the first URL in it; then it answers from what the tools returned.
_FIRST = r"(?s)^(?!.*<tool_result tool=)(?!.*Tool error)"
_LAST_LINE = r".*\n(?P<q>[^\n]*?)"
_URL = r"(?P<url>https?://[^\s\"'<>]+?)[.,;:!?)]*(?=\s|$)"
_RESEARCHER: list[dict[str, Any]] = [
    {"match": _FIRST + _LAST_LINE + _URL, "template": True, "tool_calls": [
        {"name": "knowledge_search", "arguments": {"query": "\\g<q>"}},
        {"name": "fetch_url", "arguments": {"url": "\\g<url>"}}]},
    {"match": _FIRST + r".*\n(?P<q>[^\n]+)$", "template": True, "tool_calls": [
        {"name": "knowledge_search", "arguments": {"query": "\\g<q>"}}]},
    {"match": r'(?s)tool_result tool="knowledge_search">\s*\[(?P<n>\d+)\][^\n]*\n(?P<kb>[^\n]{1,300}?[.!?])(?=\s).*'
              r'tool_result tool="fetch_url">\s*Title: (?P<title>[^\n]*)\n.*?\n\n(?P<page>[^\n]{1,300}?[.!?])(?=\s)',
     "template": True, "reply": "From your documents: \\g<kb> [\\g<n>]\n\nFrom the page \"\\g<title>\": \\g<page>\n\n"
                                "(MOCK demo answer: the researcher quotes what its tools returned.)"},
    {"match": r'(?s)tool_result tool="knowledge_search">\s*\[(?P<n>\d+)\][^\n]*\n(?P<kb>[^\n]{1,300}?[.!?])(?=\s)'
              r'.*(?:Tool error|denied this call)[^\n]*?(?P<why>(?:fetch_url: )?[^\n]*)',
     "template": True, "reply": "From your documents: \\g<kb> [\\g<n>]\n\nThe page could not be read: \\g<why>\n\n"
                                "(MOCK demo answer: the researcher quotes what its tools returned.)"},
    {"match": r'(?s)tool_result tool="knowledge_search">\s*\[(?P<n>\d+)\][^\n]*\n(?P<kb>[^\n]{1,300}?[.!?])(?=\s)',
     "template": True, "reply": "From your documents: \\g<kb> [\\g<n>]\n\n(MOCK demo answer: the researcher quotes "
                                "what its tools returned.)"},
    {"match": r"The user denied this call: (?P<why>[^\n]*?)\. Do not", "template": True,
     "reply": "You did not let me read the page (\\g<why>), and your documents had nothing on it. (MOCK demo answer.)"},
    {"match": r"Tool error: fetch_url: (?P<why>[^\n]*)", "template": True,
     "reply": "The page could not be read: \\g<why> (MOCK demo answer.)"},
    {"match": r"tool_result", "reply": "Your documents and the page had nothing on that. (MOCK demo answer.)"},
]


# The demo panel's scripted replies: what each step of an ensemble or a debate asks for. The panel also answers the
# sample evaluation's questions (demo_evals.PANEL_ANSWERS, before the chairman's synthesis rule, so that the council's
# synthesis of such a question is the panel's answer, and after the debate's steps, which quote the question).
_DEMO_RULES: list[dict[str, Any]] = [
    {"match": r"FINAL RANKING:", "reply": "Response A is more complete and concrete; Response B is thinner.\n\n"
                                          "FINAL RANKING:\n1. Response A\n2. Response B"},
    {"match": r"Classify this question", "reply":
        '{"domains": ["software architecture", "operations"], "kind": "decision", "needs": ["trade-offs"]}'},
    {"match": r"How much do they agree", "replies": ['{"agreement": 0.55}', '{"agreement": 0.9}']},
    {"match": r"pose one short follow-up", "reply": "What would make you change your recommendation?"},
    {"match": r"STANCE: revise", "reply": "STANCE: revise\nAgreed on starting simple; measure before adding parts."},
    {"match": r"write the final answer for the person who asked", "reply":
        "## Answer\nStart simple and measure.\n## Points of agreement\n- Keep operations small.\n"
        "## Remaining disagreements\n- How early to add a cache.\n## Confidence\nModerate (scripted demo)."},
    {"match": r"Turn it into a plan", "reply":
        "# Plan\n## Goal\nShip v1.\n## Context\nDemo.\n## Approach\nStart simple.\n## Risks\n- Load: measure.\n"
        "## Milestones\n1. Prototype running."},
    {"match": r"Write the task list", "reply":
        "# Tasks\n1. Set up the database. **Owner role**: engineer. **Depends on**: none. "
        "**Acceptance criteria**: migrations run."},
]
_SYNTHESIS: dict[str, Any] = {"match": r"Several anonymous experts answered", "reply":
    "Start with a managed PostgreSQL database and one well-tested service; add a cache only where "
    "measurements show it pays. This keeps operations simple while leaving room to scale."}
_DEMO_PANEL = [
    ("alpha", "pragmatic", 0.2, "Use PostgreSQL and a single service first; it is simple to run and to change."),
    ("beta", "cautious", 0.35, "Begin with SQLite for the prototype, then move to PostgreSQL when traffic grows."),
    ("gamma", "ambitious", 0.5, "Plan for scale now: PostgreSQL, Redis for caching and a queue for slow work."),
]


def merge(base: GatewayConfig, extra: GatewayConfig) -> GatewayConfig:
    """``base`` with ``extra``'s models, groups, aliases, ensembles, debates, personas, agents and MCP servers
    added."""
    return GatewayConfig.model_validate({
        **base.model_dump(), "models": [*base.models, *extra.models], "groups": [*base.groups, *extra.groups],
        "aliases": {**base.aliases, **extra.aliases}, "ensembles": [*base.ensembles, *extra.ensembles],
        "debates": [*base.debates, *extra.debates], "personas": [*base.personas, *extra.personas],
        "agents": [*base.agents, *extra.agents], "mcp_servers": [*base.mcp_servers, *extra.mcp_servers],
        # What ``base`` sets of the knowledge section wins; the rest comes from ``extra``.
        "knowledge": {**extra.knowledge.model_dump(exclude_defaults=True),
                      **base.knowledge.model_dump(exclude_defaults=True)},
    })
