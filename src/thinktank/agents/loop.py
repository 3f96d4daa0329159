"""The agent loop: call the model with the tools' schemas, run the calls it asks for (independent ones at
once), give back the results, repeat until it answers or a limit is hit.

Every model call goes through :meth:`LiveRun.call` (the catalog and the router underneath: budgets, rate
limits, cost, ``max_cost_usd``); every tool call is a record of the run (stage ``tool``) with its arguments,
result or error, latency and the cost of what it asked of other models. After each completed step the
state is checkpointed (:mod:`.state`) with the run's events, so a resumed run goes on from there.

A call that needs approval pauses the run (:class:`RunPaused`) once the step's other calls are done: the
run then holds no task and no connection until someone decides (:mod:`.service`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ..accounts.budgets import BudgetExceededError
from ..clock import Clock
from ..deliberation.runs import CallRecord, LiveRun, RunEnded, RunPaused
from ..errors import ThinktankError, UpstreamTimeoutError
from ..gateway.context import CallContext
from ..types import Message, ToolCall
from .config import AgentConfig
from .state import AgentState, PendingCall
from .toolbox import Offered, check_arguments
from .tools import ToolContext, ToolError, ToolOutput, as_data

__all__ = ["AgentRunner"]

log = logging.getLogger("thinktank.agents")

Checkpoint = Callable[[], Awaitable[None]]


class AgentRunner:
    """Runs one agent run from ``state`` (new, or as its last checkpoint left it)."""

    def __init__(self, run: LiveRun, cfg: AgentConfig, state: AgentState, offered: Callable[[], Awaitable[Offered]],
                 save: Callable[[], Awaitable[object]], clock: Clock, *, approval_timeout: float) -> None:
        """``save`` writes the run's new events and calls, with the state last put on it (``run.checkpoint``)."""
        self.run = run
        self.cfg = cfg
        self.state = state
        self._offer = offered
        self._write = save
        self._clock = clock
        self._approval_timeout = approval_timeout
        self._started = clock.monotonic()
        self._offered: Offered | None = None
        self._lock = asyncio.Lock()
        self._next_citation = max((int(c.get("index") or 0) for c in state.citations), default=0) + 1

    # -- time ------------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self.state.elapsed + (self._clock.monotonic() - self._started)

    def _remaining(self) -> float:
        return self.cfg.time_limit - self._elapsed()

    def _stage(self) -> None:
        """Put the state as it is now on the run, to go with the next save of its events and calls, whoever
        makes it (the run's periodic save included): a finished tool call's record is never written without
        the checkpoint that holds its result, so a run resumed after a crash does not call it again."""
        elapsed, self.state.elapsed = self.state.elapsed, self._elapsed()
        try:
            self.run.checkpoint = (self.state.dumps(), self.state.approval_deadline)
        finally:
            self.state.elapsed = elapsed

    async def _save(self) -> None:
        self._stage()
        await self._persist()

    async def _persist(self) -> None:
        """Write what is staged (a newer state staged meanwhile by a parallel call goes with it)."""
        async with self._lock:  # parallel tool calls finish at once: one write at a time
            await self._write()

    # -- the loop --------------------------------------------------------------------------------
    async def __call__(self) -> dict[str, Any]:
        self._offered = offered = await self._offer()
        for warning in offered.warnings:
            if warning not in self.state.warnings:
                self.state.warnings.append(warning)
                self.run.emit("step", kind="warning", message=warning)
        while True:
            if self.state.pending:
                await self._finish_calls(offered)
            if self.state.steps >= self.cfg.max_steps:
                raise RunEnded("step_limit", self.state.result(status="step_limit"))
            remaining = self._remaining()
            if remaining <= 0:
                raise RunEnded("time_limit", self.state.result(status="time_limit"))
            step = self.state.steps + 1
            self.run.emit("step", step=step, kind="model", model=self.cfg.model)
            limited = remaining < self.cfg.step_timeout  # this call's timeout is the run's time left
            try:
                reply = await self.run.call(
                    "step", "agent", self.cfg.model, [Message.model_validate(m) for m in self.state.messages],
                    timeout=min(self.cfg.step_timeout, remaining), max_tokens=self.cfg.max_tokens,
                    temperature=self.cfg.temperature, tools=offered.schemas() or None, on_text=self._text,
                    label=f"step {step}",
                )
            except UpstreamTimeoutError:
                if not limited:
                    raise  # the model itself was too slow: the run fails, saying so
                raise RunEnded("time_limit", self.state.result(status="time_limit")) from None
            self.state.steps = step
            calls = reply.tool_calls or []
            assistant: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if calls:
                assistant["tool_calls"] = [c.model_dump(exclude_none=True) for c in calls]
            self.state.messages.append(assistant)
            self.state.pending = [self._pending(c, offered) for c in calls]
            await self._save()
            if not calls:
                return self.state.result()

    def _text(self, text: str) -> None:
        self.state.answer.append(text)
        self.run.emit("synthesis_token", text=text)

    def _pending(self, call: ToolCall, offered: Offered) -> PendingCall:
        name = call.function.name or ""
        pending = PendingCall(id=call.id, name=name, raw_arguments=call.function.arguments or "")
        tool = offered.tools.get(name)
        if tool is None:
            pending.problem = f"there is no tool '{name}' (the tools are: {', '.join(offered.tools) or 'none'})"
            return pending
        pending.qualified = tool.spec.qualified
        pending.needs_approval = offered.approval.get(name, False)
        try:
            parsed = orjson.loads(pending.raw_arguments or "{}")
        except orjson.JSONDecodeError as exc:
            pending.problem = f"the arguments are not valid JSON ({exc})"
            return pending
        pending.arguments = parsed if isinstance(parsed, dict) else None
        pending.problem = check_arguments(tool.spec.parameters, parsed)
        return pending

    # -- tool calls ------------------------------------------------------------------------------
    async def _finish_calls(self, offered: Offered) -> None:
        """Run the step's calls that may run; pause if some wait for a decision; then give the results back."""
        ready = [c for c in self.state.pending if not c.done and not c.waiting]
        if ready:
            limit = asyncio.Semaphore(self.cfg.parallel_tools)

            async def one(call: PendingCall) -> None:
                async with limit:
                    await self._execute(call, offered)  # it ends by staging the state with the call's result
                await self._persist()

            await asyncio.gather(*(one(c) for c in ready))
        waiting = self.state.waiting()
        if waiting:
            if self.state.approval_deadline is None:
                self.state.approval_deadline = self._clock.time() + self._approval_timeout
            self.run.emit("approval_requested", calls=[c.public() for c in waiting],
                          deadline=self.state.approval_deadline)
            await self._save()
            raise RunPaused
        self.state.approval_deadline = None
        for call in self.state.pending:
            self.state.messages.append({"role": "tool", "tool_call_id": call.id, "content": call.result or ""})
        self.state.pending = []
        await self._save()

    async def _execute(self, call: PendingCall, offered: Offered) -> None:
        tool = offered.tools.get(call.name)
        label = call.qualified or call.name
        if call.problem is not None or tool is None:
            self._refused(call, f"Tool error: {call.problem or 'the tool is no longer available'}")
            return
        if call.decision == "denied":
            why = f": {call.reason}" if call.reason else ""
            self._refused(call, f"The user denied this call{why}. Do not call it again with the same arguments.")
            return
        arguments = call.arguments or {}
        record = CallRecord(len(self.run.calls) + 1, "tool", "tool", label, [{"arguments": arguments}],
                            self._clock.time())
        self.run.calls.append(record)
        self.run.emit("tool_call", call_id=call.id, tool=label, arguments=arguments,
                      **({"approved": True} if call.decision == "approved" else {}))
        ctx = self.run.ctx.child(self.run.id)
        timeout = max(0.001, min(self.cfg.tool_timeout, self._remaining()))
        tc = ToolContext(principal=self.run.ctx.principal, ctx=ctx, clock=self._clock, run_id=self.run.id,
                         knowledge_bases=list(self.cfg.knowledge_bases), models=list(self.cfg.models),
                         time_limit=timeout, citation_start=self._next_citation)
        self._next_citation += 50  # room for this call's passages (parallel calls number apart)
        started = self._clock.monotonic()
        span = self.run.tracing.tool(label, call.id, arguments) if self.run.tracing is not None else None
        try:
            async with asyncio.timeout(timeout + 1.0):  # the tool's own limit first; this one if it ignores it
                output = await tool.call(arguments, tc)
        except ToolError as exc:
            output = ToolOutput(exc.message, is_error=True)
        except TimeoutError:
            output = ToolOutput(f"the tool gave no result within {timeout:g} s", is_error=True)
        except BudgetExceededError as exc:
            if span is not None:
                span.close(exc)
            self._account(record, ctx, started, "stopped: a budget was reached")
            raise
        except ThinktankError as exc:
            output = ToolOutput(exc.message, is_error=True)
        except Exception:
            log.exception("tool %s failed in run %s", label, self.run.id)
            output = ToolOutput("the tool failed (an internal error; see the server log)", is_error=True)
        if span is not None:
            self.run.tracing.tool_done(span, output.text, output.is_error)  # type: ignore[union-attr]
        self._account(record, ctx, started, output.text if output.is_error else None)
        record.answer = None if output.is_error else output.text
        if output.citations:
            self.state.citations += output.citations
        self.run.emit("tool_result", call_id=call.id, tool=label, ok=not output.is_error,
                      latency_ms=record.latency_ms, cost_usd=record.cost_usd, preview=output.text[:300])
        self._result(call, as_data(label, output.text) if not output.is_error else f"Tool error: {output.text}",
                     error=output.is_error)

    def _account(self, record: CallRecord, ctx: CallContext, started: float, error: str | None) -> None:
        """The call's latency and error on its record; what it cost (the models it asked) as every call's is."""
        record.latency_ms = round((self._clock.monotonic() - started) * 1000, 3)
        record.error = error
        self.run.account(record, ctx, "tool")

    def _refused(self, call: PendingCall, text: str) -> None:
        self.run.emit("tool_result", call_id=call.id, tool=call.qualified or call.name, ok=False, preview=text[:300],
                      **({"denied": True} if call.decision == "denied" else {}))
        self._result(call, text, error=True)

    def _result(self, call: PendingCall, text: str, *, error: bool) -> None:
        call.result = text
        call.is_error = error
        self._stage()
