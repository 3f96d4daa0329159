"""Anthropic's native Messages API, spoken in the OpenAI chat format.

Requests are translated to ``POST {base}/v1/messages``; answers and stream events are translated
back to OpenAI completions and chunks (see ``_anthropic_translate``). Anthropic reports usage on
streams too, so the last chunk always carries it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import aiohttp
import orjson

from ..config import DeploymentConfig
from ..errors import ConfigError, ProviderError, UpstreamBadResponseError, UpstreamConnectionError
from ..types import ChatChunk, ChatRequest, ChatResponse
from . import _http
from ._anthropic_translate import StreamTranslator, build_payload, error_status, to_response
from ._chunks import response_chunks
from .base import ProviderContext

__all__ = ["AnthropicProvider"]


class AnthropicProvider:
    """Claude models through ``api.anthropic.com`` (or any server speaking its Messages API)."""

    default_base_url: ClassVar[str] = "https://api.anthropic.com"
    api_version: ClassVar[str] = "2023-06-01"
    key_env_hint: ClassVar[str] = "ANTHROPIC_API_KEY"

    def __init__(self, deployment: DeploymentConfig, ctx: ProviderContext) -> None:
        self.deployment = deployment
        self._ctx = ctx
        self._id = deployment.id or deployment.name
        # Accept a base_url given with or without the trailing /v1.
        self.base_url = (deployment.base_url or self.default_base_url).rstrip("/").removesuffix("/v1")
        self._key = deployment.resolve_api_key()
        if self._key is None:
            raise ConfigError(
                f"model '{deployment.name}': no API key for provider '{deployment.provider}' - "
                f"set api_key_env: {self.key_env_hint} (or api_key) in the config"
            )
        self._headers = {
            "content-type": "application/json",
            "x-api-key": self._key,
            "anthropic-version": deployment.api_version or self.api_version,
            **deployment.headers,
        }
        self._model = deployment.upstream_model

    @property
    def name(self) -> str:
        return self.deployment.name

    def _secrets(self) -> tuple[str | None, ...]:
        """What must never reach a client: the key and the values of the deployment's ``headers:``."""
        return (self._key, *self.deployment.headers.values())

    async def _raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        await _http.raise_for_status(
            resp, deployment=self._id, secrets=self._secrets(), now=self._ctx.clock.time
        )

    # -- ChatModel ------------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> ChatResponse:
        payload = build_payload(request, self._model, stream=False)
        url = f"{self.base_url}/v1/messages"
        async with _http.post(self._ctx.http, url, payload, self._headers, deployment=self._id) as resp:
            await self._raise_for_status(resp)
            data = await _http.read_json(resp, deployment=self._id)
        return self._message(data, "a request")

    def _message(self, data: Any, what: str) -> ChatResponse:
        """The completion for a whole Messages API answer (``what`` was asked)."""
        if isinstance(data, dict) and data.get("type") == "error":
            raise self._event_error(data)
        response = to_response(data, created=int(self._ctx.clock.time()), fallback_model=self._model)
        if response is None:
            raise UpstreamBadResponseError(
                f"upstream {self._id} answered {what} with JSON that is not an Anthropic message",
                deployment=self._id,
            )
        return response

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        payload = build_payload(request, self._model, stream=True)
        url = f"{self.base_url}/v1/messages"
        translator = StreamTranslator(created=int(self._ctx.clock.time()), fallback_model=self._model)
        async with _http.post(self._ctx.http, url, payload, self._headers, deployment=self._id) as resp:
            await self._raise_for_status(resp)
            events = await _http.open_stream(resp, deployment=self._id)
            if isinstance(events, _http.JsonBody):
                # A server that ignores "stream": true answers with the whole message.
                for chunk in response_chunks(self._message(events.value, "a stream request")):
                    yield chunk
                return
            async for event, data in events:
                obj = _http.loads_event(data, deployment=self._id)
                if not isinstance(obj, dict):
                    raise UpstreamBadResponseError(
                        f"upstream {self._id} sent a stream event that is not an object", deployment=self._id
                    )
                obj.setdefault("type", event)
                if obj["type"] == "error":
                    raise self._event_error(obj)
                for chunk in translator.feed(obj):
                    yield chunk
                if translator.done:
                    return
        raise UpstreamConnectionError(
            f"upstream {self._id} ended its stream before message_stop", deployment=self._id
        )

    def _event_error(self, obj: dict[str, Any]) -> ProviderError:
        """The ProviderError for an ``error`` object sent with a 200 (mid-stream, typically)."""
        err = obj.get("error")
        status = error_status(err.get("type") if isinstance(err, dict) else None)
        now = self._ctx.clock.time()
        return _http.map_status_error(
            status, {}, orjson.dumps(obj), deployment=self._id, secrets=self._secrets(), now=now
        )

    # -- Probe ----------------------------------------------------------------------------------
    async def check(self) -> str:
        headers = {k: v for k, v in self._headers.items() if k != "content-type"}
        url = f"{self.base_url}/v1/models"
        async with _http.get(self._ctx.http, url, headers, deployment=self._id) as resp:
            await self._raise_for_status(resp)
            data = await _http.read_json(resp, deployment=self._id)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise UpstreamBadResponseError(f"upstream {self._id} has no model list", deployment=self._id)
        return "ok"
