"""A fake OpenAI upstream for the evaluations' resumption test: candidates answer each question in their own words,
the judge prefers the answer that names a bridge, every request is counted by model and question, and one request
can be held (never answered) so that the server can be killed while it waits."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..deliberation.resume_upstream import prompt_of
from ..fakes import openai as openai_fmt
from ..fakes.upstream import Recorded, Reply, served_in_thread

Hold = Callable[[str, str], bool]


def answer(model: str, prompt: str) -> str:
    if model == "judge":
        first = prompt.split("Response A:", 1)[-1].split("Response B:", 1)[0]
        return '{"reason": "it names the bridge", "winner": "%s"}' % ("A" if "bridge" in first else "B")
    if model == "alpha":
        return "Alpha says: cross by the bridge."
    return "Beta says: swim across."


@dataclass
class EvalUpstream:
    url: str = ""
    asked: list[tuple[str, str]] = field(default_factory=list)
    hold: Hold | None = None
    held: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, rec: Recorded) -> Reply:
        body: dict[str, Any] = rec.json if isinstance(rec.json, dict) else {}
        model, prompt = str(body.get("model")), prompt_of(body)
        with self._lock:
            self.asked.append((model, prompt))
            if self.hold is not None and not self.held and self.hold(model, prompt):
                self.held.append((model, prompt))
                return Reply(hang=True)
        return Reply(json=openai_fmt.completion(answer(model, prompt), model=model, prompt_tokens=30,
                                                completion_tokens=20))

    def count(self, model: str, containing: str = "") -> int:
        with self._lock:
            return sum(1 for m, p in self.asked if m == model and containing in p)


@contextmanager
def eval_upstream() -> Iterator[EvalUpstream]:
    """The fake served from a thread and loop of its own (the servers under test are other processes)."""
    upstream = EvalUpstream()
    with served_in_thread(upstream.handle) as fake:
        upstream.url = fake.url
        yield upstream


def config(url: str) -> str:
    """Candidates and a judge, priced ($1000 / M tokens: a call of 50 tokens costs $0.05)."""
    deployments = "\n".join(
        f"  - {{name: {m}, provider: openai, model: {m}, base_url: '{url}/v1', api_key: x, input_price: 1000, "
        "output_price: 1000}" for m in ("alpha", "beta", "judge"))
    return f"models:\n{deployments}\nrouter: {{num_retries: 0}}\n"
