"""A fake OpenAI upstream for the turn take-up tests, served from a thread of its own (the servers under test are
other processes): the model ``writer`` streams its first answer to a thread turn slowly (so that a server can be
killed in the middle of it) and later ones quickly, each with different words; ``extractor`` (the memory
extraction) learns nothing. Every request is recorded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..fakes import openai as openai_fmt
from ..fakes.upstream import FakeUpstream, Recorded, Reply, served_in_thread

DRAFT = [f"draft{i} " for i in range(60)]
"""The words of the first (slow) answer: 60 words, 0.15 s apart."""
FINAL = [f"final{i} " for i in range(30)]
"""The words of every later answer."""


@dataclass
class Asked:
    model: str
    messages: list[dict[str, Any]]
    stream: bool


@dataclass
class TurnUpstream:
    url: str = ""
    asked: list[Asked] = field(default_factory=list)
    slow_next: bool = False
    """The next chat answer of ``writer`` is the slow draft (set by a test before the turn it kills)."""
    fake: FakeUpstream | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, rec: Recorded) -> Reply:
        body = rec.json if isinstance(rec.json, dict) else {}
        model, stream = str(body.get("model")), bool(body.get("stream"))
        with self._lock:
            self.asked.append(Asked(model, list(body.get("messages") or []), stream))
            slow = self.slow_next and model == "writer" and stream
            if slow:
                self.slow_next = False
        if model == "extractor":
            return Reply(json=openai_fmt.completion('{"memories": []}', model=model, prompt_tokens=10,
                                                    completion_tokens=5))
        words = DRAFT if slow else FINAL
        if stream:
            return Reply(sse=openai_fmt.stream_events(words, prompt_tokens=40, completion_tokens=len(words)),
                         chunk_delay=0.15 if slow else 0.02)
        return Reply(json=openai_fmt.completion("".join(words), model=model, prompt_tokens=40,
                                                completion_tokens=len(words)))

    def chats(self) -> list[Asked]:
        with self._lock:
            return [a for a in self.asked if a.model == "writer"]


@contextmanager
def turn_upstream() -> Iterator[TurnUpstream]:
    fake_upstream = TurnUpstream()
    with served_in_thread(fake_upstream.handle) as fake:
        fake_upstream.fake, fake_upstream.url = fake, fake.url
        yield fake_upstream


def config(url: str) -> str:
    """``writer`` priced ($1000 / M tokens) and ``extractor`` for the memory."""
    return f"""
models:
  - {{name: writer, provider: openai, model: writer, base_url: '{url}/v1', api_key: x, input_price: 1000,
      output_price: 1000}}
  - {{name: extractor, provider: openai, model: extractor, base_url: '{url}/v1', api_key: x}}
router: {{num_retries: 0}}
memory: {{model: extractor}}
"""
