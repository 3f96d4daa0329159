"""Request governance: rate limits before a request, budget holds around every upstream attempt,
usage recorded after it. Every request that spends (chat, embeddings, runs, thread turns, memory
extraction, knowledge embeddings) passes through the Gate: ``async with gate.admitted(...)``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..clock import Clock
from ..errors import RateLimitError, ThinktankError
from ..gateway.context import CallContext, Hold
from ..gateway.holds import PROMPT_SAFETY, UnpricedModelError, longest_fitting, worst_case
from ..gateway.pricing import Price
from ..gateway.strategies import Deployment
from ..metrics.sink import MetricsSink
from ..observability import request_ids
from .budgets import BudgetExceededError, BudgetLedger, BudgetSpec, Reservation
from .journal import Journal, JournalAccount
from .principal import Principal
from .ratelimit import RateLimiter, RateLimitRefusal, RatePlan, Subject
from .usage import UsageEvent, UsageWriter

__all__ = ["PROMPT_SAFETY", "Admission", "BudgetMeter", "Gate"]

log = logging.getLogger("thinktank.governance")

class _LedgerHold:
    __slots__ = ("_ledger", "_reservation", "budget_keys", "output_tokens")

    def __init__(self, ledger: BudgetLedger, reservation: Reservation, output_tokens: int | None) -> None:
        self._ledger = ledger
        self._reservation = reservation
        self.output_tokens = output_tokens
        self.budget_keys = reservation.budget_keys
        """The budgets it is settled on (the journal's charge line names them)."""

    async def settle(self, cost: float) -> None:
        await self._ledger.settle(self._reservation, cost)

    async def release(self) -> None:
        await self._ledger.release(self._reservation)


class _NoHold:
    output_tokens = None

    async def settle(self, cost: float) -> None:
        return None

    async def release(self) -> None:
        return None


_NO_HOLD = _NoHold()

#: Tries at a shorter answer after a refusal (each may meet another budget, or a process that took the room).
_SHORTER_TRIES = 3


class BudgetMeter:
    """Holds the worst-case cost of an attempt on every budget that applies to the caller.

    The hold covers the answer asked for (``max_tokens``, else ``default_output``), or the longest one the
    budgets can still hold if at least ``min_output`` tokens (the request goes upstream capped at it); a model
    without a price is refused (:class:`UnpricedModelError`).
    """

    def __init__(self, ledger: BudgetLedger, specs: Sequence[BudgetSpec], default_output: int,
                 metrics: MetricsSink | None = None, min_output: int = 64) -> None:
        self._ledger = ledger
        self._specs = list(specs)
        self._default_output = default_output
        self._min_output = min_output
        self._metrics = metrics or MetricsSink()

    async def reserve(self, deployment: Deployment, prompt_tokens: int, output_tokens: int | None,
                      choices: int = 1) -> Hold:
        price = deployment.price
        if not price.known:
            self._metrics.refused("unpriced_model", "model")
            raise UnpricedModelError(deployment)
        wanted = self._default_output if output_tokens is None else output_tokens
        # worst_case(), inlined: this runs for every priced request.
        worst = price.cost(math.ceil(prompt_tokens * PROMPT_SAFETY), wanted * choices)
        if worst <= 0:
            return _NO_HOLD
        try:
            reservation = await self._ledger.reserve(self._specs, worst)
        except BudgetExceededError as exc:
            reservation, wanted = await self._shorter(exc, price, prompt_tokens, wanted, choices)
        return _LedgerHold(self._ledger, reservation, wanted if price.output > 0 else None)

    async def _shorter(self, refusal: BudgetExceededError, price: Price, prompt_tokens: int, wanted: int,
                       choices: int) -> tuple[Reservation, int]:
        """After ``refusal``: a hold of the longest answer that fits, or ``refusal`` raised."""
        seen = refusal
        for _ in range(_SHORTER_TRIES):
            # (The whole answer again if room came free meanwhile: a sibling call settled below its hold.)
            out = longest_fitting(price, prompt_tokens, choices, seen.remaining, wanted, self._min_output)
            if out is None:
                break
            try:
                return await self._ledger.reserve(self._specs, worst_case(price, prompt_tokens, out, choices)), out
            except BudgetExceededError as exc:
                seen, wanted = exc, out
        self._metrics.refused("budget", seen.spec.scope)
        raise refusal  # names the whole answer's worst case, as asked


@dataclass
class Admission:
    """A request let in; ``finish`` records it."""

    gate: Gate
    principal: Principal
    subject: Subject
    model: str
    estimated_tokens: int
    ctx: CallContext
    started: float
    request_id: str
    status: int = 200
    """The status it is recorded with when it ends (``Gate.admitted`` sets it from an error)."""
    stream: bool = False
    cache_hit: bool = False
    first_token: float | None = None
    """A stream: seconds from admission to its first chunk (:meth:`first_chunk` sets it)."""
    _finished: bool = field(default=False, repr=False)
    _tokens: int = field(default=-1, repr=False)
    """Tokens used, once recorded (-1 before)."""

    def first_chunk(self) -> None:
        """A stream's first chunk is ready to go: its time to first token is now (once)."""
        if self.first_token is None:
            self.first_token = self.gate.clock.monotonic() - self.started

    async def finish(self, status: int, *, stream: bool = False, cache_hit: bool = False) -> None:
        """Record the request once (an ensemble or debate: all its calls together), if :meth:`record` has not."""
        if self._finished:
            return
        self._finished = True
        self.record(status, stream=stream, cache_hit=cache_hit)
        if self._tokens > self.estimated_tokens:
            await self.gate.limiter.add_tokens(self.subject, self._tokens - self.estimated_tokens)

    def record(self, status: int, *, stream: bool = False, cache_hit: bool = False) -> None:
        """Record the usage row now (once), with no await: before an answer that is complete is sent, so that
        it is in the journal before the client has it. :meth:`finish` still follows (it counts the tokens
        beyond the estimate against the rate limits)."""
        if self._tokens >= 0:
            return
        if self.ctx.handed_over:  # a worker executes it and records it (see Gate.resumed)
            self._tokens = 0
            return
        gate = self.gate
        records = self.ctx.records
        if len(records) == 1:
            prompt, completion = records[0].prompt_tokens, records[0].completion_tokens
        else:
            prompt = sum(r.prompt_tokens for r in records)
            completion = sum(r.completion_tokens for r in records)
        tokens = prompt + completion
        latency = gate.clock.monotonic() - self.started
        gate.usage.record(UsageEvent(
            request_id=self.request_id, ts=gate.clock.time(), user_id=self.principal.user_id,
            key_id=self.principal.key_id, model=self.model, deployment=records[-1].deployment if records else None,
            prompt_tokens=prompt, completion_tokens=completion, cost_usd=sum(r.cost for r in records),
            latency_ms=latency * 1000, status=status, stream=stream,
            cache_hit=cache_hit,
        ))
        gate.metrics.request_finished(self.model, records, status, latency, self.first_token)
        self._tokens = tokens


class _Governance(NamedTuple):
    """What admitting a caller needs that depends only on who it is: remembered per principal."""

    principal: Principal
    ip: str | None
    subject: Subject
    plan: RatePlan
    meter: BudgetMeter | None


class Gate:
    """Admits requests (``admitted`` is the usual way: ``async with gate.admitted(...) as admission``)."""

    #: Principals (with their address) remembered; past it, all are forgotten at once.
    CACHE = 4096

    def __init__(
        self, limiter: RateLimiter, ledger: BudgetLedger, usage: UsageWriter, clock: Clock,
        *, global_daily_budget: float | None = None, default_output_tokens: int = 4096,
        min_output_tokens: int = 64, metrics: MetricsSink | None = None, journal: Journal | None = None,
    ) -> None:
        self.limiter = limiter
        self.journal = journal
        """Where each call accounted is written at once (the admissions are their contexts' accounts)."""
        self.metrics = metrics or MetricsSink()
        self.ledger = ledger
        self.usage = usage
        self.clock = clock
        self._global = (
            BudgetSpec("global", "all", global_daily_budget, "day", "the global daily cap")
            if global_daily_budget is not None else None
        )
        self._default_output = default_output_tokens
        self._min_output = min_output_tokens
        # Request ids: a random prefix per process and a counter (os.urandom per request is a
        # system call, which measured at ~20 µs in a sandboxed kernel).
        self._id_prefix = secrets.token_hex(6) + "-"
        self._ids = itertools.count(1)
        self._later: set[asyncio.Task[None]] = set()
        # By id(principal): the authenticator hands out the same Principal for as long as it caches
        # it, and the entry keeps it alive, so its id cannot be reused while it is here.
        self._governance: dict[int, _Governance] = {}

    def _specs(self, principal: Principal) -> list[BudgetSpec]:
        specs = list(principal.budgets)
        if self._global is not None:
            specs.append(self._global)
        return specs

    def _governance_of(self, principal: Principal, ip: str | None) -> _Governance:
        known = self._governance.get(id(principal))
        if known is not None and known.principal is principal and known.ip == ip:
            return known
        subject = Subject(
            key_id=principal.key_id, user_id=None if principal.is_admin_key else principal.user_id, ip=ip,
            key_rpm=principal.key_rpm, key_tpm=principal.key_tpm, user_rpm=principal.user_rpm,
            user_tpm=principal.user_tpm, tier=principal.tier,
        )
        specs = self._specs(principal)
        meter = (BudgetMeter(self.ledger, specs, self._default_output, self.metrics, self._min_output)
                 if specs else None)
        if len(self._governance) >= self.CACHE:
            self._governance.clear()
        plan = self.limiter.plan(subject)
        made = self._governance[id(principal)] = _Governance(principal, ip, subject, plan, meter)
        return made

    async def admit(self, principal: Principal, ip: str | None, model: str, estimated_tokens: int) -> Admission:
        """Check the rate limits (429 with Retry-After) and prepare the budget meter."""
        governance = self._governance_of(principal, ip)
        try:
            await self.limiter.admit(governance.plan, estimated_tokens)
        except RateLimitError as exc:
            self.metrics.refused("request_too_large" if exc.code == "request_too_large" else "rate_limit",
                                 exc.scope if isinstance(exc, RateLimitRefusal) else "other")
            raise
        # The HTTP request's own id when it was made here (the x-request-id its client and logs see).
        request_id = request_ids.claim() or f"{self._id_prefix}{next(self._ids):x}"
        return Admission(
            gate=self, principal=principal, subject=governance.subject, model=model,
            estimated_tokens=estimated_tokens,
            ctx=self._context(governance, principal, model, request_id, estimated_tokens),
            started=self.clock.monotonic(), request_id=request_id,
        )

    def _context(self, governance: _Governance, principal: Principal, model: str, request_id: str,
                 estimated_tokens: int = 0) -> CallContext:
        journal = self.journal
        account = JournalAccount(journal, request_id, principal.user_id, principal.key_id, model) if journal else None
        return CallContext(meter=governance.meter, principal=principal, account=account, request_id=request_id,
                           estimated_tokens=estimated_tokens)

    def resumed(self, principal: Principal, model: str, *, request_id: str | None = None,
                estimated_tokens: int = 0) -> Admission:
        """Work taken up again without a request (a paused or interrupted run going on), or a request's work
        handed over by the process that admitted it (its ``request_id`` and ``estimated_tokens``: recorded once,
        here): its budgets apply as ever; the rate limits were passed when it was asked for."""
        governance = self._governance_of(principal, None)
        request_id = request_id or f"{self._id_prefix}{next(self._ids):x}"
        return Admission(
            gate=self, principal=principal, subject=governance.subject, model=model,
            estimated_tokens=estimated_tokens,
            ctx=self._context(governance, principal, model, request_id, estimated_tokens),
            started=self.clock.monotonic(),
            request_id=request_id,
        )

    @contextlib.asynccontextmanager
    async def admitted(
        self, principal: Principal, ip: str | None, model: str, estimated_tokens: int,
    ) -> AsyncIterator[Admission]:
        """Admit a request (429 with Retry-After when a limit says no) for the length of the block, and
        record it once when the block ends (see :meth:`recording`)."""
        admission = await self.admit(principal, ip, model, estimated_tokens)
        async with self.recording(admission):
            yield admission

    @contextlib.asynccontextmanager
    async def recording(self, admission: Admission | None) -> AsyncIterator[Admission | None]:
        """Record ``admission`` (if any) once when the block ends: with ``admission.status`` (200 unless set),
        or the status of the error that ends the block (499 for a cancellation). Work still spending under
        its context (``ctx.background``: a run whose client went away) is waited for first, in the
        background, so the record holds everything it cost. For work admitted earlier than it runs (a
        stream whose errors must come before its first byte, a task)."""
        if admission is None:
            yield None
            return
        try:
            yield admission
        except ThinktankError as exc:
            admission.status = exc.status
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the client went away, or the server is stopping
            admission.status = 499
            raise
        except BaseException:
            admission.status = 500
            raise
        finally:
            pending = {t for t in admission.ctx.background if not t.done()}
            if pending:
                task = asyncio.get_running_loop().create_task(self._finish_after(admission, pending))
                self._later.add(task)
                task.add_done_callback(self._later.discard)
            else:
                await admission.finish(admission.status, stream=admission.stream, cache_hit=admission.cache_hit)

    async def _finish_after(self, admission: Admission, pending: set[asyncio.Task[None]]) -> None:
        try:
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await admission.finish(admission.status, stream=admission.stream, cache_hit=admission.cache_hit)

    async def drain(self) -> None:
        """Shutdown: record the requests whose work was still going (it has been stopped by now)."""
        while self._later:
            await asyncio.gather(*list(self._later), return_exceptions=True)
