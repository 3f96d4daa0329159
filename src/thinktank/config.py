"""Settings from the environment and the YAML gateway configuration.

``Settings`` (``THINKTANK_*`` variables) say where thinktank runs; the YAML file says which
models it serves. Errors in the YAML name the file, the entry and the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from .accounts.config import PricingConfig, RateLimitsConfig
from .agents.config import AgentConfig, McpServerConfig, unknown_tool
from .alerts.config import AlertsConfig
from .bounds import OutputTokens
from .cache.config import CacheConfig
from .errors import ConfigError
from .names import find_cycle, is_kb_name
from .settings import Settings, default_data_dir

__all__ = [
    "ConversationsConfig",
    "DebateConfig",
    "DeploymentConfig",
    "EnsembleConfig",
    "GatewayConfig",
    "GroupConfig",
    "KnowledgeConfig",
    "MemoryConfig",
    "PersonaConfig",
    "RouterConfig",
    "Settings",
    "Strategy",
    "TierConfig",
    "default_data_dir",
    "load_config",
    "parse_config",
]

Strategy = Literal["weighted", "least_busy", "lowest_latency", "cheapest"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentConfig(_In):
    """One upstream model that can answer under a public name."""

    name: str = Field(min_length=1, max_length=256)
    provider: str = Field(min_length=1)
    model: str | None = None
    """The upstream's model id (defaults to ``name``)."""
    id: str | None = None
    """A unique id for this deployment (defaults to ``name``, numbered when a name repeats)."""
    base_url: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    api_version: str | None = None
    mode: Literal["chat", "embedding"] = "chat"
    input_price: float | None = Field(default=None, ge=0)
    """USD per million input tokens."""
    output_price: float | None = Field(default=None, ge=0)
    """USD per million output tokens."""
    context_window: int | None = Field(default=None, ge=1)
    weight: float = Field(default=1.0, gt=0)
    tags: list[str] = Field(default_factory=list)
    timeout: float | None = Field(default=None, gt=0)
    """Per-try timeout in seconds for this deployment (overrides ``router.timeout``)."""
    headers: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    """Provider-specific options (e.g. scripted replies for ``mock``)."""
    description: str | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _one_key_source(self) -> DeploymentConfig:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("give api_key or api_key_env, not both")
        return self

    @property
    def upstream_model(self) -> str:
        return self.model or self.name

    def resolve_api_key(self, environ: dict[str, str] | None = None) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env is not None:
            env = os.environ if environ is None else environ
            value = env.get(self.api_key_env)
            if not value:
                raise ConfigError(
                    f"model '{self.name}': api_key_env: environment variable {self.api_key_env} is not set"
                )
            return value
        return None


class GroupConfig(_In):
    """A public model name served by several deployments, with a strategy and fallbacks."""

    name: str = Field(min_length=1, max_length=256)
    models: list[str] = Field(default_factory=list)
    """Deployment names (or ids) in the group; empty means the deployments named like the group."""
    strategy: Strategy | None = None
    fallbacks: list[str] = Field(default_factory=list)
    context_window_fallbacks: list[str] = Field(default_factory=list)


class RouterConfig(_In):
    num_retries: int = Field(default=2, ge=0, le=10)
    timeout: float = Field(default=60.0, gt=0)
    """Per-try timeout in seconds (for streams: time to the first chunk, then between chunks)."""
    deadline: float = Field(default=300.0, gt=0)
    """Overall seconds for a request, retries and fallbacks included."""
    backoff_base: float = Field(default=0.5, ge=0)
    backoff_max: float = Field(default=8.0, ge=0)
    retry_after_max: float = Field(default=60.0, ge=0)
    allowed_fails: int = Field(default=3, ge=1)
    """Consecutive failures after which a deployment cools down."""
    cooldown: float = Field(default=30.0, ge=0)
    strategy: Strategy = "weighted"


