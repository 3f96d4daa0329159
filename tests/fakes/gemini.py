"""Gemini ``generateContent`` wire format, as the real API sends it.

Streams (``alt=sse``) frame each event with CRLF, as Google's servers do.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .upstream import Recorded, Reply

MODEL = "gemini-fake-001"

_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_SAFETY = [{"category": c, "probability": "NEGLIGIBLE"} for c in
           ("HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_DANGEROUS_CONTENT", "HARM_CATEGORY_HARASSMENT",
            "HARM_CATEGORY_SEXUALLY_EXPLICIT")]


def function_call(name: str, args: dict[str, Any], *, signature: str | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def candidate(
    text: str | None = "Hello from the fake.",
    *,
    index: int = 0,
    parts: list[dict[str, Any]] | None = None,
    finish_reason: str | None = "STOP",
) -> dict[str, Any]:
    """One candidate; ``parts`` (function calls, thoughts...) come after the text part."""
    all_parts = ([{"text": text}] if text is not None else []) + (parts or [])
    cand: dict[str, Any] = {"content": {"parts": all_parts, "role": "model"}}
    if finish_reason is not None:
        cand["finishReason"] = finish_reason
        cand["safetyRatings"] = _SAFETY
    if index:  # proto3 JSON leaves out a zero index, as the real API does
        cand["index"] = index
    return cand


def usage(prompt: int = 12, completion: int | None = 8, *, thoughts: int | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"promptTokenCount": prompt,
                            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    total = prompt
    if completion is not None:
        meta["candidatesTokenCount"] = completion
        total += completion
    if thoughts is not None:
        meta["thoughtsTokenCount"] = thoughts
        total += thoughts
    meta["totalTokenCount"] = total
    return meta


def response(
    text: str | None = "Hello from the fake.",
    *,
    candidates: list[dict[str, Any]] | None = None,
    parts: list[dict[str, Any]] | None = None,
    finish_reason: str = "STOP",
    model: str = MODEL,
    prompt_tokens: int = 12,
    completion_tokens: int = 8,
    thoughts_tokens: int | None = None,
    response_id: str | None = "fakeResp123",
) -> dict[str, Any]:
    """A whole GenerateContentResponse (one candidate unless ``candidates`` is given)."""
    body: dict[str, Any] = {
        "candidates": candidates if candidates is not None else [
            candidate(text, parts=parts, finish_reason=finish_reason)],
        "usageMetadata": usage(prompt_tokens, completion_tokens, thoughts=thoughts_tokens),
        "modelVersion": model,
    }
    if response_id is not None:
        body["responseId"] = response_id
    return body


def blocked(reason: str = "SAFETY", *, model: str = MODEL) -> dict[str, Any]:
    """The answer when the prompt itself is blocked: no candidates, a promptFeedback."""
    return {
        "promptFeedback": {"blockReason": reason, "safetyRatings": [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": model,
        "responseId": "fakeBlocked1",
    }


def sse(*events: Any) -> list[str]:
    """``data: {json}`` events framed like Google's (CRLF, no ``[DONE]``)."""
    return [f"data: {orjson.dumps(e).decode()}\r\n\r\n" for e in events]


def stream_events(
    words: list[str], *, prompt_tokens: int = 12, finish_reason: str = "STOP", model: str = MODEL,
    response_id: str = "fakeStream1",
) -> list[str]:
    """One event per word; the last carries finishReason; each carries usageMetadata so far."""
    events: list[dict[str, Any]] = []
    for i, word in enumerate(words):
        last = i == len(words) - 1
        events.append({
            "candidates": [candidate(word, finish_reason=finish_reason if last else None)],
            "usageMetadata": usage(prompt_tokens, i + 1 if last else None),
            "modelVersion": model,
            "responseId": response_id,
        })
    return sse(*events)


def error(status: int, message: str, *, status_name: str | None = None, details: list[dict[str, Any]] | None = None,
          headers: dict[str, str] | None = None) -> Reply:
    err: dict[str, Any] = {"code": status, "message": message,
                           "status": status_name or _STATUS_NAMES.get(status, "UNKNOWN")}
    if details is not None:
        err["details"] = details
    return Reply(status=status, json={"error": err}, headers=headers or {})


def embeddings(count: int, dims: int = 3) -> dict[str, Any]:
    return {"embeddings": [{"values": [round(0.1 * (i + 1), 3)] + [0.25] * (dims - 1)} for i in range(count)]}


def model_info(model: str = MODEL) -> dict[str, Any]:
    return {"name": f"models/{model}", "version": "001", "displayName": "Gemini Fake", "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536, "supportedGenerationMethods": ["generateContent", "countTokens"]}


def _last_user_text(body: Any) -> str:
    contents = body.get("contents", []) if isinstance(body, dict) else []
    for content in reversed(contents):
        if content.get("role") == "user":
            texts = [p["text"] for p in content.get("parts", []) if "text" in p]
            if texts:
                return "".join(texts)
    return ""


def default_handler(rec: Recorded) -> Reply:
    """Echo the last user text (streaming for ``:streamGenerateContent``), embed, describe the model."""
    tail = rec.path.rsplit("/", 1)[-1]
    model, _, method = tail.partition(":")
    if rec.method == "GET" and not method:
        return Reply(json=model_info(model))
    if method == "batchEmbedContents":
        return Reply(json=embeddings(len(rec.json["requests"])))
    text = f"echo: {_last_user_text(rec.json)}"
    if method == "streamGenerateContent":
        return Reply(sse=stream_events(re.findall(r"\S+\s*", text), model=model))
    if method == "generateContent":
        return Reply(json=response(text, model=model))
    return error(404, f"Method not found: {rec.path}")
