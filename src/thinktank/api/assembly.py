"""The services of a running app: built from the settings and the router (``build_state``), started when the
server starts and stopped, in order, when it stops. The app factory (``app.py``) wires them to the HTTP side."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..accounts.admin_key import AdminKey
from ..clock import Clock
from ..config import Settings
from ..gateway.router import Router
from ..providers._http import HttpClient
from .state import AppState, _default_fetcher

if TYPE_CHECKING:
    from ..cache.service import CacheEvent
    from ..knowledge.embeddings import LocalEmbedder
    from ..metrics.sink import MetricsSink

__all__ = ["build_state", "start", "stop"]

log = logging.getLogger("thinktank")


def build_state(
    settings: Settings, router: Router, admin_key: AdminKey, http: HttpClient, clock: Clock,
    local_embedder: LocalEmbedder | None = None,
) -> AppState:
    from ..accounts.budgets import BudgetLedger, BudgetStore, RedisBudgetStore, SqlBudgetStore
    from ..accounts.governance import Gate
    from ..accounts.keys import KeyService
    from ..accounts.principal import Authenticator
    from ..accounts.ratelimit import RateLimiter
    from ..accounts.secrets import PasswordHashing
    from ..accounts.usage import UsageQuery, UsageWriter
    from ..accounts.users import UserService
    from ..store.db import Database, default_database_url
    from .readiness import Readiness

    db = Database(settings.database_url or default_database_url(settings.data_dir))
    from ..jobs import build_queue

    queue = build_queue(settings, db.url)
    auth = Authenticator(db, admin_key, clock, cache_ttl=settings.auth_cache_ttl)
    limiter = RateLimiter(settings.redis_url, router.config.tiers, ip_rpm=router.config.ip_rpm,
                          window=router.config.rate_limits.window)
    store: BudgetStore
    redis_client = None
    if settings.redis_url:
        import redis.asyncio as aioredis

        redis_client = aioredis.from_url(settings.redis_url)
        store = RedisBudgetStore(redis_client, clock)
    else:
        store = SqlBudgetStore(db, clock)
    journal = None
    if settings.journal:
        from ..accounts.journal import Journal
        from ..accounts.recovery import store_id

        journal = Journal(settings.data_dir / "journal", clock, database=store_id(db.url),
                          budgets=store_id(settings.redis_url or db.url))
    ledger = BudgetLedger(store, clock, lease_ttl=settings.budget_lease_ttl, journal=journal)
    alerts = None
    if router.config.alerts is not None:
        from ..alerts.service import build_alerts

        alerts = build_alerts(router.config.alerts, clock, db=db, redis=redis_client)
        alerts.watch(ledger, router.cooldowns, router.config.router.allowed_fails)
    usage_writer = UsageWriter(db, clock, journal=journal)
    from ..catalog import Catalog
    from ..metrics import make_metrics

    catalog = Catalog(router)
    metrics = make_metrics(settings, clock, catalog.configured)
    if metrics.enabled:
        router.metrics = metrics
        router.cooldowns.listeners.append(metrics.cooldown)
    pricing = router.config.pricing
    gate = Gate(limiter, ledger, usage_writer, clock, global_daily_budget=settings.global_daily_budget_usd,
                default_output_tokens=pricing.default_output_tokens, min_output_tokens=pricing.min_output_tokens,
                metrics=metrics, journal=journal)
    from ..deliberation.run_store import RunStore
    from ..deliberation.service import Deliberation
    from ..events import FeedPublisher, build_bus

    publisher = FeedPublisher(build_bus(settings.event_bus, database_url=db.url, redis_url=settings.redis_url))
    deliberation = Deliberation(router.config, catalog, RunStore(db), clock, metrics=metrics, auth=auth, gate=gate,
                                stale_after=settings.run_stale_after, publisher=publisher)
    # Interrupted runs are taken up by the queue's workers; new ones may be executed by them (run_placement).
    deliberation.on_queue(queue, placement=settings.run_placement, runs_jobs=settings.worker)
    from ..knowledge.embedders import Embedders
    from ..knowledge.service import KnowledgeService

    embedders = Embedders(router, settings.data_dir / "models", local=local_embedder)
    knowledge = KnowledgeService(db, clock, embedders.get, metrics=metrics, queue=queue)
    catalog.bind_knowledge(knowledge)
    from ..knowledge.ingestions import Ingestions, gate_admission

    ingestions = Ingestions(db, clock, knowledge, queue, auth.principal_for, gate_admission(gate, catalog))
    from ..conversations.service import Conversations

    conversations = Conversations(db, clock, router.config, catalog, gate, knowledge, embedders.local,
                                  publisher=publisher, queue=queue, principals=auth.principal_for,
                                  stale_after=settings.run_stale_after, runs=deliberation)
    from ..agents.builtin import BuiltinTools
    from ..agents.service import Agents
    from ..agents.store import AgentStore
    from ..agents.toolbox import Toolbox

    fetcher = _default_fetcher()
    builtin = BuiltinTools(catalog, knowledge, conversations.memory, fetcher, clock)
    from ..agents.mcp_client import McpClients

    toolbox = Toolbox(builtin, McpClients(router.config.mcp_servers, clock=clock), router.config.mcp_servers)
    agents = Agents(deliberation, AgentStore(db), toolbox, gate, auth, clock, stale_after=settings.run_stale_after)
    agents.on_resumed_end(conversations.agent_run_ended)
    agents.on_queue(queue)  # overdue approvals are denied by a periodic job, one worker at a time
    deliberation.paused_cancelled.append(conversations.paused_run_cancelled)
    from ..cache.service import build_cache

    response_cache = build_cache(router.config.cache, clock, redis_url=settings.redis_url, db=db, uses=catalog.uses,
                                 embedder=lambda: embedders.local, knowledge_versions=knowledge.versions)
    if metrics.enabled:
        response_cache.observe(_count_cache(metrics))
    state = AppState(
        settings=settings, router=router, admin_key=admin_key, http=http, db=db, auth=auth,
        users=UserService(db, clock, PasswordHashing(), auth), keys=KeyService(db, clock, auth),
        usage_writer=usage_writer, usage_query=UsageQuery(db), limiter=limiter, ledger=ledger, gate=gate,
        deliberation=deliberation, embedders=embedders, knowledge=knowledge,
        conversations=conversations, clock=clock, catalog=catalog, agents=agents, url_fetcher=fetcher,
        readiness=Readiness(db, router, settings.redis_url, timeout=settings.ready_timeout,
                            upstreams=settings.ready_upstreams),
        alerts=alerts,
        response_cache=response_cache,
        metrics=metrics,
        queue=queue,
        ingestions=ingestions,
    )
    from ..evals.service import Evaluations
    from ..evals.store import EvalStore

    state.evals = Evaluations(EvalStore(db, clock), deliberation, catalog, gate, clock, lambda: embedders.local)
    if journal is not None:
        from ..accounts.recovery import Recovery

        state.recovery = Recovery(journal, db, usage_writer, clock, ledger=ledger)
    if metrics.enabled:  # prometheus_client is imported only then
        from ..metrics.prometheus import PrometheusMetrics
        from .routes.metrics import MetricsEndpoint

        assert isinstance(metrics, PrometheusMetrics)
        state.metrics_endpoint = MetricsEndpoint(state, metrics)
    return state


def _count_cache(metrics: MetricsSink) -> Callable[[CacheEvent], None]:
    """The response cache's hits (kind ``exact`` or ``semantic``) and misses (kind ``response``) as metrics."""

    def count(event: CacheEvent) -> None:
        if event.kind == "hit":
            metrics.cache_hit(event.model, event.layer or "exact")
        elif event.kind == "miss":
            metrics.cache_miss(event.model, "response")

    return count


