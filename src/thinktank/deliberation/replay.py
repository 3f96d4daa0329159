"""The calls a run finished before it was taken up by another process, given back instead of made again.

A run taken up again (its process died) executes its runner once more from the last step on its checkpoint
(:meth:`LiveRun.remember`). The step under way when the process died may have finished some of its calls
(two members of three answered): each of those is on the run's record, written with the events of the same
moment, and a call the runner makes again — the same stage, role, model and prompt — is answered from that
record: not asked, not paid, not announced again. A runner whose prompts follow from what came before (the
answers, the positions, a seeded shuffle) asks exactly the same calls, so only the unfinished ones go out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from ..errors import ThinktankError
from .runs import CallRecord, Event, Reply

__all__ = ["CANCELLED", "Replay", "ReplayedFailure", "call_key"]

CANCELLED = "cancelled before it answered"
"""The error of a call stopped from outside (a cancel, a shutdown): it did not finish, it is asked again."""


class ReplayedFailure(ThinktankError):
    """A call that failed before the run was taken up: it fails the same way, without being asked again."""

    status = 502
    type = "upstream_error"


def call_key(stage: str, role: str, model: str, prompt: Sequence[Mapping[str, Any]]) -> bytes:
    """What makes two calls of a run the same call (the prompt as its record stores it)."""
    return orjson.dumps([stage, role, model, list(prompt)], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


class Replay:
    def __init__(self, calls: Iterable[CallRecord], children: Mapping[int, str] | None = None,
                 citations: Mapping[str, list[dict[str, Any]]] | None = None) -> None:
        self._waiting: dict[bytes, deque[CallRecord]] = {}
        self._children = dict(children or {})
        self._citations = dict(citations or {})
        for call in calls:
            if call.answer is None and (call.error is None or call.error == CANCELLED):
                continue  # never finished: asked again
            self._waiting.setdefault(call_key(call.stage, call.role, call.model, call.prompt), deque()).append(call)

    @classmethod
    def of(cls, calls: Sequence[CallRecord], events: Sequence[Event], state: Mapping[str, Any] | None) -> Replay:
        """From a stored run: its calls, the child runs its calls made (``child_run`` events) and the citations
        its grounded calls returned (on its checkpoint)."""
        children = {int(e.data["call"]): str(e.data["run_id"]) for e in events
                    if e.type == "child_run" and isinstance(e.data.get("call"), int) and e.data.get("run_id")}
        citations = (state or {}).get("citations")
        return cls(calls, children, citations if isinstance(citations, dict) else None)

    def __len__(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def take(self, stage: str, role: str, model: str, prompt: Sequence[Mapping[str, Any]]) -> CallRecord | None:
        """The finished call that is this one, if there is one (each is given back once)."""
        if not self._waiting:
            return None
        key = call_key(stage, role, model, prompt)
        found = self._waiting.get(key)
        if not found:
            return None
        call = found.popleft()
        if not found:
            del self._waiting[key]
        return call

    def reply(self, call: CallRecord) -> Reply:
        """The call's answer as its first execution had it (raised as a failure if it failed)."""
        if call.answer is None:
            raise ReplayedFailure(call.error or "the call failed")
        return Reply(call.answer, call.model, call.deployment, call.prompt_tokens, call.completion_tokens,
                     call.cost_usd, call.latency_ms / 1000, self._children.get(call.seq),
                     self._citations.get(str(call.seq)))
