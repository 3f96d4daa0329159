"""Translation between the OpenAI chat format and Gemini's ``generateContent`` format.

Pure functions and one small stream state machine: no I/O, so the provider stays about HTTP.
Gemini has no tool-call ids; thinktank numbers the calls of an answer ``call_<n>`` and, on the way
back, finds a tool result's function name from the earlier assistant call with that id.
Gemini's thought signatures ride on a tool call as ``extra_content.google.thought_signature``
(the convention of Google's own OpenAI-compatible endpoint) and go back to Gemini with the call.
"""

from __future__ import annotations

import base64
import itertools
import mimetypes
import urllib.parse
from collections.abc import Iterator
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
    Message,
    ResponseMessage,
    ToolCall,
    Usage,
    message_text,
)

__all__ = ["StreamTranslator", "WireError", "from_gemini", "to_gemini", "usage"]

_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
_TOOL_CHOICE = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


class WireError(ValueError):
    """The upstream's JSON is not a GenerateContentResponse."""


# -- request ------------------------------------------------------------------------------------
def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)


def _media(url: str, default_mime: str, where: str) -> dict[str, Any]:
    """A data: URL becomes inlineData, an http(s) URL fileData."""
    if url.startswith("data:"):
        header, sep, payload = url[5:].partition(",")
        if not sep:
            raise _bad("malformed data: URL", where)
        mime = header.split(";")[0] or default_mime
        if not header.endswith(";base64"):
            payload = base64.b64encode(urllib.parse.unquote_to_bytes(payload)).decode()
        return {"inlineData": {"mimeType": mime, "data": payload}}
    if url.startswith(("http://", "https://")):
        guessed = mimetypes.guess_type(urllib.parse.urlsplit(url).path)[0]
        return {"fileData": {"fileUri": url, "mimeType": guessed or default_mime}}
    raise _bad("only data: and http(s) URLs are supported", where)


def _content_parts(content: str | list[dict[str, Any]] | None, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for k, p in enumerate(content):
        at, kind = f"{where}.content[{k}]", p["type"]
        if kind in ("text", "refusal"):
            text = p.get(kind)
            if not isinstance(text, str):
                raise _bad(f"a {kind} part needs a string '{kind}'", at)
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            image = p.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise _bad("an image_url part needs a url", at)
            parts.append(_media(url, "image/jpeg", at))
        elif kind == "input_audio":
            audio = p.get("input_audio") or {}
            if not isinstance(audio.get("data"), str):
                raise _bad("an input_audio part needs base64 data", at)
            fmt = audio.get("format") or "wav"
            parts.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": audio["data"]}})
        elif kind == "file" and isinstance((p.get("file") or {}).get("file_data"), str):
            parts.append(_media(p["file"]["file_data"], "application/pdf", at))
        else:
            raise _bad(f"content part type '{kind}' is not supported by Gemini", at)
    return parts


def _tool_result(message: Message) -> Any:
    text = message_text(message)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _signature(call: ToolCall) -> str | None:
    extra = (call.model_extra or {}).get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) else None


