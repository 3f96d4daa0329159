"""The deliberation service: configured ensembles and debates, runs started, followed, cancelled.

One instance per app (built by the app factory). A run executes as a task of its own, so it
goes on when the client that started it disconnects; its events are saved every
``save_interval`` seconds and at the end, which also picks up cancellations asked for through
another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import ValidationError

from ..accounts.budget_backends import BudgetSpec
from ..accounts.budgets import BudgetExceededError
from ..accounts.journal import budget_keys
from ..accounts.principal import Principal
from ..agents.config import AgentConfig, unknown_tool
from ..clock import Clock
from ..config import DebateConfig, EnsembleConfig, GatewayConfig
from ..errors import (
    ConflictError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    ThinktankError,
)
from ..events.bus import LocalBus
from ..events.feed import FeedPublisher
from ..gateway.context import CallContext, Hold, Meter
from ..gateway.holds import UnpricedModelError, longest_fitting, worst_case
from ..gateway.strategies import Deployment
from ..metrics.sink import MetricsSink
from ..store.tables import new_id
from ..types import Message
from .arena import hide as _hide
from .arena import redact, secret_names
from .debate import DebateRunner
from .dispatch import Placement, RunDispatch
from .ensemble import EnsembleRunner, last_question
from .experts import Persona, load_library
from .resume import AgentResume, Resumption
from .run_feed import RunFeed
from .run_store import RunStore, RunTakenOver
from .runs import PAUSED, CallRecord, Event, LiveRun, RunEnded, RunPaused

if TYPE_CHECKING:
    from ..accounts.governance import Admission, Gate
    from ..accounts.principal import Authenticator
    from ..catalog import Catalog
    from ..jobs.base import JobQueue
    from ..observability.tracing import Tracing

__all__ = ["Deliberation", "Kind", "OnEnd", "RunConfig", "RunOptions", "Runner", "kind_of", "redact"]


log = logging.getLogger("thinktank.deliberation")

Kind = Literal["ensemble", "debate", "agent", "evaluation"]
RunConfig = EnsembleConfig | DebateConfig | AgentConfig
Runner = Callable[[], Awaitable[dict[str, Any]]]
AgentRunners = Callable[[LiveRun, AgentConfig, list[Message], "RunOptions"], Runner]
"""Makes the runner of an agent run (bound by the agents service)."""
EvalRunners = Callable[[LiveRun], Runner]
"""Makes the runner of an evaluation's run, new or taken up again (bound by the evaluations service)."""
#: Seconds without a save after which a 'running' run counts as interrupted and is taken up by another
#: process (saves come every 0.5 s, the first one by 2 s: five seconds is ten missed saves; a process that
#: only stalled finds at its next save that its run went on elsewhere, and stops it).
STALE_AFTER = 5.0
#: A run younger than this is not saved mid-way (most ensembles finish before; one write is cheaper).
FIRST_SAVE_AFTER = 2.0
_STATUS_CODE = {"completed": 200, "failed": 502, "budget_exceeded": 429, "cancelled": 499, "step_limit": 200,
                "time_limit": 200, "awaiting_approval": 202, "running": 503}

OnEnd = Callable[[int, bool], Awaitable[None]]
"""Told how a run ended: its HTTP-like status and whether it was served from the cache (the native
endpoints record their admission with it)."""


@dataclass
class RunOptions:
    cache: bool = False
    tags: list[str] = field(default_factory=list)
    arena: bool = False
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    temperature: float | None = None


class _CapHold:
    def __init__(self, cap: _RunCap, amount: float, inner: Hold | None, output_tokens: int | None) -> None:
        self._cap, self._amount, self._inner = cap, amount, inner
        self.output_tokens = output_tokens

    @property
    def budget_keys(self) -> Sequence[Sequence[str]]:
        """The caller's budgets it is settled on (the run's own cap is not stored)."""
        return budget_keys(self._inner)

    async def settle(self, cost: float) -> None:
        self._cap.held -= self._amount
        self._cap.spent += cost  # at once: a sibling call reserving now must see it
        if self._inner is not None:
            await self._inner.settle(cost)

    async def release(self) -> None:
        self._cap.held -= self._amount
        if self._inner is not None:
            await self._inner.release()


