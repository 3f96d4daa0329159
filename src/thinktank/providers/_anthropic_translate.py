"""Translation between the OpenAI chat format and Anthropic's Messages API.

Pure functions and one small stream state machine; no I/O. The provider in ``anthropic.py``
does the HTTP.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import InvalidRequestError
from ..types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    Message,
    ResponseMessage,
    ToolCall,
    Usage,
    message_text,
)

__all__ = ["DEFAULT_MAX_TOKENS", "StreamTranslator", "build_payload", "error_status", "to_response"]

DEFAULT_MAX_TOKENS = 4096

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error ``type`` -> the HTTP status it is sent with (used for errors inside a stream).
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def error_status(error_type: object) -> int:
    return _ERROR_STATUS.get(error_type, 500) if isinstance(error_type, str) else 500


# -- request ------------------------------------------------------------------------------------
def _image_block(part: dict[str, Any], param: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise InvalidRequestError("image_url part needs a url", param=param)
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise InvalidRequestError("image data URLs must look like data:image/png;base64,...", param=param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequestError("image_url must be an http(s) or data: URL", param=param)


def _content_blocks(content: str | list[dict[str, Any]] | None, param: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part["type"]
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequestError("text part needs a string 'text'", param=f"{param}[{i}]")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part, f"{param}[{i}]"))
        else:
            raise InvalidRequestError(
                f"content part type '{kind}' is not supported by provider anthropic", param=f"{param}[{i}]"
            )
    return blocks


def _tool_use_blocks(message: Message, param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for i, call in enumerate(message.tool_calls or []):
        where = f"{param}.tool_calls[{i}].function.arguments"
        try:
            args = orjson.loads(call.function.arguments) if call.function.arguments.strip() else {}
        except orjson.JSONDecodeError:
            raise InvalidRequestError("tool call arguments are not valid JSON", param=where) from None
        if not isinstance(args, dict):
            raise InvalidRequestError("tool call arguments must be a JSON object", param=where)
        blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name or "", "input": args})
    return blocks


def _convert_messages(messages: list[Message]) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts, and alternating user/assistant messages whose content is a block list."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        if m.role in ("system", "developer"):
            text = message_text(m)
            if text:
                system.append(text)
            continue
        if m.role == "user":
            role, blocks = "user", _content_blocks(m.content, f"{param}.content")
        elif m.role == "assistant":
            role = "assistant"
            blocks = _content_blocks(m.content, f"{param}.content") + _tool_use_blocks(m, param)
        elif m.role == "tool":
            if not m.tool_call_id:
                raise InvalidRequestError("tool messages need a tool_call_id", param=f"{param}.tool_call_id")
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id}
            if isinstance(m.content, list):
                result["content"] = _content_blocks(m.content, f"{param}.content")
            elif m.content:
                result["content"] = m.content
            role, blocks = "user", [result]
        else:
            raise InvalidRequestError(
                f"role '{m.role}' is not supported by provider anthropic; use tools", param=f"{param}.role"
            )
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for msg in out:
        # In a user turn, tool results must come before any other content.
        msg["content"].sort(key=lambda b: b["type"] != "tool_result")
    if out and out[-1]["role"] == "assistant":
        last = out[-1]["content"][-1]
        if last["type"] == "text":
            last["text"] = last["text"].rstrip()  # Anthropic rejects a prefill ending in whitespace
    return system, out


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        fn = tool.get("function")
        if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequestError("only function tools with a name are supported", param=f"tools[{i}]")
        item: dict[str, Any] = {
            "name": fn["name"],
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            item["description"] = fn["description"]
        out.append(item)
    return out


def _tool_choice(choice: str | dict[str, Any] | None, parallel: bool | None) -> dict[str, Any] | None:
    result: dict[str, Any]
    if choice is None:
        if parallel is not False:
            return None
        result = {"type": "auto"}
    elif choice in ("auto", "none"):
        result = {"type": choice}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and _dict(choice.get("function")).get("name"):
        result = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequestError(
            "tool_choice must be auto, none, required or a named function", param="tool_choice"
        )
    if parallel is False and result["type"] != "none":
        result["disable_parallel_tool_use"] = True
    return result


def build_payload(request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
    """The Messages API body for an OpenAI chat request."""
    if request.n is not None and request.n > 1:
        raise InvalidRequestError("n > 1 is not supported by provider anthropic", param="n")
    system, messages = _convert_messages(request.messages)
    if not messages:
        raise InvalidRequestError("at least one user or assistant message is required", param="messages")
    payload: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": request.output_limit() or DEFAULT_MAX_TOKENS,
    }
    if system:
        payload["system"] = "\n\n".join(system)
    if request.temperature is not None:
        payload["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None:
        payload["top_p"] = request.top_p
    top_k = (request.model_extra or {}).get("top_k")
    if isinstance(top_k, int) and not isinstance(top_k, bool):
        payload["top_k"] = top_k
    if request.stop is not None:
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop)
        if stops:
            payload["stop_sequences"] = stops
    if request.tools:
        payload["tools"] = _tools(request.tools)
        choice = _tool_choice(request.tool_choice, request.parallel_tool_calls)
        if choice is not None:
            payload["tool_choice"] = choice
    if request.user:
        payload["metadata"] = {"user_id": request.user}
    if stream:
        payload["stream"] = True
    return payload


# -- response -----------------------------------------------------------------------------------
def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def usage_from(raw: object) -> Usage:
    u = _dict(raw)
    cache_read = _int(u.get("cache_read_input_tokens"))
    prompt = _int(u.get("input_tokens")) + _int(u.get("cache_creation_input_tokens")) + cache_read
    completion = _int(u.get("output_tokens"))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details={"cached_tokens": cache_read},
    )


def to_response(data: Any, *, created: int, fallback_model: str) -> ChatResponse | None:
    """The OpenAI completion for a Messages API response, or None when ``data`` is not one."""
    if not isinstance(data, dict) or data.get("type") != "message":
        return None
    if not isinstance(data.get("content"), list):
        return None
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in data["content"]:
        if not isinstance(block, dict):
            return None
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                return None
            args = orjson.dumps(block.get("input") or {}).decode()
            calls.append(ToolCall(id=block["id"], function=FunctionCall(name=block["name"], arguments=args)))
    content = "".join(texts) if texts or not calls else None
    message = ResponseMessage(content=content, tool_calls=calls or None)
    finish = FINISH_REASONS.get(str(data.get("stop_reason")), "stop")
    return ChatResponse(
        id=str(data.get("id") or "msg"),
        created=created,
        model=str(data.get("model") or fallback_model),
        choices=[Choice(message=message, finish_reason=finish)],
        usage=usage_from(data.get("usage")),
    )


# -- stream -------------------------------------------------------------------------------------
class StreamTranslator:
    """Feed Anthropic stream events one by one; get the OpenAI chunks each one produces."""

    def __init__(self, *, created: int, fallback_model: str) -> None:
        self.id = "msg"
        self.model = fallback_model
        self.created = created
        self.usage: dict[str, Any] = {}
        self.done = False
        self._tools: dict[int, int] = {}
        """Anthropic content-block index -> OpenAI tool_calls index."""

    def _chunk(self, delta: Delta | None = None, finish: str | None = None) -> ChatChunk:
        choice = ChunkChoice(delta=delta or Delta(), finish_reason=finish)
        return ChatChunk(id=self.id, created=self.created, model=self.model, choices=[choice])

    def feed(self, event: dict[str, Any]) -> list[ChatChunk]:
        kind = event.get("type")
        if kind == "message_start":
            msg = _dict(event.get("message"))
            self.id = str(msg.get("id") or self.id)
            self.model = str(msg.get("model") or self.model)
            self.usage.update(_dict(msg.get("usage")))
            return [self._chunk(Delta(role="assistant", content=""))]
        if kind == "content_block_start":
            block = _dict(event.get("content_block"))
            if block.get("type") == "tool_use":
                index = self._tools[_int(event.get("index"))] = len(self._tools)
                call = {"index": index, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""}}
                return [self._chunk(Delta(tool_calls=[call]))]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk(Delta(content=block["text"]))]
            return []
        if kind == "content_block_delta":
            delta = _dict(event.get("delta"))
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self._chunk(Delta(content=delta["text"]))]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                tool = self._tools.get(_int(event.get("index")))
                if tool is None:
                    return []
                call = {"index": tool, "function": {"arguments": delta["partial_json"]}}
                return [self._chunk(Delta(tool_calls=[call]))]
            return []
        if kind == "message_delta":
            self.usage.update({k: v for k, v in _dict(event.get("usage")).items() if v is not None})
            reason = _dict(event.get("delta")).get("stop_reason")
            if reason is None:
                return []
            return [self._chunk(finish=FINISH_REASONS.get(str(reason), "stop"))]
        if kind == "message_stop":
            self.done = True
            usage = usage_from(self.usage)
            return [ChatChunk(id=self.id, created=self.created, model=self.model, usage=usage)]
        return []  # ping, content_block_stop, thinking deltas, future event types
