"""Shared helpers for the ensemble and debate runner tests: a real Router over mock (and fake) upstreams."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from thinktank.clock import Clock
from thinktank.config import parse_config
from thinktank.deliberation.runs import Event, LiveRun
from thinktank.gateway.context import CallContext
from thinktank.gateway.router import Router
from thinktank.providers.base import ProviderContext
from thinktank.providers.mock import MockProvider
from thinktank.types import ChatRequest, Message, message_text

from .resume_upstream import PanelUpstream, panel_upstream


def mock(name: str, *, input_price: float | None = None, output_price: float | None = None,
         **options: Any) -> dict[str, Any]:
    """A mock deployment; ``options`` are the mock's (replies, rules, latency, fail_first, ...)."""
    dep: dict[str, Any] = {"name": name, "provider": "mock", "options": options}
    if input_price is not None:
        dep["input_price"] = input_price
    if output_price is not None:
        dep["output_price"] = output_price
    return dep


def rule(match: str, reply: str | list[str]) -> dict[str, Any]:
    return {"match": match, "replies": reply} if isinstance(reply, list) else {"match": match, "reply": reply}


def make_router(ctx: ProviderContext, models: list[dict[str, Any]], **router: Any) -> Router:
    """A real Router; no retries unless asked, so one scripted failure is one failed call."""
    cfg = parse_config({"models": models, "router": {"num_retries": 0, **router}})
    return Router(cfg, ctx, rng=random.Random(7))


def make_run(router: Router, clock: Clock, kind: str = "ensemble", ctx: CallContext | None = None) -> LiveRun:
    return LiveRun(id="run_x", user_id="u", key_id=None, kind=kind, name="t", question="q", request={}, config={},
                   ctx=ctx or CallContext(), models=router, clock=clock)


def requests_of(router: Router, name: str) -> list[ChatRequest]:
    """Every request the named mock deployment received, in order."""
    for dep in router.deployments:
        if dep.name == name:
            assert isinstance(dep.model, MockProvider)
            return dep.model.requests
    raise KeyError(name)


def prompt_of(request: ChatRequest) -> str:
    """The whole prompt as the mock's rules see it: every message's text joined with newlines."""
    return "\n".join(message_text(m) for m in request.messages)


def user(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


def of_type(run: LiveRun, type_: str) -> list[Event]:
    return [e for e in run.events if e.type == type_]


@pytest.fixture
def upstream() -> Iterator[PanelUpstream]:
    """The fake panel upstream (each part answering in its role) for tests that run thinktank as processes."""
    with panel_upstream() as panel:
        yield panel
