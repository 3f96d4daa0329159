"""Turns whose process died, finished by another process.

A turn shows it is alive through its row (``thread_turns.heartbeat_at``, written by the process running it:
:class:`~.turn_log.TurnLog`). A periodic job of the queue (``turn.sweep``, every second or two, one worker at a
time) looks for turns not ended and silent for ``stale_after`` seconds, and queues a ``turn.resume`` job for
each (one waiting job per turn: a queueing lock). That job claims the turn with one conditional update (its
owner becomes this process, its heartbeat now: exactly one process wins, and the one that stalled can write
it no more) and takes the thread's lease over, then:

- checks the caller again, as they are now (a revoked key or account ends the turn with an error, as does a
  model they may no longer use);
- goes on with the turn's events: first ``restart`` (the answer so far is void; its number jumps past
  anything the dead process may have sent, see :data:`~.turn_log.RESTART`), then the new answer, then
  ``message`` (the user message and the answer stored together, once: the store is guarded by the turn's
  owner) or ``error``;
- asks the thread's model again with the prompt built as the turn built it (history, rolling summary,
  persona, memories, knowledge), paying under a new record of usage (:meth:`Gate.resumed`); or, when the
  turn was answered by a run (an ensemble, a debate, an agent), waits for that run, which the runs'
  own resumption takes up from its checkpoint, and stores its answer: the run is not asked again.

A turn taken up more than :data:`MAX_TAKE_UPS` times, or whose thread's lease lapsed before anyone took it
up (a new turn may be under way), ends with an error; nothing is stored for it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Table, and_, select, update

from ..accounts.principal import Principal
from ..errors import ConflictError, PermissionDeniedError, RateLimitError, RunFailedError, ThinktankError
from ..jobs import JobQueue
from ..knowledge.ingestions import PrincipalLookup
from ..store.tables import Thread, ThreadMessage, ThreadTurn
from .threads import NewMessage, message_public
from .turn_log import RESTART, TurnSpec

if TYPE_CHECKING:
    from ..deliberation.runs import Event
    from ..store.tables import Thread as ThreadRow
    from .service import Conversations, Turn

__all__ = ["MAX_TAKE_UPS", "RESTART_GAP", "RESUME_JOB", "REVOKED", "SWEEP_JOB", "RunReader", "TurnResumption"]

log = logging.getLogger("thinktank.conversations")

RESUME_JOB = "turn.resume"
SWEEP_JOB = "turn.sweep"
MAX_TAKE_UPS = 3
"""A turn taken up this often (each process that took it died too) ends with an error."""
RESTART_GAP = 1_000_000
"""How far the numbers of a turn's events jump when it is taken up: past anything the dead process may have
sent and not stored (it stores them every quarter of a second)."""
REVOKED = "The key or account that sent this message was revoked, so its answer cannot be finished."
_TURNS: Table = ThreadTurn.__table__  # type: ignore[assignment]
_THREADS: Table = Thread.__table__  # type: ignore[assignment]


class RunReader(Protocol):
    """Runs as their owner reads them (:class:`thinktank.deliberation.service.Deliberation`)."""

    def events(self, run_id: str, principal: Principal, after: int = 0) -> AsyncIterator[Event]: ...

    async def get(self, run_id: str, principal: Principal) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class _Claimed:
    turn_id: str
    thread_id: str
    spec: TurnSpec | None
    attempts: int
    run_id: str | None
    leased: bool
    """The thread's lease was still held (by the dead turn): it is this process's now."""


class TurnResumption:
    def __init__(self, conv: Conversations, principals: PrincipalLookup, *, runs: RunReader | None = None) -> None:
        self.conv = conv
        self.principals = principals
        self.runs = runs
        self.queue: JobQueue | None = None

    def register(self, queue: JobQueue) -> None:
        """The take-up job and the periodic sweep that queues it (every 1 s, or 2 s when ``stale_after`` > 4)."""
        self.queue = queue
        queue.register(RESUME_JOB, self._job)
        queue.every(SWEEP_JOB, 1.0 if self.conv.turn_log.stale_after <= 4 else 2.0, self._sweep_tick)

    # -- finding and claiming ------------------------------------------------------------------
    async def stale(self) -> list[str]:
        """Turns not ended whose process has shown no sign of life for ``stale_after`` seconds (and that hold
        what answering them again takes), not counting those running here."""
        log_ = self.conv.turn_log
        silent = log_.stale_after
        q = (select(_TURNS.c.id).where(and_(
            _TURNS.c.ended_at.is_(None), _TURNS.c.heartbeat_at < self.conv.clock.time() - silent,
            _TURNS.c.content.is_not(None))).order_by(_TURNS.c.heartbeat_at).limit(50))
        async with self.conv.threads.db.engine.connect() as conn:
            found = [r[0] for r in (await conn.execute(q)).all()]
        return [turn_id for turn_id in found if not log_.runs_here(turn_id)]

    async def sweep(self) -> int:
        """Queue a take-up of every stale turn (one waiting job per turn); how many were queued."""
        assert self.queue is not None
        queued = 0
        for turn_id in await self.stale():
            queued += await self.queue.defer(RESUME_JOB, {"turn_id": turn_id},
                                             queueing_lock=f"{RESUME_JOB}:{turn_id}") is not None
        return queued

    async def _sweep_tick(self) -> None:
        await self.sweep()

    async def _job(self, payload: dict[str, Any]) -> None:
        await self.take_up(str(payload["turn_id"]))

    async def _claim(self, turn_id: str) -> _Claimed | None:
        """Make a stale turn this process's, and its thread's lease with it, in one transaction (None if another
        process was first, or if the turn is alive or ended)."""
        from .service import TURN_LEASE

        log_ = self.conv.turn_log
        now = self.conv.clock.time()
        async with self.conv.threads.db.engine.begin() as conn:
            taken = await conn.execute(update(_TURNS).where(and_(
                _TURNS.c.id == turn_id, _TURNS.c.ended_at.is_(None), _TURNS.c.heartbeat_at < now - log_.stale_after,
                _TURNS.c.content.is_not(None),  # (answered: its messages are stored)
            )).values(owner=log_.owner, heartbeat_at=now, attempts=_TURNS.c.attempts + 1))
            if not taken.rowcount:
                return None
            row = (await conn.execute(select(
                _TURNS.c.thread_id, _TURNS.c.user_id, _TURNS.c.key_id, _TURNS.c.content, _TURNS.c.request,
                _TURNS.c.attempts, _TURNS.c.run_id).where(_TURNS.c.id == turn_id))).one()
            leased = await conn.execute(update(_THREADS).where(and_(
                _THREADS.c.id == row.thread_id, _THREADS.c.busy_until > now)).values(busy_until=now + TURN_LEASE))
        spec = None
        if row.user_id is not None and row.content is not None and isinstance(row.request, dict):
            spec = TurnSpec.of(row.user_id, row.key_id, row.content, row.request)
        return _Claimed(turn_id, row.thread_id, spec, int(row.attempts), row.run_id, bool(leased.rowcount))

    # -- going on ------------------------------------------------------------------------------
    async def take_up(self, turn_id: str) -> bool:
        """Claim ``turn_id`` if its process died and go on with it here; whether this process took it (it may
        have ended it at once: a revoked key)."""
        from .service import Turn

        conv = self.conv
        if conv.turn_log.runs_here(turn_id):
            return False
        claimed = await self._claim(turn_id)
        if claimed is None:
            return False
        events = await conv.turn_log.events(turn_id)
        last = events[-1].id if events else 0
        turn = Turn(claimed.thread_id, id=turn_id, log=events, next_id=last + RESTART_GAP,
                    replace_from=claimed.spec.replace_from if claimed.spec is not None else None)
        log.info("taking up turn %s of thread %s (its process stopped; take-up %d)", turn_id, claimed.thread_id,
                 claimed.attempts)
        try:
            await self._go_on(turn, claimed, last)
        except Exception:
            log.exception("turn %s could not be taken up", turn_id)
            if turn.id not in conv._running and not turn.closed:
                await self._end(turn, claimed, last,
                                ThinktankError("The answer could not be finished (see the server log)."))
        return True

    async def _go_on(self, turn: Turn, claimed: _Claimed, last: int) -> None:
        """Start the turn here again (or end it at once, with its error)."""
        conv = self.conv
        spec = claimed.spec
        if spec is None or not claimed.leased or claimed.attempts > MAX_TAKE_UPS:
            why = ("nobody took the answer up in time" if spec is not None and not claimed.leased
                   else f"it stopped {claimed.attempts} times" if spec is not None else "it cannot be taken up")
            await self._end(turn, claimed, last, ConflictError(
                f"The server answering this message stopped and {why}; send it again.", code="turn_interrupted"))
            return
        principal = await self.principals(spec.user_id, spec.key_id)
        if principal is None:
            await self._end(turn, claimed, last, PermissionDeniedError(REVOKED, code="key_revoked"))
            return
        try:
            thread = await conv.threads.get(principal, claimed.thread_id)
            model = conv.threads.check_model(principal, spec.model)
        except ThinktankError as exc:  # the thread is gone, or the model is no longer theirs
            await self._end(turn, claimed, last, exc)
            return
        conv._hold(thread.id)
        self._restart(turn, last)
        content, run_id = spec.content, claimed.run_id
        if run_id is not None and self.runs is not None:
            def follow_run() -> Awaitable[list[ThreadMessage]]:
                return self._wait_for_run(turn, principal, thread, spec, run_id)

            # The run pays for its own resumed part (the runs' resumption admits it again).
            conv._launch(turn, conv._run(turn, principal, thread, model, None, follow_run, None))
            return
        from .service import TurnOptions

        admission = conv.gate.resumed(principal, model)
        admission.stream = spec.stream
        options = TurnOptions(model=model, stream=spec.stream, max_tokens=spec.max_tokens,
                              temperature=spec.temperature)

        def ask_again() -> Awaitable[list[ThreadMessage]]:
            return conv._turn(turn, principal, thread, content, model, options, admission)

        conv._launch(turn, conv._run(turn, principal, thread, model, admission, ask_again, None))

    def _restart(self, turn: Turn, last: int) -> None:
        """Go on storing ``turn``'s events here, the first saying that the answer starts again."""
        if not self.conv.turn_log.runs_here(turn.id):
            self.conv.turn_log.reopened(turn, len(turn.log))
            turn.emit(RESTART, reason="interrupted", resumes_after=last)

    async def _end(self, turn: Turn, claimed: _Claimed, last: int, error: ThinktankError) -> None:
        """End a claimed turn here with ``error`` (after a restart: what the dead process sent is void)."""
        conv = self.conv
        self._restart(turn, last)
        turn.error = error
        turn.emit("error", **error.to_body())
        try:
            await conv.turn_log.ended(turn)
        finally:
            if claimed.leased:
                await conv._release(claimed.thread_id)
            turn.ended_at = conv.clock.monotonic()
            turn.close()
            turn.done.set()

    # -- a turn answered by a run --------------------------------------------------------------
    async def _wait_for_run(self, turn: Turn, principal: Principal, thread: ThreadRow, spec: TurnSpec,
                            run_id: str) -> list[ThreadMessage]:
        """Follow the run that answers the turn (taken up by the runs' own resumption) to its end, its answer
        streamed as it is written, and store that answer."""
        from ..deliberation.models import ANSWERED, FINISH_REASON, notice_for
        from ..deliberation.runs import PAUSED

        assert self.runs is not None
        conv = self.conv
        seen: list[Event] = []
        written = False
        record: dict[str, Any] = {"status": "running"}
        for _ in range(3):  # a follower stops when the run looks stopped: look again while it is not over
            async for event in self.runs.events(run_id, principal, seen[-1].seq if seen else 0):
                seen.append(event)
                if event.type == "synthesis_token":
                    if event.data.get("replace") and written:
                        turn.emit(RESTART, reason="replaced", resumes_after=turn.next_id - 1)
                    if event.data.get("text"):
                        written = True
                        turn.emit("delta", content=str(event.data["text"]))
                elif event.type == "stage_started":
                    turn.emit("progress", text=f"stage {event.data.get('stage')}")
                elif event.type == "tool_call":
                    turn.emit("progress", text=f"tool {event.data.get('tool')}")
                await conv._progress(thread.id)
            record = await self.runs.get(run_id, principal)
            if record["status"] != "running":
                break
        status = str(record["status"])
        if status not in ANSWERED:
            raise _run_error(run_id, status, record.get("error"))
        result = record.get("result") or {}
        answer = notice_for(run_id, seen) if status == PAUSED else str(result.get("answer") or "")
        context: dict[str, Any] = {"run_id": run_id}
        if status == "completed" and result.get("citations"):
            context["citations"] = result["citations"]
        reply = NewMessage(
            role="assistant", content=answer, model=spec.model, prompt_tokens=int(record.get("prompt_tokens") or 0),
            completion_tokens=int(record.get("completion_tokens") or 0), cost_usd=float(record.get("cost_usd") or 0),
            finish_reason=FINISH_REASON[status], context=context)
        rows = await conv.threads.append(thread.id, [NewMessage(role="user", content=spec.content), reply],
                                         replace_from=turn.replace_from, guard=conv.turn_log.guard(turn))
        turn.result = {"user_message": message_public(rows[0]), "message": message_public(rows[1]),
                       "turn_cost_usd": round(float(record.get("cost_usd") or 0), 10)}
        return rows


def _run_error(run_id: str, status: str, error: Any) -> ThinktankError:
    """What a turn whose run did not answer ends with (as :func:`thinktank.deliberation.models.run_error`)."""
    if status == "budget_exceeded":
        return RateLimitError(str(error or "Budget exceeded."), retry_after=0.0, code="budget_exceeded")
    if status == "cancelled":
        return ConflictError(str(error or "The run was cancelled."), code="run_cancelled")
    return RunFailedError(f"{error or 'The run failed.'} (run {run_id})")
