"""What makes two requests the same question: the canonical request and the tenant, hashed.

The canonical request is the request as JSON with sorted keys, without what does not change the answer
(``stream``, ``stream_options``, ``user`` and thinktank's bookkeeping fields); everything else, unknown
parameters included, is part of it, so a parameter thinktank does not know about can only cause a miss,
never a wrong hit. The tenant (whose cache it is) is hashed in with it: no key is ever shared between
two users, nor between a user and the admin key.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from ..types import ChatRequest, Message

__all__ = ["NOT_ANSWER_CHANGING", "canonical", "exact_key", "last_question", "scope_key", "tenant_of"]

NOT_ANSWER_CHANGING = frozenset({
    "stream", "stream_options", "user",  # how the answer travels and who the end user is
    "cache", "tags", "max_cost_usd",  # thinktank's run options: bookkeeping, a cap
    "metadata", "store", "service_tier", "prompt_cache_key",  # OpenAI's bookkeeping
})
"""Request fields left out of the canonical request."""

_VERSION = b"thinktank-response-cache-1\n"
"""Changes when the canonical form does, so old entries are never read as new ones."""


def tenant_of(principal: Any) -> str:
    """Whose cache: the admin key's own space, else the user's (a user's keys and sessions share it)."""
    if getattr(principal, "is_admin_key", False):
        return "admin-key"
    return f"user:{principal.user_id}"


def canonical(request: ChatRequest) -> dict[str, Any]:
    """The request as the answer depends on it (a fresh dict: the caller may change it)."""
    data = request.model_dump(mode="json", exclude_none=True, exclude=set(NOT_ANSWER_CHANGING))
    for name in NOT_ANSWER_CHANGING:  # unknown fields are dumped too; drop those named alike
        data.pop(name, None)
    return data


def _digest(kind: bytes, tenant: str, data: dict[str, Any]) -> str:
    h = hashlib.sha256(_VERSION + kind)
    h.update(tenant.encode())
    h.update(b"\n")
    h.update(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()


def exact_key(tenant: str, data: dict[str, Any]) -> str:
    """The key of one canonical request of one tenant (64 hex digits)."""
    return _digest(b"exact\n", tenant, data)


def last_question(messages: list[Message]) -> str | None:
    """The text of the last message if it is the user's and only text (a semantic match needs a question to
    compare: not a tool result, not an image)."""
    last = messages[-1]
    if last.role != "user" or last.tool_calls or last.name is not None:
        return None
    content = last.content
    if isinstance(content, str):
        return content
    if not content or any(p.get("type") != "text" or set(p) - {"type", "text"} for p in content):
        return None
    return "".join(str(p.get("text", "")) for p in content)


def scope_key(tenant: str, data: dict[str, Any]) -> str:
    """The key of everything but the last question: model, parameters, system prompt, earlier turns and
    tenant. Questions are compared only within one scope."""
    messages = list(data.get("messages") or [])
    if messages:
        last = dict(messages[-1])
        last.pop("content", None)
        messages[-1] = last
    return _digest(b"scope\n", tenant, {**data, "messages": messages})
