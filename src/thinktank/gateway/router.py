"""The Router: a ChatModel made of deployments.

A public model name resolves (through aliases) to a group of deployments. A request tries the
group with its strategy, retrying retryable failures (429, 5xx, connection errors, timeouts)
with backoff, then the group's fallbacks in order; a request too long for the group goes to its
context-window fallbacks. Everything runs under a per-try timeout and one overall deadline.
This is the only retry loop: provider clients never retry on their own.

Cost is computed here, once, for every answer; observers receive a UsageRecord per request.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ..bounds import MAX_SAFE_INT
from ..clock import Clock
from ..config import DeploymentConfig, GatewayConfig, Strategy
from ..errors import (
    ConfigError,
    ContextWindowExceededError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ProviderError,
    UpstreamBadRequestError,
    UpstreamBadResponseError,
    UpstreamTimeoutError,
)
from ..metrics.sink import MetricsSink
from ..providers.base import DeploymentModel, EmbeddingModel, ProviderContext
from ..providers.registry import ProviderRegistry
from ..types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Usage,
    decode_embedding,
    encode_embedding,
)
from .context import CallContext, Hold
from .health import Cooldowns, FailureLog, scrub_message
from .holds import UnpricedModelError, capped
from .pricing import price_for
from .retry import Backoff
from .strategies import Deployment, pick
from .tokens import estimate_request_tokens, estimate_text_tokens

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ..observability.tracing import AttemptTrace, Tracing

__all__ = ["Group", "ModelInfo", "Router", "UsageRecord"]

log = logging.getLogger("thinktank.router")

T = TypeVar("T")


@dataclass
class Group:
    name: str
    deployments: list[Deployment]
    strategy: Strategy
    fallbacks: list[str]
    context_window_fallbacks: list[str]


@dataclass(frozen=True)
class ModelInfo:
    id: str
    kind: Literal["model", "group", "alias"]
    owned_by: str
    description: str | None = None


@dataclass(frozen=True)
class UsageRecord:
    """One answered (or failed) request, as the router accounted it."""

    model: str
    deployment: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency: float
    status: int
    stream: bool
    attempts: int


Observer = Callable[[UsageRecord], None]


@dataclass
class _Attempt:
    deployment: Deployment
    started: float
    hold: Hold | None = None
    settled: bool = False
    charged: bool = False
    """Told to the context's account (once, even if accounting is tried again)."""
    span: Span | None = None
    """The attempt's span, when tracing: ended once its usage is accounted."""

    async def settle(self, cost: float) -> None:
        if self.hold is not None and not self.settled:
            self.settled = True
            await self.hold.settle(cost)


