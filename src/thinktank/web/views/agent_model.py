"""An agent run as the pages show it: its steps (model calls, tool calls with their arguments and results,
decisions, warnings) folded from the run's events, and the calls that wait for a person's decision (the
approval card), read from the run's checkpoint.

The chat page's step block, the run page and the page script (``static/js/agent.js``, which applies the
same events to the same markup as they arrive) show the same thing. Nothing here is trusted: tool
arguments and results are text the templates escape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ...deliberation.runs import PAUSED, Event
from ..render import money

if TYPE_CHECKING:
    from ...accounts.principal import Principal
    from ...api.state import AppState

__all__ = ["AgentRunView", "ModelItem", "NoteItem", "ToolItem", "WaitingCall", "build_view", "duration",
           "load_agent_run", "pretty"]

TIMED_OUT = "nobody approved it in time"
"""The reason a call denied at its approval deadline is given (as the agents service words it)."""


def duration(ms: float | None) -> str:
    """Milliseconds as the steps show them: ``<1 ms``, ``44 ms``, ``1.25 s``."""
    if ms is None:
        return ""
    return "<1 ms" if ms < 1 else f"{round(ms)} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _stats(*parts: str) -> str:
    return " · ".join(p for p in parts if p)


def pretty(value: Any) -> str:
    """Arguments as indented JSON (what the card's text box holds, what the steps show)."""
    return json.dumps(value if value is not None else {}, indent=2, ensure_ascii=False, sort_keys=False)


@dataclass
class ModelItem:
    """Step ``step``: one call of the agent's model."""

    step: int
    model: str
    state: Literal["running", "ok", "failed"] = "running"
    latency_ms: float | None = None
    tokens: int | None = None
    cost_usd: float | None = None
    error: str | None = None
    kind: Literal["model"] = "model"

    @property
    def stats(self) -> str:
        """``44 ms · 195 tokens · $0`` (once it answered)."""
        tokens = f"{self.tokens} tokens" if self.tokens is not None else ""
        return _stats(duration(self.latency_ms), tokens, money(self.cost_usd) if self.cost_usd is not None else "")


@dataclass
class ToolItem:
    """One tool call the model asked for, from its proposal to its result."""

    call_id: str
    tool: str
    arguments: Any = None
    state: Literal["waiting", "decided", "running", "ok", "error", "denied"] = "running"
    decision: str | None = None
    """``approved`` or ``denied`` when a person decided (or the deadline did)."""
    reason: str | None = None
    edited: bool = False
    """Approved with arguments the person changed."""
    preview: str | None = None
    """The start of the result (or the error), as the run's events carry it."""
    full: str | None = None
    """The whole result, from the run's record (the run page)."""
    latency_ms: float | None = None
    cost_usd: float | None = None
    kind: Literal["tool"] = "tool"

    @property
    def arguments_json(self) -> str:
        return pretty(self.arguments)

    @property
    def label(self) -> str:
        """Where the call stands: ``waiting for approval``, ``approved, arguments edited · done``, ``denied``."""
        parts = []
        if self.decision == "approved":
            parts.append("approved, arguments edited" if self.edited else "approved")
        elif self.decision == "denied" and self.state == "decided":
            parts.append("denied")
        parts.append(_STATE_WORDS[self.state])
        return _stats(*parts)

    @property
    def stats(self) -> str:
        return _stats(duration(self.latency_ms), money(self.cost_usd) if self.cost_usd is not None else "")


_STATE_WORDS = {"waiting": "waiting for approval", "decided": "", "running": "running", "ok": "done",
                "error": "failed", "denied": "denied"}


@dataclass
class NoteItem:
    """Something the run said between steps: a warning, a resumption, an error."""

    text: str
    tone: Literal["info", "warning", "error"] = "info"
    kind: Literal["note"] = "note"


Item = ModelItem | ToolItem | NoteItem


@dataclass
class WaitingCall:
    """A proposed call waiting for a decision: what the approval card shows."""

    id: str
    tool: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return pretty(self.arguments)

    @property
    def rows(self) -> int:
        """The card's text box fits the arguments (within reason)."""
        return max(3, min(14, self.arguments_json.count("\n") + 2))


@dataclass
class AgentRunView:
    run_id: str
    status: str
    items: list[Item] = field(default_factory=list)
    last_seq: int = 0
    """The last event folded in (the page script follows the run from there)."""
    answer: str = ""
    """The text the agent has written so far."""
    waiting: list[WaitingCall] = field(default_factory=list)
    deadline: float | None = None
    """When undecided calls are denied (Unix time)."""
    mine: bool = False
    """The viewer started the run, so decides its calls."""

    @property
    def model_calls(self) -> int:
        return sum(1 for i in self.items if isinstance(i, ModelItem))

    @property
    def tool_calls(self) -> int:
        return sum(1 for i in self.items if isinstance(i, ToolItem))

    @property
    def summary(self) -> str:
        """``2 model calls, 1 tool call``."""
        m, t = self.model_calls, self.tool_calls
        return f"{m} model call{'' if m == 1 else 's'}, {t} tool call{'' if t == 1 else 's'}"

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def paused(self) -> bool:
        return self.status == PAUSED


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class _Fold:
    """Applies events in order (the page script's ``AgentSteps.apply`` does the same in the browser)."""

    def __init__(self, view: AgentRunView) -> None:
        self.view = view
        self.tools: dict[str, ToolItem] = {}
        self.steps: dict[str, ModelItem] = {}

    def tool(self, call_id: str, tool: str) -> ToolItem:
        item = self.tools.get(call_id)
        if item is None:
            item = self.tools[call_id] = ToolItem(call_id, tool)
            self.view.items.append(item)
        return item

    def apply(self, event: Event) -> None:
        d, view = event.data, self.view
        view.last_seq = max(view.last_seq, event.seq)
        kind = event.type
        if kind == "synthesis_token":
            view.answer = _text(d.get("text")) if d.get("replace") else view.answer + _text(d.get("text"))
        elif kind == "step" and d.get("kind") == "model":
            step = int(d.get("step") or len(self.steps) + 1)
            self.steps[f"step {step}"] = model = ModelItem(step, _text(d.get("model")))
            view.items.append(model)
        elif kind == "step" and d.get("kind") == "warning":
            view.items.append(NoteItem(_text(d.get("message")), "warning"))
        elif kind in ("model_answered", "model_failed") and d.get("stage") == "step":
            found = self.steps.get(_text(d.get("label")))
            if found is not None:
                found.state = "ok" if kind == "model_answered" else "failed"
                found.latency_ms = _number(d.get("latency_ms"))
                found.tokens = int(d["tokens"]) if isinstance(d.get("tokens"), int) else None
                found.cost_usd = _number(d.get("cost_usd"))
                found.error = _text(d.get("error")) or None
        elif kind in ("approval_requested", "approval_decided", "tool_call", "tool_result"):
            self.tool_event(kind, d)
        elif kind == "resumed":
            why = "after the server running it stopped" if d.get("reason") == "interrupted" else "on request"
            view.items.append(NoteItem(f"Resumed {why}."))
        elif kind == "error":
            view.items.append(NoteItem(_text(d.get("message")) or "The run failed.", "error"))
        elif kind == "done":
            view.status = _text(d.get("status")) or view.status

    def tool_event(self, kind: str, d: dict[str, Any]) -> None:
        if kind == "approval_requested":
            for call in d.get("calls") or []:
                if isinstance(call, dict):
                    item = self.tool(_text(call.get("id")), _text(call.get("tool")))
                    item.arguments, item.state = call.get("arguments"), "waiting"
        elif kind == "approval_decided":
            ids = [d.get("call_id")] if d.get("call_id") else list(d.get("call_ids") or [])
            for call_id in ids:
                item = self.tool(_text(call_id), _text(d.get("tool")))
                item.decision, item.state = _text(d.get("decision")) or None, "decided"
                item.reason = TIMED_OUT if d.get("reason") == "timeout" and not d.get("call_id") else (
                    _text(d.get("reason")) or None)
                item.edited = bool(d.get("edited"))
        elif kind == "tool_call":
            item = self.tool(_text(d.get("call_id")), _text(d.get("tool")))
            item.arguments, item.state = d.get("arguments"), "running"
            if d.get("approved"):
                item.decision = "approved"
        else:  # tool_result
            item = self.tool(_text(d.get("call_id")), _text(d.get("tool")))
            item.state = "denied" if d.get("denied") else "ok" if d.get("ok") else "error"
            item.preview = _text(d.get("preview"))
            item.latency_ms, item.cost_usd = _number(d.get("latency_ms")), _number(d.get("cost_usd"))


def build_view(run_id: str, status: str, events: list[Event], *, calls: list[dict[str, Any]] | None = None
               ) -> AgentRunView:
    """The steps of run ``run_id`` from its ``events``; with the record's ``calls``, each tool call also gets
    its whole result (a tool call's record is written with its ``tool_call`` event, so they pair in order)."""
    view = AgentRunView(run_id, status)
    fold = _Fold(view)
    started: list[ToolItem] = []
    for event in events:
        fold.apply(event)
        if event.type == "tool_call":
            started.append(fold.tools[_text(event.data.get("call_id"))])
    view.status = status  # the run's own status wins over its last event (a run paused after its events)
    if calls is not None:
        records = [c for c in calls if c.get("stage") == "tool"]
        for item, record in zip(started, records, strict=False):
            item.full = _text(record.get("answer") if record.get("error") is None else record.get("error")) or None
    return view


async def load_agent_run(state: AppState, principal: Principal, run_id: str, *,
                         calls: list[dict[str, Any]] | None = None) -> AgentRunView | None:
    """The agent run ``run_id`` as the viewer may see it: their own run (an admin: anyone's, without the
    approval card); None for anything else (another user's run, a run that is not an agent's, no run)."""
    found = await state.agents.store.owner(run_id)
    if found is None or found[1] != "agent" or (found[0] != principal.user_id and not principal.is_admin):
        return None
    live = state.deliberation.live.get(run_id)
    if live is not None:
        events, status = list(live.events), live.status
    else:
        events, status = await state.deliberation.store.events(run_id), found[2]
    view = build_view(run_id, status, events, calls=calls)
    view.mine = found[0] == principal.user_id
    if view.paused:
        checkpoint = await state.agents.store.state(run_id)
        if checkpoint is not None:
            view.waiting = [WaitingCall(c.id, c.qualified or c.name, c.arguments or {}) for c in checkpoint.waiting()]
            view.deadline = checkpoint.approval_deadline
    return view
