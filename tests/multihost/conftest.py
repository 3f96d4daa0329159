"""A simulated multi-host deployment for these tests (``deploy/multihost``): three ``thinktank serve`` processes
sharing a private PostgreSQL 16 and a private Redis behind HAProxy, answering from a fake OpenAI upstream.

One deployment serves the whole package (starting it takes a while); a test that takes a host, the database or
Redis down brings it back before it ends (``fleet.wait_all_up()``).

The fake upstream answers ``completion_tokens = max_tokens`` (8 when not given), so a request's worst-case budget
hold is exactly its cost when the model's input is free; a user message ``slow:<seconds>`` makes it take that
long (a stream spreads it over its events).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy.multihost.fleet import Fleet, fleet

from ..deliberation.resume_upstream import answer as panel_answer
from ..deliberation.resume_upstream import prompt_of as panel_prompt
from ..fakes import openai as openai_fmt
from ..fakes.upstream import Recorded, Reply, served_in_thread

PANEL = {"alpha", "beta", "gamma", "judge", "chair", "analyst", "moderator", "expert-a", "expert-b"}
"""The parts of the ensemble and the debate: each answers in its part (tests/deliberation/resume_upstream.py);
``slow:<seconds>`` anywhere in the prompt makes it take that long."""

#: The hosts' config: "priced" costs only its output ($1000 per million tokens: $0.001 a token), "free" nothing.
CONFIG = ("""
models:
  - {name: priced, provider: openai, model: fake-model, base_url: '$upstream/v1', api_key: x,
     input_price: 0, output_price: 1000}
  - {name: free, provider: openai, model: fake-model, base_url: '$upstream/v1', api_key: x,
     input_price: 0, output_price: 0}
$panelrouter: {num_retries: 0}
ensembles:
  - {name: council, members: [alpha, beta, gamma], strategy: rubric, judge: judge, chairman: chair}
debates:
  - {name: panel, models: [expert-a, expert-b], moderator: moderator, analyst: analyst, judge: judge, experts: 2,
     rounds: 2, personas: [Priya Raman, Marcus Hale]}
""").replace("$panel", "".join(
    f"  - {{name: {m}, provider: openai, model: {m}, base_url: '$upstream/v1', api_key: x, input_price: 0, "
    "output_price: 1000}\n" for m in sorted(PANEL)))


_SLOW = re.compile(r"slow:([0-9.]+)")
WORDS = 10
"""Events of a streamed answer (plus its role, stop and usage events)."""


def _answer(rec: Recorded) -> Reply:
    body: dict[str, Any] = rec.json if isinstance(rec.json, dict) else {}
    if not rec.path.endswith("/chat/completions"):
        return openai_fmt.default_handler(rec)
    if body.get("model") in PANEL:
        model, prompt, stream = str(body["model"]), panel_prompt(body), bool(body.get("stream"))
        found = _SLOW.search(prompt)
        wait = float(found.group(1)) if found else 0.0
        text = panel_answer(model, prompt, stream)
        if stream:
            pieces = re.findall(r"\S+\s*", text)
            return Reply(sse=openai_fmt.stream_events(pieces, completion_tokens=20),
                         chunk_delay=wait / (len(pieces) + 3))
        return Reply(json=openai_fmt.completion(text, model=model, prompt_tokens=30, completion_tokens=20),
                     delay=wait)
    tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 8)
    last = str((body.get("messages") or [{}])[-1].get("content", ""))
    slow = _SLOW.search(last)
    delay = float(slow.group(1)) if slow else 0.0
    if body.get("stream"):
        words = [f"w{i} " for i in range(WORDS)]
        return Reply(sse=openai_fmt.stream_events(words, completion_tokens=tokens), chunk_delay=delay / (WORDS + 3))
    return Reply(json=openai_fmt.completion("ok", completion_tokens=tokens), delay=delay)


@pytest.fixture(scope="package")
def upstream_url() -> Iterator[str]:
    """The fake upstream, served from a thread of its own (the hosts are other processes)."""
    with served_in_thread(_answer) as fake:
        yield fake.url


@pytest.fixture(scope="package")
def deployment(tmp_path_factory: pytest.TempPathFactory, upstream_url: str) -> Iterator[Fleet]:
    root: Path = tmp_path_factory.mktemp("fleet")
    # No provider keys, no Ollama to discover: the hosts serve the config above and nothing else.
    base = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    base["OLLAMA_HOST"] = "127.0.0.1:9"
    with fleet(root, upstream=upstream_url, config=CONFIG, base_env=base) as f:
        yield f


@pytest.fixture
def hosts(deployment: Fleet) -> Iterator[Fleet]:
    """The deployment with every host up and in HAProxy, before and after the test (which may take one down)."""
    deployment.wait_all_up()
    yield deployment
    for i, host in enumerate(deployment.hosts):
        if not host.alive:
            deployment.start(i)
    deployment.wait_all_up()