class Router:
    """Implements ChatModel and EmbeddingModel for every configured public name."""

    def __init__(
        self,
        config: GatewayConfig,
        ctx: ProviderContext,
        registry: ProviderRegistry | None = None,
        *,
        rng: random.Random | None = None,
        observers: list[Observer] | None = None,
    ) -> None:
        self.config = config
        self._clock: Clock = ctx.clock
        self._rng = rng or random.Random()
        self._registry = registry or ProviderRegistry()
        rc = config.router
        self._backoff = Backoff(rc.backoff_base, rc.backoff_max, rc.retry_after_max)
        self.cooldowns = Cooldowns(ctx.clock, rc.allowed_fails, rc.cooldown)
        self.failures = FailureLog(ctx.clock)
        """The last failures of each deployment (written only when one fails), for :meth:`health_snapshot`."""
        self.observers: list[Observer] = list(observers or [])
        self.tracing: Tracing | None = None
        """Spans for each attempt, when tracing is on (the app factory sets it)."""
        self.metrics = MetricsSink()
        """Told of retries, fallbacks and failed attempts (the app factory sets the one it made)."""
        self.deployments: list[Deployment] = []
        seen: dict[str, int] = {}
        for i, d in enumerate(config.models):
            count = seen.get(d.name, 0)
            seen[d.name] = count + 1
            dep_id = d.id or (d.name if count == 0 else f"{d.name}#{count + 1}")
            model = self._build(i, d.model_copy(update={"id": dep_id}), ctx)
            self.deployments.append(
                Deployment(dep_id, d, model, price_for(d, config.pricing.default), d.timeout or rc.timeout)
            )
        self._groups: dict[str, Group] = {}
        by_name: dict[str, list[Deployment]] = {}
        for dep in self.deployments:
            by_name.setdefault(dep.name, []).append(dep)
            if dep.config.id:
                by_name.setdefault(dep.config.id, []).append(dep)
        for name, deps in by_name.items():
            self._groups[name] = Group(name, deps, rc.strategy, [], [])
        for g in config.groups:
            members = [dep for m in (g.models or [g.name]) for dep in by_name.get(m, [])]
            self._groups[g.name] = Group(
                g.name, members, g.strategy or rc.strategy, g.fallbacks, g.context_window_fallbacks
            )
        self._aliases = dict(config.aliases)

    def _build(self, index: int, d: DeploymentConfig, ctx: ProviderContext) -> DeploymentModel:
        """The provider's model for ``models[index]``; a config error names the entry as the config's own
        errors do: ``models[0] ('a'): provider: unknown provider 'x' (known: ...)``."""
        where = f"models[{index}] ('{d.name}')"
        try:
            factory = self._registry.get(d.provider)
        except ConfigError as exc:
            raise ConfigError(f"{where}: provider: {exc.message}") from None
        try:
            return factory(d, ctx)
        except ConfigError as exc:  # providers say "model 'a': ..."; the entry's index tells which one
            said = exc.message.removeprefix(f"model '{d.name}': ")
            raise ConfigError(f"{where}: {said}") from None

    # -- names -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return "router"

    def models(self) -> list[ModelInfo]:
        out: list[ModelInfo] = []
        explicit = {g.name for g in self.config.groups}
        listed: set[str] = set()
        for dep in self.deployments:
            if dep.name not in listed:
                listed.add(dep.name)
                out.append(ModelInfo(dep.name, "model", dep.config.provider, dep.config.description))
        for g in self.config.groups:
            if g.name not in listed:
                listed.add(g.name)
                out.append(ModelInfo(g.name, "group", "thinktank"))
        for alias in self._aliases:
            if alias not in listed and alias not in explicit:
                out.append(ModelInfo(alias, "alias", "thinktank"))
        return out

    def resolve(self, name: str) -> Group:
        for _ in range(8):
            if name in self._aliases and name not in self._groups:
                name = self._aliases[name]
                continue
            break
        group = self._groups.get(name)
        if group is None or not group.deployments:
            raise ModelNotFoundError(
                f"The model '{name}' does not exist here. GET /v1/models lists the models you can use.",
                param="model",
            )
        return group

    def health_snapshot(self) -> list[dict[str, Any]]:
        """Each deployment now: its model name and the configured groups it serves, its provider, whether it is
        cooling down and for how many more seconds, its failures in a row, calls in flight, its average latency
        and its last failures (newest first; messages scrubbed of secrets and short)."""
        groups: dict[str, list[str]] = {}
        for g in self.config.groups:
            for dep in self._groups[g.name].deployments:
                groups.setdefault(dep.id, []).append(g.name)
        out = []
        for dep in self.deployments:
            remaining = self.cooldowns.remaining(dep.id)
            fails = self.cooldowns.failures(dep.id)
            out.append({
                "id": dep.id, "model": dep.name, "groups": groups.get(dep.id, []), "provider": dep.config.provider,
                "status": "cooling_down" if remaining > 0 else "failing" if fails else "ok",
                "cooling_down": remaining > 0, "cooldown_remaining_s": round(remaining, 3),
                "consecutive_failures": fails, "in_flight": dep.stats.in_flight,
                "avg_latency_ms": None if dep.stats.latency is None else round(dep.stats.latency * 1000, 3),
                "recent_errors": [
                    {"ts": f.ts, "status": f.status, "kind": f.kind, "message": f.message}
                    for f in self.failures.recent(dep.id)
                ],
            })
        return out

    # -- the loop --------------------------------------------------------------------------------
    async def _run(
        self,
        request_model: str,
        prompt_tokens: int,
        output_tokens: int | None,
        call: Callable[[Deployment, float, int | None], Awaitable[T]],
        ctx: CallContext | None = None,
        trace: AttemptTrace | None = None,
        choices: int = 1,
    ) -> tuple[T, _Attempt, int]:
        deadline = self._clock.monotonic() + self.config.router.deadline
        queue: list[str] = [request_model]
        visited: set[str] = set()
        last: ProviderError | None = None
        counter = [0]
        origin: str | None = None
        while queue:
            group = self.resolve(queue.pop(0))
            if group.name in visited:
                continue
            if origin is None:
                origin = group.name
            else:
                self.metrics.fallback(origin, group.name)
            visited.add(group.name)
            try:
                result, attempt = await self._try_group(
                    group, prompt_tokens, output_tokens, deadline, call, counter, ctx, trace, choices
                )
                return result, attempt, counter[0]
            except ContextWindowExceededError as exc:
                last = exc
                queue = [*group.context_window_fallbacks, *group.fallbacks, *queue]
            except DeadlineExceededError:
                raise
            except ProviderError as exc:
                if not exc.fallback_ok:
                    raise
                last = exc
                queue.extend(group.fallbacks)
        assert last is not None
        raise last

    async def _try_group(
        self,
        group: Group,
        prompt_tokens: int,
        output_tokens: int | None,
        deadline: float,
        call: Callable[[Deployment, float, int | None], Awaitable[T]],
        counter: list[int],
        ctx: CallContext | None = None,
        trace: AttemptTrace | None = None,
        choices: int = 1,
    ) -> tuple[T, _Attempt]:
        needed = prompt_tokens + (output_tokens or 0)
        fitting = [d for d in group.deployments if d.fits(needed)]
        if not fitting:
            largest = max((d.config.context_window or 0) for d in group.deployments)
            raise ContextWindowExceededError(
                f"The request needs about {needed} tokens; the largest context window of "
                f"'{group.name}' is {largest}. Shorten the messages or lower max_tokens."
            )
        tried: set[str] = set()
        retries = self.config.router.num_retries
        attempt_no = 0
        while True:
            fresh = [d for d in fitting if d.id not in tried] or fitting
            usable = self.cooldowns.usable(fresh, lambda d: d.id)
            dep = pick(group.strategy, usable, self._rng, prompt_tokens, output_tokens)
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError(
                    f"No answer from '{group.name}' within the {self.config.router.deadline:g} s deadline",
                    deployment=dep.id,
                )
            timeout = min(dep.timeout, remaining)
            # Budgets see the worst case of this attempt before any money is spent (may raise); the attempt
            # then asks for no longer an answer than the hold covers.
            hold: Hold | None = None
            if ctx is not None and ctx.meter is not None:
                try:
                    hold = await ctx.meter.reserve(dep, prompt_tokens, output_tokens, choices)
                except UnpricedModelError:
                    tried.add(dep.id)
                    if any(d.id not in tried for d in fitting):
                        continue  # a sibling with a price may answer
                    raise
            cap = hold.output_tokens if hold is not None else None
            started = self._clock.monotonic()
            if attempt_no:
                self.metrics.retried(group.name)
            attempt_no += 1
            counter[0] += 1
            dep.stats.in_flight += 1
            span = trace.start(dep, attempt_no) if trace is not None else None
            try:
                async with asyncio.timeout(timeout):
                    result = await call(dep, timeout, cap)
            except TimeoutError:
                if timeout < dep.timeout:
                    raise DeadlineExceededError(
                        f"No answer from '{group.name}' within the {self.config.router.deadline:g} s deadline",
                        deployment=dep.id,
                    ) from None
                err: ProviderError = UpstreamTimeoutError(
                    f"upstream {dep.id} gave no answer within {timeout:g} s", deployment=dep.id
                )
            except ProviderError as exc:
                err = exc
            except BaseException as exc:
                if span is not None:
                    trace.failed(span, exc)  # type: ignore[union-attr]
                if hold is not None:
                    await hold.release()
                raise
            else:
                self.cooldowns.success(dep.id)
                return result, _Attempt(dep, started, hold, span=span)
            finally:
                dep.stats.in_flight -= 1
            if span is not None:
                trace.failed(span, err)  # type: ignore[union-attr]
            if hold is not None:
                await hold.release()  # a failed attempt costs nothing
            tried.add(dep.id)
            self.metrics.upstream_failed(dep.id, err)
            if isinstance(err, ContextWindowExceededError | UpstreamBadRequestError):
                raise err
            log.info("upstream %s failed (attempt %d): %s", dep.id, attempt_no,
                     scrub_message(f"{type(err).__name__}: {err.message}"))
            self.cooldowns.failure(dep.id, err.retry_after)
            self.failures.record(dep.id, err.upstream_status or err.status, type(err).__name__, err.message)
            untried = [d for d in fitting if d.id not in tried]
            if not err.retryable:
                if untried and not isinstance(err, UpstreamBadResponseError):
                    continue  # a misconfigured deployment: try a sibling at once
                raise err
            if attempt_no > retries:
                raise err
            delay = self._backoff.delay(attempt_no - 1, self._rng, err.retry_after)
            if self._clock.monotonic() + delay >= deadline:
                raise err
            if delay > 0:
                await self._clock.sleep(delay)

    # -- ChatModel -------------------------------------------------------------------------------
    async def _account(
        self, attempt: _Attempt, usage: Usage | None, stream: bool, n: int, model: str, ctx: CallContext | None
    ) -> Usage:
        """The one place cost is computed; settles the attempt's budget hold and tells observers."""
        usage = usage or Usage()
        # The upstream's word, bounded: a negative count would credit budgets, a huge one break the usage row.
        usage.prompt_tokens = min(max(usage.prompt_tokens, 0), MAX_SAFE_INT)
        usage.completion_tokens = min(max(usage.completion_tokens, 0), MAX_SAFE_INT)
        usage.cost = attempt.deployment.price.cost(usage.prompt_tokens, usage.completion_tokens)
        if usage.total_tokens <= 0 or usage.total_tokens > MAX_SAFE_INT:
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        latency = self._clock.monotonic() - attempt.started
        attempt.deployment.stats.observe(latency)
        record = UsageRecord(
            model, attempt.deployment.id, usage.prompt_tokens, usage.completion_tokens, usage.cost,
            latency, 200, stream, n,
        )
        if ctx is not None and ctx.account is not None and not attempt.charged:
            attempt.charged = True
            # Journaled before the settle and before any of the answer leaves.
            ctx.account.charged(record, attempt.hold, ctx.depth > 0)
        await attempt.settle(usage.cost)
        if attempt.span is not None and self.tracing is not None:
            self.tracing.accounted(attempt.span, usage)
            attempt.span = None
        if ctx is not None:
            ctx.records.append(record)
        for observe in self.observers:
            observe(record)
        return usage

    async def complete(self, request: ChatRequest, ctx: CallContext | None = None) -> ChatResponse:
        async def call(dep: Deployment, _timeout: float, cap: int | None) -> ChatResponse:
            return await dep.model.complete(capped(request, cap, dep.model))

        prompt = estimate_request_tokens(request)
        trace = self.tracing.attempts("chat", request, request.model) if self.tracing is not None else None
        response, attempt, n = await self._run(request.model, prompt, request.output_limit(), call, ctx, trace,
                                               request.n or 1)
        if attempt.span is not None:
            trace.answered(attempt.span, response)  # type: ignore[union-attr]
        if response.usage is None:
            response.usage = _estimate(prompt, sum(len(c.message.content or "") for c in response.choices))
        response.usage = await self._account(attempt, response.usage, False, n, request.model, ctx)
        response.produced_by(deployment=attempt.deployment.id)
        return response

    async def stream(self, request: ChatRequest, ctx: CallContext | None = None) -> AsyncGenerator[ChatChunk, None]:
        async def call(dep: Deployment, _timeout: float, cap: int | None
                       ) -> tuple[AsyncIterator[ChatChunk], ChatChunk]:
            it = aiter(dep.model.stream(capped(request, cap, dep.model)))
            try:
                first = await anext(it)
            except StopAsyncIteration:
                # Nothing at all is not an empty answer: an upstream that failed to say so (a stream
                # request answered in a shape the provider did not recognise, say). Found before the
                # first byte goes to the client, so a sibling or a fallback may still answer.
                raise UpstreamBadResponseError(
                    f"upstream {dep.id} ended its stream without sending anything", deployment=dep.id
                ) from None
            except BaseException:
                await _close(it)
                raise
            return it, first

        prompt = estimate_request_tokens(request)
        trace = self.tracing.attempts("chat", request, request.model) if self.tracing is not None else None
        (it, first), attempt, n = await self._run(request.model, prompt, request.output_limit(), call, ctx, trace,
                                                  request.n or 1)
        span = attempt.span
        reasons: list[str] = []
        dep = attempt.deployment
        dep.stats.in_flight += 1
        reported: Usage | None = None
        """What the upstream said it used, over all its reports."""
        held: ChatChunk | None = None
        """The upstream's usage chunk: sent last, with the usage as accounted."""
        last = first
        text_len = 0
        accounted = False
        try:
            chunk: ChatChunk | None = first
            while chunk is not None:
                last = chunk
                if chunk.usage is not None:
                    reported = _merge_usage(reported, chunk.usage)
                    chunk.usage = None
                    if not chunk.choices:
                        held = chunk
                if chunk is not held:
                    for c in chunk.choices:
                        text_len += len(c.delta.content or "")
                        if span is not None and c.finish_reason:
                            reasons.append(c.finish_reason)
                    yield chunk
                try:
                    async with asyncio.timeout(dep.timeout):
                        chunk = await anext(it)
                except StopAsyncIteration:
                    chunk = None
                except TimeoutError:
                    raise UpstreamTimeoutError(
                        f"upstream {dep.id} stopped sending for {dep.timeout:g} s", deployment=dep.id
                    ) from None
            # One figure: accounted once (usage record, cost, budget), then told to the client in the
            # one last chunk, however many times the upstream reported usage.
            if span is not None:
                trace.streamed(span, last.model, reasons)  # type: ignore[union-attr]
            usage = await self._account(
                attempt, reported or _estimate(prompt, text_len), True, n, request.model, ctx
            )
            accounted = True
            final = held or ChatChunk(id=last.id, created=last.created, model=last.model)
            final.usage = usage
            yield final
        finally:
            dep.stats.in_flight -= 1
            if not accounted:
                # Cut short (client gone, upstream error): account what was produced.
                await self._account(attempt, _cut_short(reported, prompt, text_len), True, n, request.model, ctx)
            await _close(it)

    async def embed(self, request: EmbeddingRequest, ctx: CallContext | None = None) -> EmbeddingResponse:
        """One embedding per input, in input order, floats or base64 as asked, whatever the upstream sent."""

        async def call(dep: Deployment, _timeout: float, _cap: int | None) -> EmbeddingResponse:
            if not isinstance(dep.model, EmbeddingModel):
                raise InvalidRequestError(f"'{dep.name}' cannot make embeddings", param="model")
            return _in_order(await dep.model.embed(request), request, dep.id)

        ids = request.token_ids()
        prompt = sum(map(len, ids)) if ids is not None else sum(map(estimate_text_tokens, request.texts()))
        trace = self.tracing.attempts("embeddings", None, request.model) if self.tracing is not None else None
        response, attempt, n = await self._run(request.model, prompt, 0, call, ctx, trace)  # no answer to hold
        if attempt.span is not None:
            attempt.span.set_attribute("gen_ai.response.model", response.model)
        usage = Usage(prompt_tokens=response.usage.prompt_tokens or prompt)
        response.usage.cost = (await self._account(attempt, usage, False, n, request.model, ctx)).cost
        return response


