"""Anthropic Messages API wire format, as the real API sends it."""

from __future__ import annotations

from typing import Any

from .upstream import Recorded, Reply, named_sse

MODEL = "claude-fake-1"


def tool_use(name: str, input_: dict[str, Any], *, id_: str = "toolu_01A") -> dict[str, Any]:
    return {"type": "tool_use", "id": id_, "name": name, "input": input_}


def usage(
    input_tokens: int = 12, output_tokens: int = 8, *, cache_creation: int = 0, cache_read: int = 0
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def message(
    text: str | None = "Hello from the fake.",
    *,
    model: str = MODEL,
    tool_uses: list[dict[str, Any]] | None = None,
    stop_reason: str | None = None,
    stop_sequence: str | None = None,
    input_tokens: int = 12,
    output_tokens: int = 8,
    cache_creation: int = 0,
    cache_read: int = 0,
) -> dict[str, Any]:
    """A non-streaming ``POST /v1/messages`` answer."""
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "text", "text": text})
    content += tool_uses or []
    if stop_reason is None:
        stop_reason = "tool_use" if tool_uses else "end_turn"
    return {
        "id": "msg_01Fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage(input_tokens, output_tokens, cache_creation=cache_creation, cache_read=cache_read),
    }


def _start(model: str, input_tokens: int, cache_read: int) -> tuple[str, Any]:
    msg = message(None, model=model, input_tokens=input_tokens, output_tokens=1, cache_read=cache_read)
    msg.update(content=[], stop_reason=None, stop_sequence=None)
    return ("message_start", {"type": "message_start", "message": msg})


def _end(stop_reason: str, output_tokens: int) -> list[tuple[str, Any]]:
    return [
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                           "usage": {"output_tokens": output_tokens}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def text_events(words: list[str], index: int = 0) -> list[tuple[str, Any]]:
    """One text content block, with the ping Anthropic sends after the first block starts."""
    return [
        ("content_block_start", {"type": "content_block_start", "index": index,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        *[("content_block_delta", {"type": "content_block_delta", "index": index,
                                   "delta": {"type": "text_delta", "text": w}}) for w in words],
        ("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def tool_events(index: int, id_: str, name: str, partials: list[str]) -> list[tuple[str, Any]]:
    """One tool_use content block whose input arrives as partial JSON strings."""
    return [
        ("content_block_start", {"type": "content_block_start", "index": index,
                                 "content_block": {"type": "tool_use", "id": id_, "name": name, "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": index,
                                 "delta": {"type": "input_json_delta", "partial_json": ""}}),
        *[("content_block_delta", {"type": "content_block_delta", "index": index,
                                   "delta": {"type": "input_json_delta", "partial_json": p}}) for p in partials],
        ("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def stream_events(
    words: list[str],
    *,
    model: str = MODEL,
    input_tokens: int = 12,
    output_tokens: int | None = None,
    cache_read: int = 0,
    stop_reason: str = "end_turn",
) -> list[str]:
    """The full event sequence of a streamed text answer."""
    out = output_tokens if output_tokens is not None else len(words)
    return named_sse(_start(model, input_tokens, cache_read), *text_events(words), *_end(stop_reason, out))


def tool_stream_events(
    tools: list[tuple[str, str, list[str]]],
    *,
    text: list[str] | None = None,
    input_tokens: int = 40,
    output_tokens: int = 30,
) -> list[str]:
    """A streamed answer with optional leading text, then one tool_use block per ``(id, name, partials)``."""
    pairs: list[tuple[str, Any]] = [_start(MODEL, input_tokens, 0)]
    if text is not None:
        pairs += text_events(text)
    first = len(pairs) > 1
    for i, (id_, name, partials) in enumerate(tools):
        pairs += tool_events(i + int(first), id_, name, partials)
    return named_sse(*pairs, *_end("tool_use", output_tokens))


def error_body(type_: str, message_: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message_}, "request_id": "req_011Fake"}


def error(status: int, type_: str, message_: str, *, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, json=error_body(type_, message_), headers=headers or {})


def error_event(type_: str, message_: str) -> str:
    """An ``error`` event as Anthropic sends it inside a 200 stream."""
    return named_sse(("error", {"type": "error", "error": {"type": type_, "message": message_}}))[0]


def _last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages", [])):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            return content
        return " ".join(b.get("text", "") for b in content if b.get("type") == "text")
    return ""


def default_handler(rec: Recorded) -> Reply:
    """Check the headers Anthropic insists on, list models, echo the last user message."""
    headers = {k.lower(): v for k, v in rec.headers.items()}
    if not headers.get("x-api-key"):
        return error(401, "authentication_error", "x-api-key header is required")
    if not headers.get("anthropic-version"):
        return error(400, "invalid_request_error", "anthropic-version: header is required")
    if rec.method == "GET" and rec.path == "/v1/models":
        return Reply(json={"data": [{"type": "model", "id": MODEL, "display_name": "Claude Fake",
                                     "created_at": "2025-02-19T00:00:00Z"}],
                           "has_more": False, "first_id": MODEL, "last_id": MODEL})
    if rec.method != "POST" or rec.path != "/v1/messages":
        return error(404, "not_found_error", f"Not found: {rec.path}")
    body = rec.json if isinstance(rec.json, dict) else {}
    if not isinstance(body.get("max_tokens"), int):
        return error(400, "invalid_request_error", "max_tokens: Field required")
    text = f"echo: {_last_user_text(body)}"
    model = str(body.get("model", MODEL))
    if body.get("stream"):
        words = text.split(" ")
        return Reply(sse=stream_events([w if i == 0 else " " + w for i, w in enumerate(words)], model=model))
    return Reply(json=message(text, model=model))
