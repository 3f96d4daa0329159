"""A fake OpenAI-compatible server (``thinktank mock-upstream``) for trying things and load tests.

It answers ``/v1/chat/completions`` (plain and streamed), ``/v1/embeddings`` and ``/v1/models``
at once or after a configurable latency, echoing the last user message.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from .api import sse

__all__ = ["make_app", "run"]


def _last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def make_app(latency: float = 0.0, stream_delay: float = 0.0) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"error": {"message": "invalid JSON", "type": "invalid_request_error"}},
                                     status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": {"message": "expected an object"}}, status=400)
        if latency:
            await asyncio.sleep(latency)
        model = str(body.get("model", "mock"))
        text = f"Mock answer to: {_last_user_text(body)[:200]}"
        words = text.split(" ")
        prompt_tokens = max(1, len(orjson.dumps(body.get("messages"))) // 4)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}
        created = int(time.time())
        if not body.get("stream"):
            return web.Response(body=orjson.dumps({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": usage,
            }), content_type="application/json")
        resp = web.StreamResponse(headers=sse.HEADERS)
        await resp.prepare(request)

        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            chunk = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return sse.event(orjson.dumps(chunk))

        for i, w in enumerate(words):
            if i and stream_delay:
                await asyncio.sleep(stream_delay)
            delta = {"role": "assistant", "content": w} if i == 0 else {"content": " " + w}
            await resp.write(event(delta))
        await resp.write(event({}, "stop"))
        opts = body.get("stream_options") or {}
        if isinstance(opts, dict) and opts.get("include_usage"):
            last = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": usage}
            await resp.write(sse.event(orjson.dumps(last)))
        await resp.write(sse.DONE)
        await resp.write_eof()
        return resp

    async def embeddings(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        inputs = body.get("input", [])
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]  # one text, or one list of token ids
        data = [{"object": "embedding", "index": i, "embedding": [0.0, 0.5, 1.0]} for i in range(len(inputs))]
        return web.Response(body=orjson.dumps({"object": "list", "model": body.get("model"), "data": data,
                                               "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}}),
                            content_type="application/json")

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": "mock-model", "object": "model", "created": 0, "owned_by": "thinktank-mock"}]})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    return app


def run(host: str, port: int, latency: float, stream_delay: float) -> None:
    web.run_app(make_app(latency, stream_delay), host=host, port=port, access_log=None, print=None)