def _in_order(response: EmbeddingResponse, request: EmbeddingRequest, deployment: str) -> EmbeddingResponse:
    """The upstream's answer checked (one embedding per input), in input order and in the asked encoding.

    An upstream that cannot send base64 (or ignores ``encoding_format``) sends floats: they are encoded
    here; one that sends base64 unasked is decoded.
    """
    wanted = request.count()
    data = sorted(response.data, key=lambda d: d.index)
    if [d.index for d in data] != list(range(wanted)):
        raise UpstreamBadResponseError(
            f"upstream {deployment} answered {len(data)} embeddings for {wanted} inputs", deployment=deployment
        )
    base64 = request.encoding_format == "base64"
    for d in data:
        if base64 and isinstance(d.embedding, list):
            d.embedding = encode_embedding(d.embedding)
        elif not base64 and isinstance(d.embedding, str):
            try:
                d.embedding = decode_embedding(d.embedding)
            except ValueError:
                raise UpstreamBadResponseError(
                    f"upstream {deployment} answered an embedding that is neither floats nor base64 float32",
                    deployment=deployment,
                ) from None
    response.data = data
    return response


def _merge_usage(seen: Usage | None, new: Usage) -> Usage:
    """One figure for a stream that reported its usage more than once.

    Each report is taken as the total so far (OpenAI-compatible servers with continuous usage
    stats, Gemini), so the last one wins; a count a later report leaves at 0 keeps its earlier
    value (a prompt count sent only at the start). Adding the reports up would count twice.
    """
    if seen is None:
        return new.model_copy(deep=True)
    merged = Usage.model_validate({**seen.model_dump(exclude_none=True), **new.model_dump(exclude_none=True)})
    filled = False
    for name in ("prompt_tokens", "completion_tokens"):
        if not getattr(new, name) and getattr(seen, name):
            setattr(merged, name, getattr(seen, name))
            filled = True
    if filled or not merged.total_tokens:
        merged.total_tokens = merged.prompt_tokens + merged.completion_tokens
    return merged


def _cut_short(reported: Usage | None, prompt_tokens: int, text_len: int) -> Usage:
    """The usage of a stream that broke off: the upstream's counts so far, the estimate where larger."""
    estimate = _estimate(prompt_tokens, text_len)
    if reported is None:
        return estimate
    prompt = reported.prompt_tokens or estimate.prompt_tokens
    completion = max(reported.completion_tokens, estimate.completion_tokens)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _estimate(prompt_tokens: int, text_len: int) -> Usage:
    ct = (text_len + 3) // 4
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=ct, total_tokens=prompt_tokens + ct)


async def _close(it: AsyncIterator[ChatChunk]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()
