"""A fake OpenAI upstream for the resumption tests: each model answers in its part (a member, a judge, a debate
expert, a moderator), every request is counted by model and by what it asks, and one request can be held
(never answered) so that a server can be killed while it waits."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..fakes import openai as openai_fmt
from ..fakes.upstream import FakeUpstream, Recorded, Reply, served_in_thread

Hold = Callable[[str, str], bool]
"""(model, prompt) -> whether this request is held (asked once: the first request it matches)."""


def prompt_of(body: dict[str, Any]) -> str:
    parts = []
    for m in body.get("messages") or []:
        content = m.get("content")
        parts.append(content if isinstance(content, str) else orjson.dumps(content).decode())
    return "\n".join(parts)


def answer(model: str, prompt: str, stream: bool) -> str:
    if model in ("alpha", "beta", "gamma"):
        return f"{model.title()} answers: the river crosses the valley at its {model} bend, {len(prompt)} steps."
    if model == "judge" and "Score the answer" in prompt:
        return '{"relevance": 80, "completeness": 70, "clarity": 90, "accuracy": 85, "rationale": "fine"}'
    if model == "judge":
        return '{"agreement": 0.2, "summary": "they still differ"}'
    if model == "chair":
        return "The council agrees: the river crosses the valley."
    if model == "analyst":
        return '{"domains": ["geography", "engineering"], "kind": "factual", "needs": ["a place"]}'
    if model == "moderator":
        return ("## Answer\nBuild the bridge at the narrows.\n## Points of agreement\nA bridge." if stream
                else "What would the bridge cost?")
    if "Your previous position" in prompt:  # an expert's second round
        return f"STANCE: revise\nHaving heard the others, {model} now prefers a tunnel under the hills."
    return f"{model} holds that a bridge at the narrows is best, for reasons of cost and speed."


@dataclass
class Asked:
    model: str
    prompt: str
    stream: bool


@dataclass
class PanelUpstream:
    url: str = ""
    asked: list[Asked] = field(default_factory=list)
    hold: Hold | None = None
    held: list[Asked] = field(default_factory=list)
    fake: FakeUpstream | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, rec: Recorded) -> Reply:
        body = rec.json if isinstance(rec.json, dict) else {}
        model, stream = str(body.get("model")), bool(body.get("stream"))
        asked = Asked(model, prompt_of(body), stream)
        with self._lock:
            self.asked.append(asked)
            if self.hold is not None and not self.held and self.hold(model, asked.prompt):
                self.held.append(asked)
                return Reply(hang=True)
        text = answer(model, asked.prompt, stream)
        if stream:
            return Reply(sse=openai_fmt.stream_events(re.findall(r"\S+\s*", text), completion_tokens=20))
        return Reply(json=openai_fmt.completion(text, model=model, prompt_tokens=30, completion_tokens=20))

    @property
    def dropped(self) -> int:
        """Requests whose client went away before the answer (a held one, when its server let go of it)."""
        return self.fake.cancelled if self.fake is not None else 0

    def count(self, model: str, containing: str = "") -> int:
        with self._lock:
            return sum(1 for a in self.asked if a.model == model and containing in a.prompt)


@contextmanager
def panel_upstream() -> Iterator[PanelUpstream]:
    """The fake served from a thread and loop of its own (the servers under test are other processes)."""
    panel = PanelUpstream()
    with served_in_thread(panel.handle) as fake:
        panel.fake, panel.url = fake, fake.url
        yield panel


def config(url: str) -> str:
    """Deployments for each part, priced ($1000 / M tokens: 50 tokens cost $0.05), an ensemble and a debate."""
    deployments = "\n".join(
        f"  - {{name: {m}, provider: openai, model: {m}, base_url: '{url}/v1', api_key: x, input_price: 1000, "
        "output_price: 1000}"
        for m in ("alpha", "beta", "gamma", "judge", "chair", "analyst", "moderator", "expert-a", "expert-b"))
    return f"""
models:
{deployments}
router: {{num_retries: 0}}
ensembles:
  - {{name: council, members: [alpha, beta, gamma], strategy: rubric, judge: judge, chairman: chair}}
  - {{name: inner, members: [beta, gamma], strategy: heuristic}}
  - {{name: outer, members: [alpha, ensemble/inner], strategy: heuristic}}
debates:
  - {{name: panel, models: [expert-a, expert-b], moderator: moderator, analyst: analyst, judge: judge, experts: 2,
      rounds: 2, personas: [Priya Raman, Marcus Hale]}}
"""
