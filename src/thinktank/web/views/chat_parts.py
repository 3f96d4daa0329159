"""What the chat pages show beside threads: the model picker (with prices), personas and knowledge bases,
and a stored message as the page shows it (also served alone, as a fragment, once a streamed answer ends)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ...accounts.principal import Principal
from ...api.state import AppState
from ...errors import ThinktankError
from ...store.tables import ThreadMessage
from .agent_model import AgentRunView, load_agent_run

__all__ = ["KINDS", "Choices", "MessageView", "PickerGroup", "PickerModel", "agent_runs", "choices", "message_view",
           "price_label"]

KINDS: tuple[tuple[str, str], ...] = (
    ("model", "Models"), ("group", "Groups"), ("alias", "Aliases"), ("ensemble", "Ensembles"),
    ("debate", "Debates"), ("agent", "Agents"), ("knowledge_base", "Knowledge bases"),
)
"""The picker's groups, in order: (catalog kind, label)."""


@dataclass(frozen=True)
class PickerModel:
    id: str
    description: str | None
    price: str | None


@dataclass(frozen=True)
class PickerGroup:
    label: str
    models: list[PickerModel]


@dataclass(frozen=True)
class Choices:
    """What a thread can be set to: the models the user may use, their personas, their knowledge bases."""

    groups: list[PickerGroup]
    personas: list[Any]
    knowledge_bases: list[Any]

    def allowed(self, model: str) -> bool:
        return any(m.id == model for g in self.groups for m in g.models)


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:g}"


def price_label(state: AppState, name: str) -> str | None:
    """A routed model's price per million tokens (input / output), if every deployment it reaches has a
    known one; a range when they differ. None for composites and unknown prices."""
    try:
        deployments = state.router.resolve(name).deployments
    except ThinktankError:
        return None
    prices = [d.price for d in deployments]
    if not prices or not all(p.known for p in prices):
        return None
    ins, outs = [p.input for p in prices], [p.output for p in prices]
    if max(ins) == 0 and max(outs) == 0:
        return "free"
    if min(ins) == max(ins) and min(outs) == max(outs):
        return f"{_usd(ins[0])} in / {_usd(outs[0])} out per M tokens"
    return f"{_usd(min(ins))}–{_usd(max(ins))} in / {_usd(min(outs))}–{_usd(max(outs))} out per M tokens"


async def choices(state: AppState, principal: Principal) -> Choices:
    entries = await state.catalog.models(principal)
    by_kind: dict[str, list[PickerModel]] = {}
    for e in entries:
        price = price_label(state, e.id) if e.kind in ("model", "group", "alias") else None
        by_kind.setdefault(e.kind, []).append(PickerModel(e.id, e.description, price))
    groups = [PickerGroup(label, sorted(by_kind[kind], key=lambda m: m.id)) for kind, label in KINDS
              if by_kind.get(kind)]
    personas = await state.conversations.personas.list_personas(principal)
    kbs = [v.kb for v in await state.knowledge.visible(principal)]
    return Choices(groups, personas, kbs)


@dataclass(frozen=True)
class MessageView:
    """A stored message and what the page shows with it."""

    m: ThreadMessage
    citations: list[dict[str, Any]]
    max_citation: int
    """The highest ``[k]`` linked in its text (the sources are listed under it)."""
    last_answer: bool
    agent: AgentRunView | None = None
    """The agent run that wrote it (its steps; the approval card while it waits)."""

    @property
    def stopped(self) -> bool:
        return self.m.finish_reason == "stopped"


_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""What a knowledge base's or a document's id looks like: a citation's link is built from them."""


def _linkable(c: dict[str, Any]) -> dict[str, Any]:
    """The citation, without the ids of its passage link unless both are ids (an imported thread's context is
    the importer's text: ``../`` in one would make the link leave the knowledge pages)."""
    ok = all(isinstance(c.get(k), str) and _ID.fullmatch(c[k]) for k in ("kb_id", "document_id"))
    return c if ok else {**c, "kb_id": None, "document_id": None}


def message_view(m: ThreadMessage, *, last_answer: bool = False, agent: AgentRunView | None = None) -> MessageView:
    citations = [_linkable(c) for c in (m.context or {}).get("citations") or [] if isinstance(c, dict)]
    indexes = [c["index"] for c in citations if isinstance(c.get("index"), int) and 0 < c["index"] < 1000]
    return MessageView(m, citations, max(indexes, default=0), last_answer, agent)


def _agent_run_id(m: ThreadMessage) -> str | None:
    """The run of an answer by an agent model (an imported thread's context is the importer's: the run is
    still looked up as the viewer's own, or not shown)."""
    run_id = (m.context or {}).get("run_id") if m.role == "assistant" else None
    if not isinstance(run_id, str) or not _ID.fullmatch(run_id) or not (m.model or "").startswith("agent/"):
        return None
    return run_id


async def agent_runs(state: AppState, principal: Principal, messages: list[ThreadMessage]
                     ) -> dict[str, AgentRunView]:
    """The agent runs that answered ``messages`` (by message id), those the viewer may see."""
    out: dict[str, AgentRunView] = {}
    for m in messages:
        run_id = _agent_run_id(m)
        if run_id is not None:
            view = await load_agent_run(state, principal, run_id)
            if view is not None and view.mine and (view.items or view.waiting):  # a cached answer has no steps
                out[m.id] = view
    return out
