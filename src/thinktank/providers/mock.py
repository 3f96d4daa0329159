"""A scripted model for tests and the offline demo.

Options (the deployment's ``options`` mapping)::

    rules:                # first rule whose regex matches the whole prompt answers
      - match: "security|threat"   # re.search, case-insensitive, ``.`` matches newlines
        reply: "a fixed answer"
      - match: "round 2.*critique"
        replies: ["a", "b"]        # cycled per rule
      - match: "name: (?P<name>\\w+)"
        reply: "Hello \\g<name>"     # template: true fills in the match's groups
        template: true
      - match: "^(?!.*tool_result).*refund"   # no tool result yet: ask for a tool
        tool_calls:                          # (with template: true, string arguments are filled in too)
          - {name: knowledge_search, arguments: {query: "refund policy"}}
    replies: ["first answer", "second answer"]   # cycled when no rule matches; default: echo the last user message
    latency: 0.2          # seconds before the answer (through the injected clock)
    chunk_delay: 0.02     # seconds between streamed words
    fail_first: 2         # the first N calls fail ...
    fail_rate: 0.1        # ... or this share of calls fails (seeded, reproducible)
    fail_status: 503      # how they fail (429 and 5xx are retryable)
    retry_after: 1.5      # Retry-After carried by a failing 429
    seed: 0

A rule's ``match`` is searched in the whole prompt: every message's text (system messages
included) joined with newlines. An invalid regex is a ConfigError naming ``options.rules[i].match``.

Every request is recorded in ``requests`` so a test can assert exactly what the model was sent.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
import struct
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import DeploymentConfig
from ..errors import ConfigError
from ..gateway.tokens import estimate_request_tokens, estimate_text_tokens
from ..types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    Delta,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    FunctionCall,
    ResponseMessage,
    ToolCall,
    Usage,
    message_text,
)
from . import _http
from .base import ProviderContext

__all__ = ["MockOptions", "MockProvider", "MockRule"]


class MockToolCall(BaseModel):
    """A tool call a rule answers with (OpenAI's ``tool_calls``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class MockRule(BaseModel):
    """One scripted answer: when ``match`` (a Python regex) is found in the prompt, answer with
    ``reply``, or with ``replies`` cycled per rule, or call tools (``tool_calls``, with an optional ``reply``
    as the text beside them). Exactly one of ``reply`` and ``replies`` is given, unless ``tool_calls`` is."""

    model_config = ConfigDict(extra="forbid")

    match: str
    reply: str | None = None
    replies: list[str] | None = Field(default=None, min_length=1)
    tool_calls: list[MockToolCall] | None = Field(default=None, min_length=1)
    template: bool = False
    """The answer names the match's groups (``\\g<name>``, ``\\1``), filled in from the prompt."""

    @model_validator(mode="after")
    def _exactly_one_answer(self) -> MockRule:
        if self.reply is not None and self.replies is not None:
            raise ValueError("give exactly one of 'reply' or 'replies'")
        if self.reply is None and self.replies is None and self.tool_calls is None:
            raise ValueError("give exactly one of 'reply' or 'replies' (or tool_calls)")
        return self

    def answers(self) -> list[str]:
        """The rule's answers in cycling order."""
        return [self.reply] if self.reply is not None else list(self.replies or ("",))


_KEEP_REQUESTS = 100
"""The last requests a mock model keeps (``MockProvider.requests``), for tests to look at."""


class MockOptions(BaseModel):
    """The mock deployment's ``options``; see the module docstring."""

    model_config = ConfigDict(extra="forbid")

    rules: list[MockRule] = Field(default_factory=list)
    replies: list[str] = Field(default_factory=list)
    latency: float = Field(default=0.0, ge=0)
    chunk_delay: float = Field(default=0.0, ge=0)
    fail_first: int = Field(default=0, ge=0)
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    fail_status: int = Field(default=503, ge=400, le=599)
    retry_after: float | None = Field(default=None, ge=0)
    embedding_dimensions: int = Field(default=16, ge=1, le=4096)
    seed: int = 0


class MockProvider:
    def __init__(self, deployment: DeploymentConfig, ctx: ProviderContext) -> None:
        self.deployment = deployment
        self._ctx = ctx
        self._id = deployment.id or deployment.name
        try:
            self.options = MockOptions.model_validate(deployment.options)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            field = ".".join(str(x) for x in first["loc"])
            raise ConfigError(f"model '{deployment.name}': options.{field}: {first['msg']}") from None
        self._rules: list[tuple[re.Pattern[str], Iterator[str], bool, list[MockToolCall] | None]] = []
        for i, rule in enumerate(self.options.rules):
            try:
                pattern = re.compile(rule.match, re.IGNORECASE | re.DOTALL)
            except re.error as exc:
                raise ConfigError(
                    f"model '{deployment.name}': options.rules[{i}].match: invalid regular expression: {exc}"
                ) from None
            self._rules.append((pattern, itertools.cycle(rule.answers()), rule.template, rule.tool_calls))
        self._replies = itertools.cycle(self.options.replies) if self.options.replies else None
        self._rng = random.Random(self.options.seed)
        self.calls = 0
        self.requests: list[ChatRequest] = []

    @property
    def name(self) -> str:
        return self.deployment.name

    async def _before(self, request: ChatRequest) -> None:
        self.calls += 1
        self.requests.append(request)
        if len(self.requests) > _KEEP_REQUESTS:  # a long-running demo server must not grow without bound
            del self.requests[0]
        if self.options.latency:
            await self._ctx.clock.sleep(self.options.latency)
        failing = self.calls <= self.options.fail_first or (
            self.options.fail_rate > 0 and self._rng.random() < self.options.fail_rate
        )
        if failing:
            headers = {}
            if self.options.retry_after is not None:
                headers["retry-after"] = str(self.options.retry_after)
            body = b'{"error": {"message": "mock failure (failure injection)"}}'
            raise _http.map_status_error(
                self.options.fail_status, headers, body, deployment=self._id, secrets=(),
                now=self._ctx.clock.time(),
            )

    def _reply(self, request: ChatRequest) -> tuple[str, list[ToolCall] | None]:
        """The answer's text, and the tools it calls (only when the request offers tools)."""
        if self._rules:
            prompt = "\n".join(message_text(m) for m in request.messages)
            for pattern, answers, template, tool_calls in self._rules:
                if tool_calls is not None and not request.tools:
                    continue
                found = pattern.search(prompt)
                if found:
                    text = found.expand(next(answers)) if template else next(answers)
                    return text, self._calls(tool_calls, found if template else None)
        if self._replies is not None:
            return next(self._replies), None
        last = next((m for m in reversed(request.messages) if m.role == "user"), request.messages[-1])
        return f"[mock {self.deployment.upstream_model}] You said: {message_text(last)[:500]}", None

    def _calls(self, calls: list[MockToolCall] | None, found: re.Match[str] | None) -> list[ToolCall] | None:
        if calls is None:
            return None

        def fill(value: Any) -> Any:
            if found is not None and isinstance(value, str):
                return found.expand(value)
            if isinstance(value, dict):
                return {k: fill(v) for k, v in value.items()}
            if isinstance(value, list):
                return [fill(v) for v in value]
            return value

        return [ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", function=FunctionCall(
            name=c.name, arguments=json.dumps(fill(c.arguments)))) for c in calls]

    def _usage(self, request: ChatRequest, text: str) -> Usage:
        p, c = estimate_request_tokens(request), estimate_text_tokens(text)
        return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        await self._before(request)
        text, calls = self._reply(request)
        n = request.n or 1
        return ChatResponse(
            id=f"chatcmpl-mock-{uuid.uuid4().hex[:12]}",
            created=int(self._ctx.clock.time()),
            model=self.deployment.upstream_model,
            choices=[
                Choice(index=i, message=ResponseMessage(content=text or (None if calls else ""), tool_calls=calls),
                       finish_reason="tool_calls" if calls else "stop") for i in range(n)
            ],
            usage=self._usage(request, text),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        await self._before(request)
        text, calls = self._reply(request)
        cid = f"chatcmpl-mock-{uuid.uuid4().hex[:12]}"
        created, model = int(self._ctx.clock.time()), self.deployment.upstream_model
        words = text.split(" ") if text or not calls else []
        for i, word in enumerate(words):
            if i and self.options.chunk_delay:
                await self._ctx.clock.sleep(self.options.chunk_delay)
            piece = word if i == 0 else " " + word
            delta = Delta(role="assistant", content=piece) if i == 0 else Delta(content=piece)
            yield ChatChunk(id=cid, created=created, model=model, choices=[ChunkChoice(delta=delta)])
        for i, call in enumerate(calls or []):  # as OpenAI streams them: id and name, then the arguments
            head = {"index": i, "id": call.id, "type": "function", "function": {"name": call.function.name,
                                                                                "arguments": ""}}
            yield ChatChunk(id=cid, created=created, model=model, choices=[ChunkChoice(delta=Delta(
                role="assistant" if i == 0 and not words else None, tool_calls=[head]))])
            yield ChatChunk(id=cid, created=created, model=model, choices=[ChunkChoice(delta=Delta(
                tool_calls=[{"index": i, "function": {"arguments": call.function.arguments}}]))])
        yield ChatChunk(id=cid, created=created, model=model,
                        choices=[ChunkChoice(finish_reason="tool_calls" if calls else "stop")])
        yield ChatChunk(id=cid, created=created, model=model, choices=[], usage=self._usage(request, text))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Deterministic unit vectors from a hash of each text (similar texts are not similar)."""
        texts = request.text_only(self.name)
        dim = request.dimensions or self.options.embedding_dimensions
        data = []
        for i, text in enumerate(texts):
            raw = b"".join(
                hashlib.sha256(f"{k}:{text}".encode()).digest() for k in range(math.ceil(dim * 4 / 32))
            )
            vec = [((x % 2000) - 1000) / 1000 for x in struct.unpack(f"<{dim}I", raw[: dim * 4])]
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            data.append(EmbeddingData(index=i, embedding=[v / norm for v in vec]))
        tokens = sum(estimate_text_tokens(t) for t in texts)
        return EmbeddingResponse(
            data=data, model=self.deployment.upstream_model,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def check(self) -> str:
        return "ok (mock, answers offline)"