def _contents(messages: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role in ("system", "developer"):
            text = message_text(m)
            if text:
                system.append({"text": text})
        elif m.role == "user":
            add("user", _content_parts(m.content, where))
        elif m.role == "assistant":
            parts = _content_parts(m.content, where)
            for j, tc in enumerate(m.tool_calls or []):
                at = f"{where}.tool_calls[{j}].function.arguments"
                try:
                    args = orjson.loads(tc.function.arguments or "{}")
                except orjson.JSONDecodeError:
                    raise _bad("is not valid JSON", at) from None
                if not isinstance(args, dict):
                    raise _bad("must be a JSON object", at)
                name = tc.function.name or ""
                call_names[tc.id] = name
                part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
                signature = _signature(tc)
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            add("model", parts)
        else:  # tool, or the legacy function role
            fn_name = m.name if m.role == "function" else call_names.get(m.tool_call_id or "")
            if not fn_name:
                raise _bad(f"tool_call_id {m.tool_call_id!r} matches no earlier assistant tool call", where)
            add("user", [{"functionResponse": {"name": fn_name, "response": {"content": _tool_result(m)}}}])
    return system, contents


def _generation_config(request: ChatRequest) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    pairs = (
        ("temperature", request.temperature), ("topP", request.top_p),
        ("maxOutputTokens", request.output_limit()), ("candidateCount", request.n), ("seed", request.seed),
        ("presencePenalty", request.presence_penalty), ("frequencyPenalty", request.frequency_penalty),
    )
    cfg.update((k, v) for k, v in pairs if v is not None)
    if request.stop is not None:
        cfg["stopSequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    fmt = request.response_format or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        cfg["responseMimeType"] = "application/json"
        spec = fmt.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            # OpenAI sends full JSON Schema (additionalProperties, $defs...), which the OpenAPI-subset
            # ``responseSchema`` rejects; ``responseJsonSchema`` takes it as it is.
            cfg["responseJsonSchema"] = spec["schema"]
    return cfg


def _tools(request: ChatRequest) -> dict[str, Any]:
    decls: list[dict[str, Any]] = []
    for k, tool in enumerate(request.tools or []):
        fn = tool.get("function")
        if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad("only function tools with a name are supported by Gemini", f"tools[{k}]")
        decl: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            decl["description"] = fn["description"]
        if isinstance(fn.get("parameters"), dict):
            decl["parametersJsonSchema"] = fn["parameters"]  # JSON Schema, as OpenAI tools carry it
        decls.append(decl)
    if not decls:
        return {}
    out: dict[str, Any] = {"tools": [{"functionDeclarations": decls}]}
    choice = request.tool_choice
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE:
            raise _bad("must be 'auto', 'none', 'required' or a named function", "tool_choice")
        out["toolConfig"] = {"functionCallingConfig": {"mode": _TOOL_CHOICE[choice]}}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise _bad("a named tool_choice needs function.name", "tool_choice")
        out["toolConfig"] = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    return out


def to_gemini(request: ChatRequest) -> dict[str, Any]:
    """The ``generateContent`` body for an OpenAI chat request."""
    system, contents = _contents(request.messages)
    if not contents:  # Gemini needs at least one content; a system-only chat becomes the user turn
        contents, system = [{"role": "user", "parts": system}], []
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    cfg = _generation_config(request)
    if cfg:
        body["generationConfig"] = cfg
    body.update(_tools(request))
    return body


# -- response -----------------------------------------------------------------------------------
def _read_parts(candidate: dict[str, Any], ids: Iterator[int]) -> tuple[str, list[dict[str, Any]]]:
    """The visible text (thought summaries left out) and the function calls, OpenAI-shaped."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for p in parts if isinstance(parts, list) else []:
        if not isinstance(p, dict) or p.get("thought"):
            continue
        if isinstance(p.get("text"), str):
            texts.append(p["text"])
        fc = p.get("functionCall")
        if isinstance(fc, dict):
            args = orjson.dumps(fc.get("args") or {}).decode()
            call: dict[str, Any] = {"id": f"call_{next(ids)}", "type": "function",
                                    "function": {"name": str(fc.get("name", "")), "arguments": args}}
            if isinstance(p.get("thoughtSignature"), str):
                call["extra_content"] = {"google": {"thought_signature": p["thoughtSignature"]}}
            calls.append(call)
    return "".join(texts), calls


def _finish(reason: Any, has_calls: bool) -> str | None:
    if not reason:
        return None
    if has_calls:
        return "tool_calls"
    return _FINISH.get(str(reason), "stop")


def _blocked(data: dict[str, Any]) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _candidates(data: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    raw = data.get("candidates")
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise WireError("candidates is not a list of objects")
    return [(int(c.get("index", i)), c) for i, c in enumerate(raw)]


def usage(meta: Any) -> Usage | None:
    """OpenAI usage from ``usageMetadata``; thinking tokens count as completion tokens."""
    if not isinstance(meta, dict):
        return None
    prompt = int(meta.get("promptTokenCount") or 0)
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": int(meta.get("totalTokenCount") or 0) or prompt + completion}
    if thoughts:
        out["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    if meta.get("cachedContentTokenCount"):
        out["prompt_tokens_details"] = {"cached_tokens": int(meta["cachedContentTokenCount"])}
    return Usage.model_validate(out)


def from_gemini(data: Any, *, response_id: str, created: int, model: str) -> ChatResponse:
    """A ChatResponse from a GenerateContentResponse; ``response_id`` is used when it has none."""
    if not isinstance(data, dict):
        raise WireError("not an object")
    ids = itertools.count()
    choices: list[Choice] = []
    for index, cand in _candidates(data):
        text, calls = _read_parts(cand, ids)
        message = ResponseMessage(content=text if text or not calls else None,
                                  tool_calls=[ToolCall.model_validate(c) for c in calls] or None)
        finish = _finish(cand.get("finishReason"), bool(calls)) or "stop"
        choices.append(Choice(index=index, message=message, finish_reason=finish))
    if not choices:
        if not _blocked(data):
            raise WireError("no candidates and no promptFeedback")
        choices = [Choice(index=0, message=ResponseMessage(content=""), finish_reason="content_filter")]
    rid = data.get("responseId")
    return ChatResponse(
        id=f"chatcmpl-{rid}" if isinstance(rid, str) and rid else response_id, created=created,
        model=str(data.get("modelVersion") or model), choices=sorted(choices, key=lambda c: c.index),
        usage=usage(data.get("usageMetadata")),
    )


class StreamTranslator:
    """Turns each streamed GenerateContentResponse into ChatChunks as it arrives."""

    def __init__(self, *, response_id: str, created: int, model: str) -> None:
        self._fallback_id = response_id
        self.id: str | None = None
        self.created = created
        self.model = model
        self.usage: Usage | None = None
        self._ids = itertools.count()
        self._started: set[int] = set()
        self._call_index: dict[int, int] = {}

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> ChatChunk:
        return ChatChunk(id=self.id or self._fallback_id, created=self.created, model=self.model,
                         choices=choices, usage=usage)

    def feed(self, data: Any) -> list[ChatChunk]:
        if not isinstance(data, dict):
            raise WireError("stream event is not an object")
        if self.id is None:
            rid = data.get("responseId")
            self.id = f"chatcmpl-{rid}" if isinstance(rid, str) and rid else self._fallback_id
        if data.get("modelVersion"):
            self.model = str(data["modelVersion"])
        self.usage = usage(data.get("usageMetadata")) or self.usage
        deltas: list[ChunkChoice] = []
        finishes: list[ChunkChoice] = []
        for index, cand in _candidates(data):
            text, calls = _read_parts(cand, self._ids)
            delta = Delta(content=text or None)
            if index not in self._started:
                self._started.add(index)
                delta.role = "assistant"
            if calls:
                first = self._call_index.get(index, 0)
                self._call_index[index] = first + len(calls)
                delta.tool_calls = [{"index": first + k, **c} for k, c in enumerate(calls)]
            if delta.role or delta.content or delta.tool_calls:
                deltas.append(ChunkChoice(index=index, delta=delta))
            finish = _finish(cand.get("finishReason"), index in self._call_index)
            if finish:
                finishes.append(ChunkChoice(index=index, finish_reason=finish))
        if not deltas and not finishes and _blocked(data) and not self._started:
            self._started.add(0)
            deltas = [ChunkChoice(delta=Delta(role="assistant", content=""), finish_reason="content_filter")]
        return [self._chunk(c) for c in (deltas, finishes) if c]

    def end(self) -> list[ChatChunk]:
        """The closing chunk: no choices, the usage of the last ``usageMetadata`` seen."""
        return [self._chunk([], self.usage)] if self.usage is not None else []
