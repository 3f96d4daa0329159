"""OpenAI chat-completions wire format, as the real API sends it."""

from __future__ import annotations

import base64
import struct
from typing import Any

from .upstream import Recorded, Reply, sse


def completion(
    text: str = "Hello from the fake.",
    *,
    model: str = "fake-model",
    prompt_tokens: int = 12,
    completion_tokens: int = 8,
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str = "stop",
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls is not None:
        message["content"] = None
        message["tool_calls"] = tool_calls
        finish_reason = "tool_calls"
    return {
        "id": "chatcmpl-fake123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def chunk(delta: dict[str, Any], finish_reason: str | None = None, *, model: str = "fake-model") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake123",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def stream_events(
    words: list[str], *, prompt_tokens: int = 12, completion_tokens: int | None = None, usage: bool = True
) -> list[str]:
    objs: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""})]
    objs += [chunk({"content": w}) for w in words]
    objs.append(chunk({}, "stop"))
    if usage:
        ct = completion_tokens if completion_tokens is not None else len(words)
        objs.append({
            "id": "chatcmpl-fake123", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "fake-model", "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": ct, "total_tokens": prompt_tokens + ct},
        })
    return sse(*objs)


def error(status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
          headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, json={"error": {"message": message, "type": type_, "param": None, "code": code}},
                 headers=headers or {})


def embedding_vector(i: int) -> list[float]:
    """The fake's embedding of input ``i``."""
    return [0.1 * (i + 1), 0.2, 0.3]


def embeddings(body: dict[str, Any], *, base64_ok: bool = True) -> dict[str, Any]:
    """What ``POST /v1/embeddings`` answers: one embedding per input (a string, or a list of token ids),
    as base64 little-endian float32 when asked (and ``base64_ok``), as floats otherwise."""
    inputs = body["input"]
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    data: list[dict[str, Any]] = []
    for i in range(len(inputs)):
        vector: list[float] | str = embedding_vector(i)
        if base64_ok and body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack("<3f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    return {"object": "list", "model": body["model"], "data": data,
            "usage": {"prompt_tokens": 5 * len(inputs), "total_tokens": 5 * len(inputs)}}


def default_handler(rec: Recorded) -> Reply:
    """Echo the last user message, streaming when asked."""
    if rec.path.endswith("/models"):
        return Reply(json={"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0,
                                                        "owned_by": "fake"}]})
    if rec.path.endswith("/embeddings"):
        return Reply(json=embeddings(rec.json))
    body = rec.json if isinstance(rec.json, dict) else {}
    last = body.get("messages", [{}])[-1].get("content", "")
    text = f"echo: {last}"
    if body.get("stream"):
        return Reply(sse=stream_events(text.split(" ")))
    return Reply(json=completion(text, model=str(body.get("model", "fake-model"))))
