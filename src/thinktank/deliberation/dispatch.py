"""New runs executed by the job queue's workers instead of the process that took the request.

With a shared queue (PostgreSQL), a process that runs no jobs (``THINKTANK_WORKER=false``: an API node), or any
process with ``THINKTANK_RUN_PLACEMENT=queue``, creates the run (its first event saved), queues a ``run.execute``
job and follows the run like any other process would (the event bus, then its saved record): the route, the chat
endpoint or the thread that asked gets a :class:`~.runs.LiveRun` that mirrors it, and answers as it would have.

The worker that gets the job claims the run with one conditional update (its heartbeat must still be the one
written when it was created) and executes it from the start under the request's own id and rate-limit
estimate: the request is recorded once, there, with everything it cost; the admitting process records nothing
(``CallContext.handed_over``). A run no worker claims within ``stale_after`` seconds (a lost job, a queue
backlog) is taken up by the runs' sweep like an interrupted one, and runs exactly once either way.

Only top-level ensembles and debates move: a child run (an ensemble member that is a debate) runs beside its
parent, and a new agent run stays where it was asked for (its MCP connections and approvals live there; it is
taken up elsewhere from its checkpoint if that process dies). So does a new evaluation (started by the evaluations
service, not through :meth:`Deliberation.start`; its calls are the work, each of them possibly a run that moves):
if its process dies, the runs' sweep takes it up elsewhere from its record like any interrupted run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Literal

from ..jobs.base import JobQueue
from .runs import LiveRun

if TYPE_CHECKING:
    from .resume import Resumption
    from .service import Deliberation, OnEnd

__all__ = ["EXECUTE_JOB", "Placement", "RunDispatch"]

log = logging.getLogger("thinktank.deliberation")

EXECUTE_JOB = "run.execute"
Placement = Literal["auto", "queue", "local"]
#: How long a follower waits, after the run's ``done`` event, for the worker's final save before it follows the
#: run's events again (a worker that died between the two: the run is taken up and ends again).
_FINAL_SAVE_WAIT = 10.0


class RunDispatch:
    def __init__(self, runs: Deliberation, resumption: Resumption, queue: JobQueue) -> None:
        """Registers the ``run.execute`` job on ``queue`` (every process: any may be a worker)."""
        self._runs = runs
        self._resumption = resumption
        self._queue = queue
        queue.register(EXECUTE_JOB, self._execute_job)

    @staticmethod
    def moves(run: LiveRun) -> bool:
        """Whether a new run of this kind may go to a worker."""
        return run.kind in ("ensemble", "debate") and not run.ctx.parent_run

    async def hand_over(self, run: LiveRun, on_end: OnEnd | None) -> asyncio.Task[None]:
        """Queue ``run`` (created and saved) for a worker; the task that follows it here until it ends (then
        ``on_end`` is told how, recording nothing: the worker records the request)."""
        ctx = run.ctx
        ctx.handed_over = True
        payload = {"run_id": run.id, "heartbeat": run.heartbeat, "request_id": ctx.request_id,
                   "estimated_tokens": ctx.estimated_tokens}
        try:
            await self._queue.defer(EXECUTE_JOB, payload)
        except Exception:  # (the database is down): the runs' sweep takes it up within stale_after seconds
            log.warning("queueing run %s failed; the runs' sweep takes it up", run.id, exc_info=True)
        return asyncio.get_running_loop().create_task(self._follow(run, on_end))

    async def _execute_job(self, payload: dict[str, Any]) -> None:
        run_id, heartbeat = payload.get("run_id"), payload.get("heartbeat")
        request_id, estimated = payload.get("request_id"), payload.get("estimated_tokens")
        if not isinstance(run_id, str) or not isinstance(heartbeat, (int, float)):
            log.error("a %s job without a run: %r", EXECUTE_JOB, payload)
            return
        await self._resumption.execute(
            run_id, float(heartbeat), request_id=request_id if isinstance(request_id, str) else None,
            estimated_tokens=estimated if isinstance(estimated, int) and estimated >= 0 else 0)

    async def _follow(self, run: LiveRun, on_end: OnEnd | None) -> None:
        runs, clock = self._runs, self._runs.clock
        code = 499
        try:
            while True:
                try:
                    async for event in runs.feed.follow(run.id, len(run.events)):
                        run.add(event)
                    record = await self._final_record(run.id)
                except _GoneError:
                    run.status, run.error = "failed", "The run was deleted."
                    break
                except Exception:  # the database or the bus is down: the run goes on; follow it when they are back
                    log.warning("following run %s failed; trying again", run.id, exc_info=True)
                    await clock.sleep(1.0)
                    continue
                if record is not None:
                    run.ended_elsewhere(record)
                    break
            code = runs.status_code(run.status)
        finally:
            if not run.stopped:  # (this process is stopping) the run goes on in its worker
                run.lost = True
            run.wake()
            if on_end is not None:
                await on_end(code, False)

    async def _final_record(self, run_id: str) -> dict[str, Any] | None:
        """The run's record once its executor saved how it ended or that it paused (None: still running after a
        while, follow it again)."""
        clock = self._runs.clock
        waited, pause = 0.0, 0.01
        while True:
            record = await self._runs.store.get(run_id)
            if record is None:
                raise _GoneError(run_id)
            if record["status"] != "running":
                return record
            if waited >= _FINAL_SAVE_WAIT:
                return None
            await clock.sleep(pause)
            waited += pause
            pause = min(pause * 2, 0.25)


class _GoneError(LookupError):
    """The run's record is gone (its account was deleted)."""