class _RunCap:
    """The run's own ``max_cost_usd``, checked before every call like any budget, then the caller's: the
    answer held is the one asked for, or the longest that fits (at least ``min_output`` tokens)."""

    def __init__(self, inner: Meter | None, limit: float, run: LiveRun, default_output: int,
                 metrics: MetricsSink | None = None, min_output: int = 64) -> None:
        self._inner, self._limit, self._run, self._default_output = inner, limit, run, default_output
        self._min_output = min_output
        self._metrics = metrics or MetricsSink()
        self.held = 0.0
        self.spent = 0.0

    async def reserve(self, deployment: Deployment, prompt_tokens: int, output_tokens: int | None,
                      choices: int = 1) -> Hold:
        price = deployment.price
        if not price.known:  # the cap could not be kept
            self._metrics.refused("unpriced_model", "model")
            raise UnpricedModelError(deployment)
        out = self._default_output if output_tokens is None else output_tokens
        worst = worst_case(price, prompt_tokens, out, choices)
        remaining = self._limit - self.spent - self.held
        if worst > remaining:
            shorter = longest_fitting(price, prompt_tokens, choices, remaining, out, self._min_output)
            if shorter is None:
                spec = BudgetSpec("run", self._run.id, self._limit, "total", f"run {self._run.id} (max_cost_usd)")
                self._metrics.refused("budget", "run")
                raise BudgetExceededError(spec, amount=worst, remaining=remaining, retry_after=0)
            out, worst = shorter, worst_case(price, prompt_tokens, shorter, choices)
        self.held += worst
        try:
            inner = await self._inner.reserve(deployment, prompt_tokens, out, choices) if self._inner else None
        except BaseException:
            self.held -= worst
            raise
        if inner is not None and inner.output_tokens is not None and inner.output_tokens < out:
            out = inner.output_tokens  # the caller's budget holds a shorter answer: so does the run
            smaller = worst_case(price, prompt_tokens, out, choices)
            self.held -= worst - smaller
            worst = smaller
        return _CapHold(self, worst, inner, out if price.output > 0 else None)