async def start(state: AppState) -> None:
    from ..store.migrate import at_head, upgrade_async

    if not await at_head(state.db):
        await upgrade_async(state.db.url)
    s = state.settings
    if s.admin_email and s.admin_password and await state.users.ensure_admin(
        s.admin_email, s.admin_password.get_secret_value()
    ):
        log.info("created the admin user %s", s.admin_email)
    if state.recovery is not None:  # before anything spends: the journal open, dead processes' replayed
        await state.recovery.start()
    state.usage_writer.start()
    state.ledger.start()
    await state.response_cache.start()
    await state.deliberation.feed.publisher.start()  # the event bus (runs' and turns' events)
    await state.deliberation.start_background()
    await state.agents.start_background()  # interrupted agent runs go on; overdue approvals are denied
    state.conversations.start_background()  # turns show they are alive; those of a dead process are taken up
    await state.queue.start(worker=s.worker)  # this process runs queued jobs too, unless THINKTANK_WORKER=false
    await state.ingestions.resume()  # ingestions a dead process left (in-process queue) are queued again
    if state.metrics_endpoint is not None:
        await state.metrics_endpoint.start()  # the metrics port, if one is set
    # Everything loaded so far lives as long as the process: keep it out of the garbage
    # collector's way (a full collection would otherwise walk ~130k objects again and again).
    gc.freeze()


async def stop(state: AppState) -> None:
    await state.agents.close()  # the MCP servers' connections and processes too
    # Runs still going stop, settled and recorded, and are left to resume from their checkpoint on another worker
    # (or here at the next start).
    await state.deliberation.close()
    await state.agents.close_tools()
    await state.conversations.close()  # turns still going are cancelled
    await state.deliberation.feed.publisher.close()  # their last events published; the bus closed
    await state.queue.stop()  # jobs under way get a short grace, then are cancelled (to run again elsewhere)
    await state.gate.drain()  # requests whose runs went on after their client left are recorded
    await state.knowledge.close()  # (its index builds are jobs of the queue, stopped above)
    await state.response_cache.close()
    await state.ledger.close()
    if state.alerts is not None:
        await state.alerts.close()  # after the ledger's last write, which may cross a threshold
    await state.usage_writer.close()
    if state.recovery is not None:  # everything written: the journal goes (or stays, if the database was down)
        await state.recovery.close()
    await state.limiter.close()
    await state.auth.close()  # background lookups of cached keys
    state.embedders.close()
    if state.readiness is not None:
        await state.readiness.close()
    if state.metrics_endpoint is not None:  # last: the requests and runs ended above are counted
        await state.metrics_endpoint.close()
    await state.db.close()
    if state.tracing is not None:
        await asyncio.to_thread(state.tracing.shutdown)  # the last spans exported (the loop goes on meanwhile)
