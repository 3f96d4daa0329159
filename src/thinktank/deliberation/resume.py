"""Taking runs up again: a run whose process stopped (killed, crashed, stalled) goes on in another one.

A running run is saved every ``save_interval`` (0.5 s) by the process executing it; one nobody has saved for
``stale_after`` seconds was interrupted. :meth:`Resumption.take_up` claims it with one conditional update (the
run's heartbeat becomes this process's: exactly one process wins, and the one that stalled can write it no
more, see :class:`~.run_store.RunTakenOver`), rebuilds it as a :class:`LiveRun` with its saved events and calls,
and executes its runner again:

- an ensemble or a debate from its checkpoint (:meth:`LiveRun.remember`): finished steps are not done again,
  and the calls the unfinished step had finished are answered from their records (:mod:`.replay`);
- an evaluation likewise: its finished items (on its record as ``eval_item`` events) are not asked again, the
  calls of the unfinished ones are replayed (:mod:`thinktank.evals.runner`);
- an agent from its own checkpoint (:mod:`thinktank.agents.service`).

The caller's key is checked again (a revoked key ends the run, saying so); what the resumed part spends is
recorded under a new record of usage, within the run's ``max_cost_usd`` with what it spent already counted.
A run that is part of another run (an ensemble member that is an ensemble) is not taken up by itself: its
parent asks for it again when it goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..config import DebateConfig, EnsembleConfig
from ..types import Message
from .replay import Replay
from .run_store import StoredRun
from .runs import CallRecord, Event, LiveRun

if TYPE_CHECKING:
    from ..accounts.governance import Admission, Gate
    from ..accounts.principal import Authenticator
    from ..jobs.base import JobQueue
    from .service import Deliberation

__all__ = ["REVOKED", "Resumption"]

log = logging.getLogger("thinktank.deliberation")

REVOKED = "The key or account that started the run was revoked, so it cannot go on."
UNRESUMABLE = "The run could not be resumed (see the server log)."

AgentResume = Callable[[str], Awaitable[None]]
"""Takes up a claimed agent run by its id (bound by the agents service)."""


class Resumption:
    def __init__(self, runs: Deliberation, auth: Authenticator, gate: Gate, *, stale_after: float,
                 sweep_every: float | None = None) -> None:
        """``stale_after``: seconds without a save after which a running run counts as interrupted;
        ``sweep_every``: how often this process looks for such runs (default: half that, at most every 2 s, as
        often as the agents' sweep for overdue approvals: one indexed query)."""
        self.runs = runs
        self.auth = auth
        self.gate = gate
        self.stale_after = stale_after
        self.sweep_every = sweep_every if sweep_every is not None else min(2.0, stale_after / 2)
        self.agents: AgentResume | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._queue: JobQueue | None = None

    def on_queue(self, queue: JobQueue) -> None:
        """Find interrupted runs with a periodic job of ``queue`` (one worker at a time across every process that
        shares it) and take each up with a ``run.resume`` job, in whichever worker gets it (at most one waits per
        run). Instead of this process's own sweep loop; a process that runs no jobs then takes no run up."""
        queue.register("run.resume", self._resume_job)
        every = max((n for n in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30) if n <= self.sweep_every), default=1)
        queue.every("runs.sweep", every, self._sweep_job)
        self._queue = queue

    async def _sweep_job(self) -> None:
        assert self._queue is not None
        for run_id in await self.stale():
            await self._queue.defer("run.resume", {"run_id": run_id}, queueing_lock=f"run:{run_id}")

    async def _resume_job(self, payload: dict[str, Any]) -> None:
        run_id = payload.get("run_id")
        if isinstance(run_id, str):
            await self.take_up(run_id)  # claimed first: a run another worker took already is left alone

    # -- what a job queue calls ------------------------------------------------------------------
    async def stale(self, now: float | None = None) -> list[str]:
        """Running runs nobody has saved for ``stale_after`` seconds: interrupted, to be taken up."""
        return await self.runs.store.stale(self.runs.clock.time() if now is None else now, self.stale_after)

    async def take_up(self, run_id: str, *, silence: float | None = None) -> bool:
        """Claim ``run_id`` if it is interrupted (no save for ``silence`` s, default ``stale_after``) and go on
        with it here. Whether this process took it (it may have ended it at once: a revoked key)."""
        if run_id in self.runs.live:
            return False
        store, now = self.runs.store, self.runs.clock.time()
        if not await store.claim_stale(run_id, now, self.stale_after if silence is None else silence):
            return False
        try:
            stored = await store.load(run_id)
            if stored is not None:
                await self._go_on(stored)
        except Exception:
            log.exception("run %s could not be taken up again", run_id)
            await store.fail(run_id, self.runs.clock.time(), UNRESUMABLE)
        return True

    async def execute(self, run_id: str, heartbeat: float, *, request_id: str | None = None,
                      estimated_tokens: int = 0) -> bool:
        """Execute here a new run another process created and handed over (see :mod:`.dispatch`): claimed only if
        nobody touched it since (its heartbeat is still ``heartbeat``: otherwise another process took it up
        meanwhile), paying and recorded under the request's ``request_id``. Whether this process took it."""
        if run_id in self.runs.live:
            return False
        store = self.runs.store
        if not await store.claim_created(run_id, heartbeat, self.runs.clock.time()):
            return False
        try:
            stored = await store.load(run_id)
            if stored is not None:
                await self._go_on(stored, handed=(request_id, estimated_tokens))
        except Exception:
            log.exception("run %s could not be executed", run_id)
            await store.fail(run_id, self.runs.clock.time(), UNRESUMABLE)
        return True

    async def sweep(self) -> int:
        """Take up the interrupted runs this process can claim; how many it took."""
        taken = 0
        for run_id in await self.stale():
            taken += await self.take_up(run_id)
        return taken

    # -- rebuilding a run ------------------------------------------------------------------------
    async def _go_on(self, stored: StoredRun, *, handed: tuple[str | None, int] | None = None) -> None:
        """``handed``: a new run handed over with its request's id and estimated tokens (not a resumed one)."""
        row = stored.row
        run_id, now = row["id"], self.runs.clock.time()
        parent = (row["request"] or {}).get("parent_run")
        if parent:
            await self.runs.store.fail(run_id, now, f"Interrupted: it is part of run {parent}, which asks for it "
                                       "again when it goes on.")
            return
        if row["kind"] == "agent":
            if self.agents is None:
                await self.runs.store.fail(run_id, now, "Agents are not available in this server.")
                return
            await self.agents(run_id)
            return
        if row["kind"] not in ("ensemble", "debate", "evaluation"):
            await self.runs.store.fail(run_id, now, f"Runs of kind {row['kind']} are not taken up again.")
            return
        request_id, estimated = handed if handed is not None else (None, 0)
        revived = await self.revive(row, stored.events, stored.calls, request_id=request_id,
                                    estimated_tokens=estimated)
        if revived is None:
            return
        run, admission = revived
        _restore_stream(run, stored.events)
        run.state = stored.state if isinstance(stored.state, dict) else {}
        run.checkpoint_saved = stored.state is not None
        run.replay = Replay.of(stored.calls, stored.events, run.state)
        if handed is None:
            run.emit("resumed", reason="interrupted",
                     steps=sorted(k for k in run.state if k not in ("seed", "citations")), calls_reused=len(run.replay))
        request = run.request
        # (An evaluation's runner finds its configuration, its items and the items already finished on the run.)
        cfg = None if run.kind == "evaluation" else (
            EnsembleConfig if run.kind == "ensemble" else DebateConfig).model_validate(run.config)
        messages = [Message.model_validate(m) for m in request.get("messages") or []]
        runner = self.runs.runner_for(run, cfg, messages, self.runs.options_of(request))

        async def recorded(status: int, cache_hit: bool) -> None:
            await admission.finish(status, cache_hit=cache_hit)

        self.runs.launch(run, runner, recorded)

    async def revive(self, row: dict[str, Any], events: list[Event], calls: list[CallRecord], *,
                     request_id: str | None = None, estimated_tokens: int = 0) -> tuple[LiveRun, Admission] | None:
        """A claimed run as a live run here, paying under a new admission of its principal as it is now (None,
        and the run failed, if that key or account was revoked); a handed-over run's under its request's id."""
        principal = await self.auth.principal_for(row["user_id"], row["key_id"])
        if principal is None:
            await self.runs.store.fail(row["id"], self.runs.clock.time(), REVOKED)
            return None
        admission = self.gate.resumed(principal, f"{row['kind']}/{row['name']}", request_id=request_id,
                                      estimated_tokens=estimated_tokens)
        run = LiveRun(
            id=row["id"], user_id=row["user_id"], key_id=row["key_id"], kind=row["kind"], name=row["name"],
            question=row["question"], request=row["request"] or {}, config=row["config"] or {}, ctx=admission.ctx,
            models=self.runs.catalog, clock=self.runs.clock, tags=list(row["tags"] or []),
            created_at=row["created_at"], events=events, calls=calls, saved_events=len(events),
            saved_calls=len(calls), heartbeat=row["heartbeat_at"], cache_key=row["cache_key"],
        )
        _restore_totals(run, calls)
        admission.ctx.run_id = run.id
        if run.request.get("max_cost_usd") is not None:
            self.runs.cap(run, float(run.request["max_cost_usd"]), run.request.get("max_tokens"))
        return run, admission

    # -- the sweeper -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._queue is not None:
            return  # the queue's periodic job looks for them
        await self._sweep_safely()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _sweep_safely(self) -> None:
        try:
            await self.sweep()
        except Exception:
            log.exception("looking for interrupted runs failed; trying again")

    async def _sweep_loop(self) -> None:
        while True:
            await self.runs.clock.sleep(self.sweep_every)
            await self._sweep_safely()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None


def _restore_totals(run: LiveRun, calls: Sequence[CallRecord]) -> None:
    """Cost and tokens as the sum of the run's calls (what its record shows: a call counts once)."""
    run.cost = sum(c.cost_usd for c in calls)
    run.prompt_tokens = sum(c.prompt_tokens for c in calls)
    run.completion_tokens = sum(c.completion_tokens for c in calls)
    for c in calls:
        run.stage_costs[c.stage] = run.stage_costs.get(c.stage, 0.0) + c.cost_usd


def _restore_stream(run: LiveRun, events: Sequence[Event]) -> None:
    """Stages the interrupted execution started and did not finish (going on, they are not started again),
    and whether it streamed part of an answer (the next text replaces it)."""
    open_stages: list[str] = []
    for e in events:
        if e.type == "stage_started":
            open_stages.append(str(e.data.get("stage")))
        elif e.type == "stage_finished" and e.data.get("stage") in open_stages:
            open_stages.remove(str(e.data.get("stage")))
        elif e.type == "synthesis_token":
            run.replace_text = True
    run.reopened = set(open_stages)