class Deliberation:
    def __init__(
        self, config: GatewayConfig, catalog: Catalog, store: RunStore, clock: Clock, *,
        rng: random.Random | None = None, save_interval: float = 0.5, default_output_tokens: int = 1024,
        metrics: MetricsSink | None = None, auth: Authenticator | None = None, gate: Gate | None = None,
        stale_after: float = STALE_AFTER, publisher: FeedPublisher | None = None,
    ) -> None:
        """Binds itself to ``catalog``: ``ensemble/...`` and ``debate/...`` resolve to its runs, and every
        call of a run reaches its model through the catalog. With ``auth`` and ``gate`` it takes up runs
        interrupted for ``stale_after`` seconds (without, it marks them failed)."""
        self.catalog = catalog
        self.metrics = metrics or MetricsSink()
        self.store = store
        self.clock = clock
        self._rng = rng or random.Random(secrets.randbits(64))
        self._save_interval = save_interval
        self._default_output = default_output_tokens
        self._min_output = config.pricing.min_output_tokens
        self.ensembles = {e.name: e for e in config.ensembles}
        self.debates = {d.name: d for d in config.debates}
        self.agents = {a.name: a for a in config.agents}
        self.mcp_servers = frozenset(m.name for m in config.mcp_servers)
        self._agent_runners: AgentRunners | None = None
        self._eval_runners: EvalRunners | None = None
        own = [Persona(p.name, p.domain, p.backstory, p.stance, p.model, tuple(k.lower() for k in p.keywords))
               for p in config.personas]
        names = {p.name for p in own}
        self.library: list[Persona] = [*own, *(p for p in load_library() if p.name not in names)]
        self.live: dict[str, LiveRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._mirrors: dict[str, asyncio.Task[None]] = {}
        """Runs started here and executed by a queue's worker: the tasks that follow them (see .dispatch)."""
        self._dispatch: RunDispatch | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._saver: asyncio.Task[None] | None = None
        self._closing = False
        self.paused_cancelled: list[Callable[[str], Awaitable[None]]] = []
        """Told the id of a paused run cancelled while nobody executed it (a thread shows it ended)."""
        self.tracing: Tracing | None = None
        """Spans for each run, its stages and calls, when tracing is on (the app factory sets it)."""
        self.resumption = (Resumption(self, auth, gate, stale_after=stale_after)
                           if auth is not None and gate is not None else None)
        # A run whose process died is taken up elsewhere (resumption): its followers wait for that, on the bus.
        self.feed = RunFeed(publisher or FeedPublisher(LocalBus()), store, clock, self._save, stale_after=STALE_AFTER,
                            interrupt=self.resumption is None)
        """Events to and from other processes (the event bus)."""
        self._first_save = min(FIRST_SAVE_AFTER, stale_after / 2)
        catalog.bind_runs(self)

    def on_queue(self, queue: JobQueue, *, placement: Placement = "auto", runs_jobs: bool = True) -> None:
        """Interrupted runs are taken up by ``queue``'s workers; new ensembles and debates are executed by them too
        (:mod:`.dispatch`) with a shared queue where ``placement`` is ``queue``, or ``auto`` in a process that runs
        no jobs (``runs_jobs``). Without the means to take runs up, nothing moves."""
        if self.resumption is None:
            return
        self.resumption.on_queue(queue)
        dispatch = RunDispatch(self, self.resumption, queue)
        if queue.shared and (placement == "queue" or (placement == "auto" and not runs_jobs)):
            self._dispatch = dispatch

    # -- configuration ---------------------------------------------------------------------------
    def models(self) -> list[tuple[str, str, str | None]]:
        """(id, kind, description) of every configured ensemble and debate."""
        return [
            *((f"ensemble/{n}", "ensemble", e.description) for n, e in self.ensembles.items()),
            *((f"debate/{n}", "debate", d.description) for n, d in self.debates.items()),
            *((f"agent/{n}", "agent", a.description) for n, a in self.agents.items()),
        ]

    def bind_agents(self, runners: AgentRunners, resume: AgentResume | None = None) -> None:
        """Agent runs: their runners, and how a claimed, interrupted one is taken up again."""
        self._agent_runners = runners
        if self.resumption is not None:
            self.resumption.agents = resume

    def bind_evaluations(self, runners: EvalRunners) -> None:
        """Evaluations (:mod:`thinktank.evals`): the runner of each, new or taken up again."""
        self._eval_runners = runners

    def table(self, kind: Kind) -> Mapping[str, RunConfig]:
        """The configured runs of ``kind``, by name (none of an evaluation: it is made by its request)."""
        tables: dict[str, Mapping[str, RunConfig]] = {
            "ensemble": self.ensembles, "debate": self.debates, "agent": self.agents}
        return tables.get(kind, {})

    def resolve(self, kind: Kind, name: str | None, overrides: Mapping[str, Any]) -> RunConfig:
        """The configuration of a run: the named one with the request's overrides (400 if invalid)."""
        table = self.table(kind)
        if name is not None:
            base = table.get(name)
            if base is None:
                raise ModelNotFoundError(
                    f"There is no {kind} '{name}'. GET /v1/models lists the ensembles, debates and agents you can use.",
                    param=kind,
                )
            data = base.model_dump(exclude_unset=False)
        else:
            data = {"name": "custom"}
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "judge" in changes:
            data.pop("judges", None)
        if "chairman" in changes and "synthesis" not in changes:
            data["synthesis"] = None
        data.update(changes)
        model_type: type[RunConfig] = (
            EnsembleConfig if kind == "ensemble" else DebateConfig if kind == "debate" else AgentConfig)
        try:
            cfg = model_type.model_validate(data)
        except ValidationError as exc:
            err = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(x) for x in err["loc"]) or kind
            message = str(err["msg"]).removeprefix("Value error, ")
            raise InvalidRequestError(f"{where}: {message}", param=where) from None
        if isinstance(cfg, AgentConfig):
            why = unknown_tool(cfg, self.mcp_servers)
            if why is not None:
                raise InvalidRequestError(f"tools: {why}", param="tools")
        if isinstance(cfg, DebateConfig) and cfg.personas:
            known = {p.name for p in self.library}
            unknown = [p for p in cfg.personas if p not in known]
            if unknown:
                raise InvalidRequestError(f"personas: unknown persona '{unknown[0]}'", param="personas")
        return cfg

    def models_of(self, cfg: RunConfig) -> list[str]:
        """Every model name a run of ``cfg`` may call."""
        if isinstance(cfg, AgentConfig):
            return cfg.models_used()
        if isinstance(cfg, EnsembleConfig):
            return list(dict.fromkeys(cfg.models()))
        own = [p.model for p in self.library if p.model and (not cfg.personas or p.name in cfg.personas)]
        return list(dict.fromkeys([*cfg.models_used(), *own]))

    def check_access(self, principal: Principal, cfg: RunConfig, name: str) -> None:
        """Every model the run would call must exist and be allowed to the caller (400 naming it), and none
        may contain the run itself (400 naming the path)."""
        kind = kind_of(cfg)
        self.catalog.check(principal, name or f"{kind}/custom", uses=self.models_of(cfg), role="members")

    # -- running ---------------------------------------------------------------------------------
    @staticmethod
    def _cache_key(kind: str, cfg: RunConfig, messages: Sequence[Message], opts: RunOptions) -> str:
        payload = {
            "kind": kind, "config": cfg.model_dump(mode="json", exclude={"cache_ttl", "description"}),
            "messages": [m.model_dump(mode="json", exclude_none=True) for m in messages],
            "arena": opts.arena, "max_tokens": opts.max_tokens, "temperature": opts.temperature,
        }
        return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()

    async def start(
        self, kind: Kind, cfg: RunConfig, *, principal: Principal, ctx: CallContext,
        messages: list[Message], options: RunOptions, on_end: OnEnd | None = None,
    ) -> LiveRun:
        """Start a run (or serve it from the cache) that spends under ``ctx``. ``on_end`` is told when the
        run ends, or at once when it cannot start. A run under another run's context (``ctx.parent_run``) is
        its child."""
        try:
            return await self._start(kind, cfg, principal=principal, ctx=ctx, messages=messages, options=options,
                                     on_end=on_end)
        except BaseException as exc:
            if on_end is not None:
                await on_end(exc.status if isinstance(exc, ThinktankError) else 500, False)
            raise

    async def _start(
        self, kind: Kind, cfg: RunConfig, *, principal: Principal, ctx: CallContext,
        messages: list[Message], options: RunOptions, on_end: OnEnd | None,
    ) -> LiveRun:
        question = last_question(messages)
        if not question.strip():
            raise InvalidRequestError("The question is empty: send a user message with text.", param="messages")
        if options.arena and (kind != "ensemble" or len(getattr(cfg, "members", [])) < 2):
            raise InvalidRequestError("An arena needs an ensemble with at least two members.", param="arena")
        now = self.clock.time()
        run = LiveRun(
            id=new_id("run"), user_id=principal.user_id, key_id=principal.key_id, kind=kind, name=cfg.name,
            question=question, config=cfg.model_dump(mode="json"), ctx=ctx, models=self.catalog, clock=self.clock,
            tags=options.tags, created_at=now,
            request={"messages": [m.model_dump(mode="json", exclude_none=True) for m in messages],
                     "cache": options.cache, "arena": options.arena, "max_cost_usd": options.max_cost_usd,
                     "max_tokens": options.max_tokens, "temperature": options.temperature, "tags": options.tags,
                     **({"parent_run": ctx.parent_run} if ctx.parent_run else {})},
        )
        if ctx.run_id is None:
            ctx.run_id = run.id  # the run that answers under this context (the API names it in a header)
        run.cache_key = self._cache_key(kind, cfg, messages, options)
        if options.cache and cfg.cache_ttl > 0:
            hit = await self.store.find_cached(principal.user_id, run.cache_key, now - cfg.cache_ttl)
            if hit is not None:
                self.metrics.cache_hit(f"{kind}/{cfg.name}", "run")
                return await self._from_cache(run, hit, on_end)
            self.metrics.cache_miss(f"{kind}/{cfg.name}", "run")
        if options.max_cost_usd is not None:
            self.cap(run, options.max_cost_usd, options.max_tokens)
        elif ctx.parent_run is not None and options.max_tokens:
            run.default_max_tokens = options.max_tokens  # a child run keeps within what its parent's hold assumes
        run.emit("run_started", kind=kind, name=cfg.name, run_id=run.id)
        await self.store.create(run)
        if self._dispatch is not None and RunDispatch.moves(run):
            self._mirrors[run.id] = task = await self._dispatch.hand_over(run, on_end)
            task.add_done_callback(lambda _: self._mirrors.pop(run.id, None))
            return run
        self.launch(run, self.runner_for(run, cfg, messages, options), on_end)
        return run

    def runner_for(self, run: LiveRun, cfg: RunConfig | None, messages: list[Message], options: RunOptions
                   ) -> Runner:
        """What executes ``run`` (a new one, or one taken up again: from its checkpoint). An evaluation's comes
        from the evaluations service (``cfg`` None: its configuration is on the run)."""
        if run.kind == "evaluation":
            if self._eval_runners is None:
                raise InvalidRequestError("Evaluations are not available in this server.")
            return self._eval_runners(run)
        if cfg is None:
            raise InvalidRequestError(f"A run of kind {run.kind} needs its configuration.")
        if isinstance(cfg, AgentConfig):
            if self._agent_runners is None:
                raise InvalidRequestError("Agents are not available in this server.", param="model")
            return self._agent_runners(run, cfg, messages, options)
        if isinstance(cfg, EnsembleConfig):
            seed = self._rng.getrandbits(64)  # (one taken up again keeps the seed on its checkpoint)
            return EnsembleRunner(run, cfg, messages, random.Random(seed), seed=seed, arena=options.arena,
                                  max_tokens=options.max_tokens, temperature=options.temperature)
        return DebateRunner(run, cfg, messages, self.library, max_tokens=options.max_tokens)

    @staticmethod
    def options_of(request: Mapping[str, Any]) -> RunOptions:
        """A run's options as its stored request holds them."""
        cap = request.get("max_cost_usd")
        return RunOptions(cache=bool(request.get("cache")), tags=list(request.get("tags") or []),
                          arena=bool(request.get("arena")), max_cost_usd=None if cap is None else float(cap),
                          max_tokens=request.get("max_tokens"), temperature=request.get("temperature"))

    # -- taking interrupted runs up (see .resume) ------------------------------------------------
    async def take_up(self, run_id: str, *, silence: float | None = None) -> bool:
        """Claim ``run_id`` if no process has saved it for ``stale_after`` s (or ``silence``) and go on with it
        here; whether this process took it. For a job queue; each process also sweeps by itself."""
        return self.resumption is not None and await self.resumption.take_up(run_id, silence=silence)

    async def stale(self, now: float | None = None) -> list[str]:
        """The ids of runs interrupted (no save for ``stale_after`` s): to be taken up."""
        return [] if self.resumption is None else await self.resumption.stale(now)

    async def revive(self, row: dict[str, Any], events: list[Event], calls: list[CallRecord]
                     ) -> tuple[LiveRun, Admission] | None:
        """A claimed run rebuilt here under its principal as it is now (None, and the run failed, if revoked)."""
        if self.resumption is None:
            raise InvalidRequestError("This server does not take runs up again.")
        return await self.resumption.revive(row, events, calls)

    def cap(self, run: LiveRun, max_cost_usd: float, max_tokens: int | None) -> None:
        """Hold ``run`` to ``max_cost_usd`` (what it has spent already counts): every call is capped at the
        output its hold assumes."""
        cap = max_tokens or self._default_output
        run.default_max_tokens = cap
        meter = _RunCap(run.ctx.meter, max_cost_usd, run, cap, self.metrics, self._min_output)
        meter.spent = run.cost
        run.ctx.meter = meter

    def launch(self, run: LiveRun, runner: Runner, on_end: OnEnd | None) -> None:
        """Execute ``run`` here as a task of its own (a new run, or a paused or interrupted one resumed)."""
        self.live[run.id] = run
        run.tracing = self.tracing
        self._locks[run.id] = asyncio.Lock()
        self.feed.attach(run)
        self._tasks[run.id] = asyncio.get_running_loop().create_task(self._execute(run, runner, on_end))

    async def _from_cache(self, run: LiveRun, hit: dict[str, Any], on_end: OnEnd | None) -> LiveRun:
        run.cached_from = hit["id"]
        run.result = hit["result"]
        run.status = "completed"
        run.finished_at = self.clock.time()
        run.emit("run_started", kind=run.kind, name=run.name, run_id=run.id)
        run.emit("cache_hit", cached_from=hit["id"])
        answer = (run.result or {}).get("answer")
        if answer:
            run.emit("synthesis_token", text=answer)
        run.emit("done", status="completed", cost_usd=0.0, cache_hit=True)
        await self.store.create(run)
        if on_end is not None:
            await on_end(200, True)
        return run

    async def record_cache_hit(self, kind: Kind, name: str, *, principal: Principal, ctx: CallContext,
                               messages: list[Message], cached_from: str) -> LiveRun | None:
        """The response cache answered a request to this run model with run ``cached_from``'s answer: recorded
        as a run served from the cache, at no cost, as the run cache records its own hits (None when that run
        is not the caller's, or is gone)."""
        cfg = self.table(kind).get(name)
        original = await self.store.get(cached_from)
        if cfg is None or original is None or original["user_id"] != principal.user_id:
            return None
        run = LiveRun(
            id=new_id("run"), user_id=principal.user_id, key_id=principal.key_id, kind=kind, name=cfg.name,
            question=last_question(messages), config=cfg.model_dump(mode="json"), ctx=ctx, models=self.catalog,
            clock=self.clock, tags=[], created_at=self.clock.time(),
            request={"messages": [m.model_dump(mode="json", exclude_none=True) for m in messages], "cache": True},
        )
        if ctx.run_id is None:
            ctx.run_id = run.id
        return await self._from_cache(run, {"id": cached_from, "result": original.get("result")}, None)

    async def _execute(self, run: LiveRun, runner: Runner, on_end: OnEnd | None) -> None:
        status, error, code = "completed", None, 200
        span = self.tracing.run(run.kind, run.name, run.id) if self.tracing is not None else None
        try:
            run.result = await runner()
        except RunPaused:
            status = "awaiting_approval"
        except RunEnded as ended:
            status, run.result = ended.status, ended.result
        except BudgetExceededError as exc:
            status, error = "budget_exceeded", exc.message
            run.refusal = exc
        except asyncio.CancelledError:
            # A run stopped by a shutdown is taken up from its checkpoint (by another process, or this one when it
            # starts again), where something takes runs up; else it ends cancelled.
            handed = self._closing and (run.kind == "agent" or self.resumption is not None)
            status, error = ("running", None) if handed else ("cancelled", "The run was cancelled.")
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except ThinktankError as exc:
            status, error = "failed", exc.message
        except Exception:
            log.exception("run %s failed", run.id)
            status, error = "failed", "Internal error; see the server log."
        if run.lost:  # another process took it up: it goes on there, nothing more is written from here
            status, error = "running", None
        code = _STATUS_CODE[status]
        if run.result is None and run.partial and status not in ("awaiting_approval", "running"):
            run.result = {**run.partial, "answer": None, "partial": True}
        run.error = error
        run.status = status
        if span is not None:
            span.span.set_attribute("thinktank.run.status", status)
            span.span.set_attribute("thinktank.cost_usd", run.cost)
            span.close(message=error)
        if status not in ("awaiting_approval", "running"):  # paused or interrupted: it goes on later
            run.finished_at = self.clock.time()
            self.metrics.run_ended(run.kind, status, run.finished_at - run.created_at)
            if error is not None:
                run.emit("error", message=error, status=code)
            run.emit("done", status=status, cost_usd=round(run.cost, 10),
                     answer=(run.result or {}).get("answer") if not (run.result or {}).get("arena") else None)
        try:
            if not run.lost:
                await asyncio.shield(self._save(run))
            if status == "running" and not run.lost:
                await asyncio.shield(self.store.release([run.id]))
        except RunTakenOver:
            log.warning("run %s was taken up by another process; it stops here", run.id)
        except Exception:
            log.exception("saving run %s failed", run.id)
        finally:
            if self.live.get(run.id) is run:  # (a paused run taken up again is another LiveRun)
                self.live.pop(run.id, None)
                self._locks.pop(run.id, None)
                self._tasks.pop(run.id, None)
            # A paused run's followers stop only now: what they do next (approve) needs it saved as paused.
            run.wake()
            if on_end is not None:
                await on_end(code, False)

    async def save(self, run: LiveRun) -> bool:
        """Write what is new of ``run`` now (an agent's checkpoint with it); whether a cancel was asked."""
        return await self._save(run)

    async def _save(self, run: LiveRun) -> bool:
        lock = self._locks.get(run.id)
        if lock is None or run.lost:
            return False
        async with lock:
            try:
                return await self.store.save(run)
            except RunTakenOver:
                run.lost = True  # the process that took it up goes on with it: this one stops it
                task = self._tasks.get(run.id)
                if task is not None and task is not asyncio.current_task():
                    task.cancel()
                raise

    async def wait(self, run: LiveRun) -> None:
        task = self._tasks.get(run.id) or self._mirrors.get(run.id)
        if task is not None:
            await asyncio.shield(task)

    @staticmethod
    def status_code(status: str) -> int:
        """The HTTP-like status a run's admission is recorded with when it ends so."""
        return _STATUS_CODE.get(status, 500)

    def task_of(self, run: LiveRun) -> asyncio.Task[None] | None:
        """The task executing ``run`` here, while it runs."""
        return self._tasks.get(run.id)

    async def start_background(self) -> None:
        """Start saving live runs, and taking up the runs a stopped process left 'running' (or, without the
        means to take them up, marking them interrupted)."""
        if self.resumption is not None:
            await self.resumption.start()
        else:
            stale = await self.store.mark_interrupted(self.clock.time(), STALE_AFTER)
            if stale:
                log.warning("%d run(s) were interrupted by a stop of the server that ran them", stale)
        if self._saver is None:
            self._saver = asyncio.get_running_loop().create_task(self._save_loop())

    async def _save_loop(self) -> None:
        while True:
            await self.clock.sleep(self._save_interval)
            now = self.clock.time()
            for run in list(self.live.values()):
                if now - run.created_at < self._first_save:
                    continue  # a short run is written once, when it ends
                try:
                    cancel = await asyncio.shield(self._save(run))
                except RunTakenOver:
                    log.warning("run %s was taken up by another process (this one stopped saving it for "
                                "too long); it stops here", run.id)
                    continue
                except Exception:
                    log.exception("saving run %s failed; trying again", run.id)
                    continue
                task = self._tasks.get(run.id)
                if cancel and task is not None and not run.finished:
                    task.cancel()

    async def close(self) -> None:
        """Shutdown: stop the saver; runs still going are stopped and saved as they are, to be taken up from their
        checkpoint by another process (or this one, started again): cancelled where nothing takes runs up."""
        if self.resumption is not None:
            await self.resumption.close()
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
        self._closing = True
        tasks = [*self._tasks.values(), *self._mirrors.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- reading, cancelling ---------------------------------------------------------------------
    async def _owned(self, run_id: str, principal: Principal) -> tuple[str, str]:
        run = self.live.get(run_id)
        found = (run.user_id, run.status) if run is not None else await self.store.owner(run_id)
        if found is None or (found[0] != principal.user_id and not principal.is_admin):
            raise NotFoundError(f"There is no run '{run_id}'.")
        return found

    async def get(self, run_id: str, principal: Principal) -> dict[str, Any]:
        await self._owned(run_id, principal)
        run = self.live.get(run_id)
        record = run.record() if run is not None else await self.store.get(run_id)
        if record is None:
            raise NotFoundError(f"There is no run '{run_id}'.")
        return redact(record)

    async def list_runs(self, principal: Principal, *, kind: str | None, status: str | None, limit: int,
                        before: float | None, everyone: bool) -> list[dict[str, Any]]:
        await self._flush_live()
        user = None if (everyone and principal.is_admin) else principal.user_id
        return await self.store.runs(user, kind=kind, status=status, limit=limit, before=before)

    async def _flush_live(self) -> None:
        for run in list(self.live.values()):
            with contextlib.suppress(Exception):
                await self._save(run)

    async def events(self, run_id: str, principal: Principal, after: int = 0, *, follow: bool = True,
                     poll: float = 0.25) -> AsyncIterator[Event]:
        """The run's events after ``after``; while it runs, each new one as it happens."""
        record = await self.get(run_id, principal)  # 404 unless the caller may read it
        arena_hidden = bool(record["request"].get("arena")) and not (record.get("result") or {}).get("revealed")
        run = self.live.get(run_id)
        names: list[str] = []
        if arena_hidden:  # what the events must not name: the members (the record above is already redacted)
            raw = run.record() if run is not None else await self.store.get(run_id)
            names = secret_names(raw or {})
        while True:
            if run is not None and not run.lost:
                async for event in run.follow(after) if follow else _aiter(run.events[after:]):
                    after = event.seq
                    yield _hide(event, names) if arena_hidden else event
                if not run.lost:
                    return
            if not follow:
                for event in await self.store.events(run_id, after):
                    yield _hide(event, names) if arena_hidden else event
                return
            # Another process runs it (or ran it): what it saved, then what it publishes on the event bus.
            async for event in self.feed.follow(run_id, after, local_poll=poll):
                after = event.seq
                yield _hide(event, names) if arena_hidden else event
            run = self.live.get(run_id)  # this process took it up meanwhile: follow it here
            if run is None:
                return

    @staticmethod
    async def blind(run: LiveRun, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """A blind arena's events as its starter sees them while it runs: no model named."""
        names = secret_names(run.record())
        async for event in events:
            yield _hide(event, names)

    async def document(self, run_id: str, principal: Principal, name: str) -> str | None:
        await self._owned(run_id, principal)
        run = self.live.get(run_id)
        if run is not None and name in run.documents:
            return run.documents[name]  # written, and maybe not saved yet (the run is ending)
        return await self.store.document(run_id, name)

    async def cancel(self, run_id: str, principal: Principal) -> str:
        _, status = await self._owned(run_id, principal)
        if status == PAUSED and run_id not in self.live:
            if await self.store.cancel_paused(run_id, self.clock.time()):
                for callback in self.paused_cancelled:
                    try:
                        await callback(run_id)
                    except Exception:
                        log.exception("telling that paused run %s was cancelled failed", run_id)
                return "cancelled"
            _, status = await self._owned(run_id, principal)
        if status != "running":
            raise ConflictError(f"The run has already ended ({status}).")
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
            return self.live[run_id].status if run_id in self.live else "cancelled"
        await self.store.request_cancel(run_id)  # the process running it stops it at its next save
        return "cancelling"

    # -- feedback and the leaderboard ------------------------------------------------------------
    async def feedback(self, run_id: str, principal: Principal, *, answer: str | None, vote: str | None,
                       winner: str | None) -> dict[str, Any]:
        owner, status = await self._owned(run_id, principal)
        if owner != principal.user_id:
            raise NotFoundError(f"There is no run '{run_id}'.")
        task = self._tasks.get(run_id)
        if task is not None and status == "completed":
            # Its followers saw "done" before it was saved: the vote reads the saved record.
            await asyncio.shield(task)
        record = await self.store.get(run_id)
        if record is None or record["kind"] != "ensemble" or status != "completed":
            raise ConflictError("Feedback is taken on completed ensemble runs.")
        result: dict[str, Any] = dict(record["result"] or {})
        answers = {a["label"]: a["model"] for a in result.get("answers", [])}
        rows: list[dict[str, Any]] = []
        base = {"run_id": run_id, "user_id": principal.user_id, "tags": record.get("tags") or [],
                "created_at": self.clock.time()}
        updated: tuple[str, dict[str, Any]] | None = None
        if result.get("arena"):
            if winner is None or vote is not None:
                raise InvalidRequestError("An arena run takes {\"winner\": \"A\" | \"B\" | \"tie\"}.", param="winner")
            if winner not in (*answers, "tie") or len(answers) != 2:
                raise InvalidRequestError(f"winner: choose one of {', '.join([*answers, 'tie'])}.", param="winner")
            (la, ma), (_, mb) = sorted(answers.items())
            outcome = 0.5 if winner == "tie" else (1.0 if winner == la else 0.0)
            rows.append({**base, "kind": "arena", "target": "arena", "model_a": ma, "model_b": mb, "outcome": outcome})
            updated = (run_id, {**result, "revealed": True, "winner": winner})
        else:
            if answer is None or vote not in ("up", "down") or winner is not None:
                raise InvalidRequestError("Send {\"answer\": \"<label>\", \"vote\": \"up\" | \"down\"}.", param="vote")
            if answer not in answers:
                raise InvalidRequestError(f"answer: no answer '{answer}' in this run.", param="answer")
            for label, model in answers.items():
                if label != answer:
                    rows.append({**base, "kind": "vote", "target": answer, "model_a": answers[answer],
                                 "model_b": model, "outcome": 1.0 if vote == "up" else 0.0})
        await self.store.add_comparisons(rows, updated)
        response: dict[str, Any] = {"run_id": run_id, "recorded": len(rows)}
        if updated is not None:
            response["revealed"] = {label: model for label, model in sorted(answers.items())}
        return response

    async def leaderboard(self, tag: str | None, *, rounds: int = 200, seed: int = 0) -> list[dict[str, Any]]:
        from . import ranking as rk

        rows = [r for r in await self.store.comparisons() if tag is None or tag in r[3]]
        comparisons = [(a, b, o) for a, b, o, _ in rows if a != b]
        models = sorted({m for a, b, _ in comparisons for m in (a, b)})
        if not models:
            return []
        ratings = rk.bt_ratings(rk.bradley_terry(comparisons, models))
        intervals = rk.bootstrap_intervals(comparisons, models, rounds=rounds, rng=random.Random(seed))
        stats = {m: {"games": 0, "wins": 0.0} for m in models}
        for a, b, o in comparisons:
            stats[a]["games"] += 1
            stats[b]["games"] += 1
            stats[a]["wins"] += o
            stats[b]["wins"] += 1 - o
        board = [
            {"model": m, "rating": round(ratings[m], 1), "ci_low": round(intervals[m][0], 1),
             "ci_high": round(intervals[m][1], 1), "games": stats[m]["games"], "win_rate": round(
                 stats[m]["wins"] / stats[m]["games"], 4) if stats[m]["games"] else None}
            for m in models
        ]
        board.sort(key=lambda r: -ratings[str(r["model"])])
        for i, row in enumerate(board):
            row["rank"] = i + 1
        return board


def kind_of(cfg: RunConfig) -> Kind:
    return "agent" if isinstance(cfg, AgentConfig) else "ensemble" if isinstance(cfg, EnsembleConfig) else "debate"


async def _aiter(events: Sequence[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event