class TierConfig(_In):
    """A rate-limit tier users can be put in (``users.tier``), e.g. free: {requests_per_day: 10}."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    requests_per_day: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)


_MAX_CACHE_TTL = 366 * 86400.0
"""A year: how long a run may answer an identical later request at most."""

RankingStrategy = Literal["heuristic", "rubric", "peer_review", "pairwise"]
Aggregation = Literal["borda", "bradley_terry"]
RUBRIC = ("relevance", "completeness", "clarity", "accuracy")


def _judge_shortcut(data: Any) -> Any:
    """``judge: m`` is ``judges: [m]``."""
    if isinstance(data, dict) and "judge" in data:
        data = dict(data)
        judge = data.pop("judge")
        if judge is not None:
            if data.get("judges"):
                raise ValueError("give judge or judges, not both")
            data["judges"] = [judge] if isinstance(judge, str) else judge
    return data


class EnsembleConfig(_In):
    """Several models answer at once; the answers are ranked; the best one or a synthesis comes back."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a request's overrides are validated here

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    members: list[str] = Field(min_length=1, max_length=16)
    strategy: RankingStrategy = "peer_review"
    judges: list[str] = Field(default_factory=list, max_length=8)
    """Judge models for ``rubric`` and ``pairwise`` (``judge: m`` is a shortcut for one)."""
    aggregate: Aggregation = "borda"
    weights: dict[str, Annotated[float, Field(le=1000)]] = Field(
        default_factory=lambda: {"relevance": 0.3, "completeness": 0.25, "clarity": 0.2, "accuracy": 0.25}
    )
    """Rubric weights; keys among relevance, completeness, clarity, accuracy."""
    synthesis: Literal["chairman", "best"] | None = None
    """``chairman`` fuses the top answers, ``best`` returns the top one unchanged (default: chairman if set)."""
    chairman: str | None = None
    top_k: int = Field(default=3, ge=1, le=16)
    member_timeout: float = Field(default=120.0, gt=0, le=3600)
    judge_timeout: float = Field(default=120.0, gt=0, le=3600)
    max_tokens: OutputTokens | None = None
    """max_tokens for each member's answer (the request's own max_tokens wins)."""
    cache_ttl: float = Field(default=3600.0, ge=0, le=_MAX_CACHE_TTL)
    """Seconds an identical request may be served from an earlier run, when the caller allows it."""
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _judge(cls, data: Any) -> Any:
        return _judge_shortcut(data)

    @model_validator(mode="after")
    def _consistent(self) -> EnsembleConfig:
        if self.strategy in ("rubric", "pairwise") and not self.judges:
            raise ValueError(f"strategy '{self.strategy}' needs a judge model (judge: or judges:)")
        unknown = set(self.weights) - set(RUBRIC)
        if unknown:
            raise ValueError(f"weights: unknown criterion {sorted(unknown)[0]!r}; use {', '.join(RUBRIC)}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("weights: must be non-negative with a positive total")
        if self.synthesis == "chairman" and not self.chairman:
            raise ValueError("synthesis 'chairman' needs a chairman model")
        if self.synthesis is None:
            self.synthesis = "chairman" if self.chairman else "best"
        return self

    def models(self) -> list[str]:
        return [*self.members, *self.judges, *([self.chairman] if self.chairman else [])]


class PersonaConfig(_In):
    """A debate expert of your own (beside the shipped library)."""

    name: str = Field(min_length=1, max_length=100)
    domain: str = Field(min_length=1, max_length=200)
    backstory: str = Field(min_length=1, max_length=4000)
    stance: str = Field(default="balanced", max_length=500)
    model: str | None = None
    keywords: list[str] = Field(default_factory=list)


class DebateConfig(_In):
    """A panel of expert personas argues over rounds; a moderator synthesises."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a request's overrides are validated here

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    models: list[str] = Field(min_length=1, max_length=16)
    """The models the experts run on, assigned in turn (a persona's own model wins)."""
    moderator: str | None = None
    """Synthesis and follow-up questions (default: the first model)."""
    analyst: str | None = None
    """Classifies the question and recruits (default: the moderator)."""
    judge: str | None = None
    """Scores agreement after each round (default: the moderator)."""
    experts: int | None = Field(default=None, ge=1, le=8)
    """Panel size; default: 3 to 5, one per domain the analysis finds plus a sceptic."""
    rounds: int = Field(default=3, ge=1, le=10)
    convergence: float = Field(default=0.8, gt=0, le=1)
    """Agreement score (0-1) at which the debate stops as converged."""
    recruit: Literal["library", "model"] = "library"
    personas: list[str] = Field(default_factory=list)
    """Restrict the panel to these personas (names from the library or ``personas:``)."""
    follow_up: bool = True
    """The moderator poses a follow-up question between rounds."""
    plan: bool = False
    """Write plan.md and tasks.md from the outcome."""
    expert_timeout: float = Field(default=120.0, gt=0, le=3600)
    cache_ttl: float = Field(default=3600.0, ge=0, le=_MAX_CACHE_TTL)
    description: str | None = None

    @property
    def moderator_model(self) -> str:
        return self.moderator or self.models[0]

    def models_used(self) -> list[str]:
        return [*self.models, *(m for m in (self.moderator, self.analyst, self.judge) if m)]


class KnowledgeConfig(_In):
    """Answers grounded in knowledge bases (``knowledge_bases`` on a chat request, or a ``kb/<name>`` model)."""

    model: str | None = None
    """The model that answers for ``kb/<name>`` (default: the first chat model configured)."""
    rerank_model: str | None = None
    """A model that reorders the retrieved passages by relevance before they are given (default: none)."""
    top_k: int = Field(default=6, ge=1, le=50)
    """Passages given to the answering model (a request's ``knowledge.top_k`` wins)."""
    max_context_tokens: int = Field(default=3000, ge=100, le=200_000)
    """Estimated tokens of passages at most; the last passage is cut to fit."""


class ConversationsConfig(_In):
    """Threads: how much of a conversation goes into a prompt before older turns are summarised."""

    context_window: int = Field(default=8192, ge=256)
    """Tokens a thread's prompt may use when the model's deployments give no ``context_window``."""
    reply_tokens: int = Field(default=1024, ge=16)
    """Room kept for the reply (a message's own ``max_tokens`` replaces it)."""
    summary_model: str | None = None
    """The model that writes rolling summaries (default: the thread's model)."""
    summary_tokens: int = Field(default=512, ge=32, le=8192)
    """The longest summary."""
    summary_ahead: float = Field(default=0.9, ge=0.0, le=1.0)
    """After a turn, the rolling summary is written ahead of need (a ``thread.summarise`` job) once the history
    not yet summarised passes this share of the room the next turn is expected to have (the room this turn had,
    for a message of the thread's average size); 0: never ahead, the turn that needs a summary writes it."""
    persona_tokens: int = Field(default=2000, ge=64)
    """A persona's text is cut to this many tokens (a persona document can be long)."""


class MemoryConfig(_In):
    """The learned profile: facts, interests and preferences extracted from users' messages."""

    enabled: bool = True
    """For users who have not switched it on or off themselves."""
    model: str | None = None
    """The model that extracts memories (default: the thread's model)."""
    max_injected: int = Field(default=8, ge=0, le=100)
    """How many memories (the most relevant to the new message) go into a prompt."""
    duplicate_similarity: float = Field(default=0.9, gt=0, le=1)
    """Cosine (local embedder) at or above which a new memory is the same as a known one."""
    max_per_user: int = Field(default=1000, ge=1)
    """Beyond this, the least recently confirmed memories are forgotten."""


class GatewayConfig(_In):
    models: list[DeploymentConfig] = Field(default_factory=list)
    tiers: dict[str, TierConfig] = Field(default_factory=dict)
    ip_rpm: int | None = Field(default=None, ge=1)
    """Requests per minute from one client address (all credentials together)."""
    rate_limits: RateLimitsConfig = Field(default_factory=RateLimitsConfig)
    """How the request and token limits count: fixed or sliding windows."""
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    """A default price for models without one, and the answer length budget holds assume."""
    groups: list[GroupConfig] = Field(default_factory=list)
    aliases: dict[str, str] = Field(default_factory=dict)
    router: RouterConfig = Field(default_factory=RouterConfig)
    ensembles: list[EnsembleConfig] = Field(default_factory=list)
    debates: list[DebateConfig] = Field(default_factory=list)
    personas: list[PersonaConfig] = Field(default_factory=list)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    conversations: ConversationsConfig = Field(default_factory=ConversationsConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    agents: list[AgentConfig] = Field(default_factory=list)
    mcp_servers: list[McpServerConfig] = Field(default_factory=list)
    alerts: AlertsConfig | None = None
    """Budget and cooldown alerts to a webhook and/or by email (none without this section)."""
    cache: CacheConfig = Field(default_factory=CacheConfig)
    """The response cache (``thinktank.cache.config``)."""

    def catalog_names(self) -> set[str]:
        """Every model name the configuration defines: deployments (and their ids), groups, aliases,
        ``ensemble/<name>`` and ``debate/<name>`` (knowledge bases, ``kb/<name>``, are data, not config)."""
        return ({d.name for d in self.models} | {d.id for d in self.models if d.id} | {g.name for g in self.groups}
                | set(self.aliases) | {f"ensemble/{e.name}" for e in self.ensembles}
                | {f"debate/{d.name}" for d in self.debates} | {f"agent/{a.name}" for a in self.agents})

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        names = {d.name for d in self.models} | {d.id for d in self.models if d.id}
        groups = {g.name for g in self.groups}
        ids: set[str] = set()
        for d in self.models:
            if d.id is not None:
                if d.id in ids:
                    raise ValueError(f"duplicate deployment id '{d.id}'")
                ids.add(d.id)
        for g in self.groups:
            if not g.models and g.name not in names:
                raise ValueError(f"group '{g.name}': no models listed and no model is named '{g.name}'")
            for m in g.models:
                if m not in names:
                    raise ValueError(f"group '{g.name}': unknown model '{m}'")
            for f in [*g.fallbacks, *g.context_window_fallbacks]:
                if f not in names and f not in groups and f not in self.aliases:
                    raise ValueError(f"group '{g.name}': unknown fallback '{f}'")
        for alias, target in self.aliases.items():
            if target not in names and target not in groups:
                raise ValueError(f"alias '{alias}': unknown model '{target}'")
        known = self.catalog_names()
        seen: set[tuple[str, str]] = set()
        for kind, name, used in [
            *(("ensemble", e.name, e.models()) for e in self.ensembles),
            *(("debate", d.name, d.models_used()) for d in self.debates),
            *(("agent", a.name, a.models_used()) for a in self.agents),
            *(("persona", p.name, [p.model] if p.model else []) for p in self.personas),
        ]:
            if kind != "persona":
                if (kind, name) in seen:
                    raise ValueError(f"duplicate {kind} '{name}'")
                seen.add((kind, name))
            for m in used:
                if m not in known and not is_kb_name(m):
                    raise ValueError(f"{kind} '{name}': unknown model '{m}'")
        unknown = self.cache.unknown_model(known)
        if unknown is not None:
            raise ValueError(f"cache: models: unknown model '{unknown}'")
        for key in ("model", "rerank_model"):
            m = getattr(self.knowledge, key)
            if m is not None and m not in known and not is_kb_name(m):
                raise ValueError(f"knowledge: {key}: unknown model '{m}'")
        return self

    @model_validator(mode="after")
    def _no_cycles(self) -> GatewayConfig:
        """No name may reach itself: ``ensemble/a`` -> ``ensemble/b`` -> ``ensemble/a``, or the knowledge
        model being an ensemble with a ``kb/...`` member."""
        graph: dict[str, list[str]] = {f"ensemble/{e.name}": e.models() for e in self.ensembles}
        for d in self.debates:
            own = [p.model for p in self.personas if p.model and (not d.personas or p.name in d.personas)]
            graph[f"debate/{d.name}"] = [*d.models_used(), *own]
        for a in self.agents:
            graph[f"agent/{a.name}"] = a.models_used()
        answering = self.knowledge.model or next((d.name for d in self.models if d.mode == "chat"), None)

        def uses(name: str) -> list[str]:
            if is_kb_name(name):
                return [answering] if answering else []
            return graph.get(name, [])

        for name in [*graph, *([answering] if answering else [])]:
            why = find_cycle(name, uses)
            if why is not None:
                raise ValueError(why)
        return self

    @model_validator(mode="after")
    def _agent_tools(self) -> GatewayConfig:
        """Every tool an agent lists is a built-in one or a tool of a configured MCP server."""
        servers = {s.name for s in self.mcp_servers}
        if len(servers) != len(self.mcp_servers):
            raise ValueError("two mcp_servers have the same name")
        for a in self.agents:
            why = unknown_tool(a, servers)
            if why is not None:
                raise ValueError(f"agent '{a.name}': {why}")
        return self

    @model_validator(mode="after")
    def _conversation_models(self) -> GatewayConfig:
        known = self.catalog_names()
        for where, m in (("conversations: summary_model", self.conversations.summary_model),
                         ("memory: model", self.memory.model)):
            if m is not None and m not in known and not is_kb_name(m):
                raise ValueError(f"{where}: unknown model '{m}'")
        return self


def _describe_location(data: Any, loc: tuple[int | str, ...]) -> str:
    """``models[1] ('gpt-4o'): base_url`` for a pydantic error location."""
    parts: list[str] = []
    node: Any = data
    field_parts: list[str] = []
    entry_done = False
    for item in loc:
        if not entry_done and isinstance(item, int) and parts:
            parts[-1] = f"{parts[-1]}[{item}]"
            node = node[item] if isinstance(node, list) and item < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                parts[-1] += f" ('{node['name']}')"
            entry_done = True
            continue
        if entry_done:
            field_parts.append(str(item))
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    where = parts[0] if parts else "top level"
    if len(parts) > 1:
        where = ".".join(parts)
    if field_parts:
        return f"{where}: {'.'.join(field_parts)}"
    return where


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    """Validate a parsed YAML document; errors name ``source``, the entry and the field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'models' list")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            where = _describe_location(data, tuple(err["loc"]))
            lines.append(f"{source}: {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: Path) -> GatewayConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    return parse_config(data, str(path))
