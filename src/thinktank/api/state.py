"""Everything a running app holds, built by the app factory and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..accounts.admin_key import AdminKey
from ..clock import Clock, SystemClock
from ..config import Settings
from ..gateway.router import Router
from ..metrics.sink import MetricsSink
from ..providers._http import HttpClient

if TYPE_CHECKING:
    from ..accounts.budgets import BudgetLedger
    from ..accounts.governance import Gate
    from ..accounts.keys import KeyService
    from ..accounts.principal import Authenticator, Principal
    from ..accounts.ratelimit import RateLimiter
    from ..accounts.recovery import Recovery
    from ..accounts.usage import UsageQuery, UsageWriter
    from ..accounts.users import UserService
    from ..agents.service import Agents
    from ..alerts.service import Alerts
    from ..cache.service import ResponseCache
    from ..catalog import Catalog
    from ..conversations.service import Conversations
    from ..deliberation.service import Deliberation
    from ..evals.service import Evaluations
    from ..jobs import JobQueue
    from ..knowledge.embedders import Embedders
    from ..knowledge.ingestions import Ingestions
    from ..knowledge.service import KnowledgeService
    from ..knowledge.urls import UrlFetcher
    from ..observability.tracing import Tracing
    from ..store.db import Database
    from .readiness import Readiness
    from .routes.metrics import MetricsEndpoint

__all__ = ["AppState"]


def _default_fetcher() -> UrlFetcher:
    from ..knowledge.urls import UrlFetcher

    return UrlFetcher()


@dataclass
class AppState:
    settings: Settings
    router: Router
    admin_key: AdminKey
    http: HttpClient
    db: Database
    auth: Authenticator
    users: UserService
    keys: KeyService
    usage_writer: UsageWriter
    usage_query: UsageQuery
    limiter: RateLimiter
    ledger: BudgetLedger
    gate: Gate
    deliberation: Deliberation
    embedders: Embedders
    knowledge: KnowledgeService
    conversations: Conversations
    catalog: Catalog
    agents: Agents
    response_cache: ResponseCache
    queue: JobQueue
    """Long work that outlives its request (``thinktank.jobs``): register handlers on it when building."""
    ingestions: Ingestions
    clock: Clock = field(default_factory=SystemClock)
    started_at: float = 0.0
    ready: bool = False
    url_fetcher: UrlFetcher = field(default_factory=_default_fetcher)
    """Fetches the URLs users add to knowledge bases (public addresses only)."""
    readiness: Readiness | None = None
    tracing: Tracing | None = None
    """None when tracing is off (then nothing of OpenTelemetry is imported)."""
    alerts: Alerts | None = None
    """Budget and cooldown alerts (the config's ``alerts:`` section), if configured."""
    metrics: MetricsSink = field(default_factory=MetricsSink)
    """What the accounting code records into (does nothing when metrics are off)."""
    metrics_endpoint: MetricsEndpoint | None = None
    """Reads the metrics for a scrape (None when metrics are off)."""
    recovery: Recovery | None = None
    """This process's accounting journal and the replay of dead processes' (None when the journal is off)."""
    evals: Evaluations | None = None
    """Evaluations of models on datasets (``thinktank.evals``)."""

    async def check_auth_allowed(self, ip: str, account: str | None = None) -> None:
        """429 with Retry-After after too many failed logins or keys from this address."""
        await self.limiter.check_auth_allowed(ip, account)

    async def record_auth_failure(self, ip: str, account: str | None = None) -> None:
        await self.limiter.record_auth_failure(ip, account)

    async def authenticate(self, token: str, ip: str) -> Principal:
        from ..errors import AuthenticationError

        known = self.auth.known(token)
        if known is not None:
            return known
        if not token:
            raise AuthenticationError(
                "No API key: send 'Authorization: Bearer <key>' (the admin key, a key made for you, or a session)."
            )
        # Only lookups of tokens not seen recently can be guesses: those pass the throttle.
        await self.check_auth_allowed(ip)
        try:
            return await self.auth.lookup(token)
        except AuthenticationError:
            await self.record_auth_failure(ip)
            raise
