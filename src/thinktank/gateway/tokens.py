"""Token estimates for context-window checks and budgets, without a tokenizer download.

About four characters per token for English text (OpenAI's rule of thumb), rounded up, plus a
few tokens of framing per message. Used only where the upstream reports no usage and to decide
which deployment's context window a request fits.
"""

from __future__ import annotations

import orjson

from ..types import ChatRequest

__all__ = ["estimate_request_tokens", "estimate_text_tokens"]

_PER_MESSAGE = 4
_PER_IMAGE = 765


def estimate_text_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def estimate_request_tokens(request: ChatRequest) -> int:
    total = 3
    for m in request.messages:
        total += _PER_MESSAGE
        content = m.content
        if isinstance(content, str):
            total += (len(content) + 3) // 4
        elif content:
            for part in content:
                if part.get("type") == "text":
                    total += estimate_text_tokens(str(part.get("text", "")))
                elif part.get("type") in ("image_url", "image", "input_image"):
                    total += _PER_IMAGE
                else:
                    total += estimate_text_tokens(orjson.dumps(part).decode())
        if m.tool_calls:
            for tc in m.tool_calls:
                total += estimate_text_tokens(tc.function.arguments) + 8
    if request.tools:
        total += estimate_text_tokens(orjson.dumps(request.tools).decode())
    return total
