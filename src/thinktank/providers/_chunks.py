"""A whole chat completion told as the chunks a stream of it would have been.

Used when an upstream answers a stream request with one complete (non-streamed) answer: the
client still gets what a stream promises, a role and content delta per choice, each choice's
finish_reason, then a chunk with no choices carrying the usage.
"""

from __future__ import annotations

from typing import Any

from ..types import ChatChunk, ChatResponse, ChunkChoice, Delta

__all__ = ["response_chunks"]


def response_chunks(response: ChatResponse) -> list[ChatChunk]:
    def chunk(choices: list[ChunkChoice]) -> ChatChunk:
        return ChatChunk(id=response.id, created=response.created, model=response.model, choices=choices)

    out: list[ChatChunk] = []
    choices = sorted(response.choices, key=lambda c: c.index)
    for choice in choices:
        delta: dict[str, Any] = choice.message.model_dump(exclude_none=True)
        delta["role"] = "assistant"
        delta.setdefault("content", "" if not choice.message.tool_calls else None)
        if choice.message.tool_calls:
            delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(delta["tool_calls"])]
        out.append(chunk([ChunkChoice(index=choice.index, delta=Delta.model_validate(delta))]))
    for choice in choices:
        out.append(chunk([ChunkChoice(index=choice.index, finish_reason=choice.finish_reason or "stop")]))
    if response.usage is not None:
        usage = chunk([])
        usage.usage = response.usage.model_copy()
        out.append(usage)
    return out
