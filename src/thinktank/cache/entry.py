"""One cached answer: what a hit sends, in either shape a client may ask for.

An answer is kept as the JSON body of a chat completion with its cost set to 0 (what a hit costs), with a
little about it: when it was made, until when it may be served, who produced it and what it cost then.
A streamed answer is put together from its chunks into the same body; a hit on a streamed request replays
the body as OpenAI chunks (each choice's text and tool calls, its finish reason, then the usage chunk),
whichever way the answer was first asked for.

Only complete answers are kept: every choice finished (``stop``, ``length``, ``tool_calls``), none cut
short, filtered or waiting for an approval.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ..types import ChatChunk, ChatResponse, ChunkChoice, Delta, Usage

__all__ = ["FINISHED", "CachedAnswer", "StreamAssembler", "answer_of"]

FINISHED = frozenset({"stop", "length", "tool_calls", "function_call"})
"""Finish reasons of complete answers (not ``content_filter``, ``error``, ``awaiting_approval``, none)."""


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    body: bytes
    """The chat completion as a hit sends it (``usage.cost`` 0)."""
    model: str
    """The catalog name it answered (for observers)."""
    created_at: float
    expires_at: float
    cost: float = 0.0
    """What it cost when it was made (what each hit saves)."""
    served_by: str | None = None
    run_id: str | None = None

    def dumps(self) -> bytes:
        """One line of metadata, a newline, the body (orjson never writes a raw newline)."""
        meta = {"model": self.model, "created_at": self.created_at, "expires_at": self.expires_at, "cost": self.cost,
                "served_by": self.served_by, "run_id": self.run_id}
        return orjson.dumps(meta) + b"\n" + self.body

    @classmethod
    def loads(cls, data: bytes) -> CachedAnswer:
        head, _, body = data.partition(b"\n")
        meta = orjson.loads(head)
        return cls(body=body, model=str(meta["model"]), created_at=float(meta["created_at"]),
                   expires_at=float(meta["expires_at"]), cost=float(meta.get("cost") or 0.0),
                   served_by=meta.get("served_by"), run_id=meta.get("run_id"))

    @property
    def size(self) -> int:
        return len(self.body) + 200

    def response(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.body)
        return data

    def chunks(self) -> Iterator[ChatChunk]:
        """The answer as a stream: per choice its message in one delta and its finish reason, then the
        usage (and citations) in a chunk without choices."""
        data = self.response()
        rid, created, model = str(data.get("id", "")), int(data.get("created", 0)), str(data.get("model", ""))
        for choice in data.get("choices", []):
            index = int(choice.get("index", 0))
            message = choice.get("message") or {}
            calls = message.get("tool_calls")
            delta = Delta(role="assistant", content=message.get("content"),
                          tool_calls=[{"index": i, **call} for i, call in enumerate(calls)] if calls else None)
            yield ChatChunk(id=rid, created=created, model=model, choices=[ChunkChoice(index=index, delta=delta)])
            end = ChunkChoice(index=index, delta=Delta(), finish_reason=choice.get("finish_reason"))
            yield ChatChunk(id=rid, created=created, model=model, choices=[end])
        usage = data.get("usage")
        yield ChatChunk(id=rid, created=created, model=model, choices=[],
                        usage=Usage.model_validate(usage) if usage is not None else Usage(cost=0.0),
                        citations=data.get("citations"))


def _complete(choices: list[dict[str, Any]]) -> bool:
    return bool(choices) and all(c.get("finish_reason") in FINISHED for c in choices)


def answer_of(response: ChatResponse | dict[str, Any], *, model: str, now: float, ttl: float,
              served_by: str | None = None, run_id: str | None = None) -> CachedAnswer | None:
    """The answer to keep, or None when it is not complete."""
    if isinstance(response, ChatResponse):
        if not response.choices or any(c.finish_reason not in FINISHED for c in response.choices):
            return None
        usage = response.usage
        original = usage.cost if usage is not None else None
        if usage is not None:
            usage.cost = 0.0  # serialised as a hit sends it, then put back (the miss still sends its cost)
        try:
            body = response.__pydantic_serializer__.to_json(response)
        finally:
            if usage is not None:
                usage.cost = original
        cost = original or 0.0
        return CachedAnswer(body=body, model=model, created_at=now, expires_at=now + ttl, cost=cost,
                            served_by=response.served_by or served_by, run_id=response.run_id or run_id)
    if not _complete(response.get("choices") or []):
        return None
    cost = 0.0
    usage_data = response.get("usage")
    if isinstance(usage_data, dict):
        cost = float(usage_data.get("cost") or 0.0)
        usage_data["cost"] = 0.0
    return CachedAnswer(body=orjson.dumps(response), model=model, created_at=now, expires_at=now + ttl, cost=cost,
                        served_by=served_by, run_id=run_id)


class _Choice:
    __slots__ = ("content", "finish_reason", "role", "tool_calls")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.finish_reason: str | None = None
        self.role = "assistant"
        self.tool_calls: dict[int, dict[str, Any]] = {}


class StreamAssembler:
    """Puts a streamed answer together, chunk by chunk, as the body of a chat completion."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._created = 0
        self._model = ""
        self._choices: dict[int, _Choice] = {}
        self._usage: dict[str, Any] | None = None
        self._citations: list[dict[str, Any]] | None = None
        self._extra: dict[str, Any] = {}
        self.served_by: str | None = None
        self.run_id: str | None = None

    def add(self, chunk: ChatChunk) -> None:
        """Take one chunk as it is sent (before anyone changes it)."""
        self.served_by = chunk.served_by or self.served_by
        self.run_id = chunk.run_id or self.run_id
        if chunk.note is not None:
            return  # progress, not the answer
        if self._id is None:
            self._id, self._created, self._model = chunk.id, chunk.created, chunk.model
            fingerprint = (chunk.model_extra or {}).get("system_fingerprint")
            if fingerprint is not None:
                self._extra["system_fingerprint"] = fingerprint
        for c in chunk.choices:
            choice = self._choices.get(c.index)
            if choice is None:
                choice = self._choices[c.index] = _Choice()
            if c.delta.content:
                choice.content.append(c.delta.content)
            for call in c.delta.tool_calls or []:
                _merge_call(choice.tool_calls, call)
            if c.finish_reason is not None:
                choice.finish_reason = c.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage.model_dump(mode="json", exclude_none=True)
        if chunk.citations is not None:
            self._citations = chunk.citations

    def response(self) -> dict[str, Any] | None:
        """The body of the whole answer, or None if nothing came."""
        if self._id is None:
            return None
        choices = []
        for index in sorted(self._choices):
            c = self._choices[index]
            text = "".join(c.content) if c.content or not c.tool_calls else None
            message: dict[str, Any] = {"role": c.role, "content": text}
            if c.tool_calls:
                message["tool_calls"] = [c.tool_calls[i] for i in sorted(c.tool_calls)]
            choices.append({"index": index, "message": message, "finish_reason": c.finish_reason})
        data: dict[str, Any] = {"id": self._id, "object": "chat.completion", "created": self._created,
                                "model": self._model, "choices": choices, **self._extra}
        if self._usage is not None:
            data["usage"] = self._usage
        if self._citations is not None:
            data["citations"] = self._citations
        return data


def _merge_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    index = delta.get("index", 0)
    index = index if isinstance(index, int) else 0
    call = calls.get(index)
    if call is None:
        call = calls[index] = {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    function = delta.get("function") or {}
    if isinstance(function, dict):
        if function.get("name"):
            call["function"]["name"] += str(function["name"])
        if function.get("arguments"):
            call["function"]["arguments"] += str(function["arguments"])
