"""OpenAI-compatible chat completions and embeddings over HTTP.

One adapter serves every vendor that speaks OpenAI's wire format; a vendor is a subclass that
names its default base URL and whether it needs a key.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, ClassVar, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ..config import DeploymentConfig
from ..errors import ConfigError, ProviderError, UpstreamBadRequestError, UpstreamBadResponseError
from ..types import ChatChunk, ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse
from . import _http
from ._chunks import response_chunks
from .base import ProviderContext

R = TypeVar("R", bound=BaseModel)

__all__ = [
    "AzureOpenAIProvider",
    "DeepSeekProvider",
    "GroqProvider",
    "MistralProvider",
    "OllamaProvider",
    "OpenAIProvider",
    "OpenRouterProvider",
    "TogetherProvider",
    "VLLMProvider",
]


_OPENAI_API = "https://api.openai.com/v1"


class OpenAIProvider:
    """Any OpenAI-compatible endpoint, chosen by ``base_url``."""

    default_base_url: ClassVar[str | None] = _OPENAI_API
    needs_key: ClassVar[bool] = True
    key_env_hint: ClassVar[str] = "OPENAI_API_KEY"

    def __init__(self, deployment: DeploymentConfig, ctx: ProviderContext) -> None:
        self.deployment = deployment
        self._ctx = ctx
        self._id = deployment.id or deployment.name
        base = deployment.base_url or self._default_base()
        if not base:
            raise ConfigError(f"model '{deployment.name}': base_url is required for provider '{deployment.provider}'")
        self.base_url = base.rstrip("/")
        # Where a cap on the answer goes when the request carries none (a budget hold sets one): OpenAI's own
        # API refuses max_tokens for its reasoning models; other OpenAI-compatible servers know max_tokens.
        self.output_limit_field = "max_completion_tokens" if self.base_url == _OPENAI_API else "max_tokens"
        self._key = deployment.resolve_api_key()
        if self._key is None and self.needs_key:
            raise ConfigError(
                f"model '{deployment.name}': no API key for provider '{deployment.provider}' - "
                f"set api_key_env: {self.key_env_hint} (or api_key) in the config"
            )
        self._headers = {"content-type": "application/json", **self._auth_headers(), **deployment.headers}
        self._model = deployment.upstream_model

    # -- vendor hooks ---------------------------------------------------------------------------
    def _default_base(self) -> str | None:
        return self.default_base_url

    def _auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._key}"} if self._key else {}

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    # -- ChatModel ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.deployment.name

    def _payload(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        data = request.model_dump(exclude_none=True)
        data["model"] = self._model
        if stream:
            data["stream"] = True
            data["stream_options"] = {"include_usage": True}
        else:
            data.pop("stream", None)
            data.pop("stream_options", None)
        return data

    def _secrets(self) -> tuple[str | None, ...]:
        """What must never reach a client: the key and the values of the deployment's ``headers:``."""
        return (self._key, *self.deployment.headers.values())

    async def _post_json(self, path: str, payload: dict[str, Any], model: type[R], what: str) -> R:
        async with _http.post(self._ctx.http, self._url(path), payload, self._headers, deployment=self._id) as resp:
            await _http.raise_for_status(
                resp, deployment=self._id, secrets=self._secrets(), now=self._ctx.clock.time
            )
            data = await _http.read_json(resp, deployment=self._id)
        try:
            return model.model_validate(data)
        except ValidationError:
            raise UpstreamBadResponseError(
                f"upstream {self._id} answered JSON that is not {what}", deployment=self._id
            ) from None

    async def complete(self, request: ChatRequest) -> ChatResponse:
        payload = self._payload(request, stream=False)
        return await self._post_json("chat/completions", payload, ChatResponse, "a chat completion")

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        payload = self._payload(request, stream=True)
        async with _http.post(
            self._ctx.http, self._url("chat/completions"), payload, self._headers, deployment=self._id
        ) as resp:
            await _http.raise_for_status(
                resp, deployment=self._id, secrets=self._secrets(), now=self._ctx.clock.time
            )
            events = await _http.open_stream(resp, deployment=self._id)
            if isinstance(events, _http.JsonBody):
                # A server that ignores stream=true answers with the whole completion.
                for chunk in response_chunks(self._whole_answer(events.value)):
                    yield chunk
                return
            async for _event, data in events:
                if data == "[DONE]":
                    return
                yield self._chunk(_http.loads_event(data, deployment=self._id), data)

    def _upstream_error(self, obj: Any, raw: str) -> ProviderError | None:
        """The error an ``{"error": ...}`` object sent with a 200 stands for, if ``obj`` is one."""
        if isinstance(obj, dict) and "error" in obj and "choices" not in obj:
            return _http.map_status_error(
                500, {}, raw.encode(), deployment=self._id, secrets=self._secrets(), now=self._ctx.clock.time(),
            )
        return None

    def _chunk(self, obj: Any, raw: str) -> ChatChunk:
        error = self._upstream_error(obj, raw)
        if error is not None:
            raise error
        try:
            return ChatChunk.model_validate(obj)
        except ValidationError:
            raise UpstreamBadResponseError(
                f"upstream {self._id} sent a stream chunk that is not a chat completion chunk",
                deployment=self._id,
            ) from None

    def _whole_answer(self, obj: Any) -> ChatResponse:
        error = self._upstream_error(obj, orjson.dumps(obj).decode())
        if error is not None:
            raise error
        try:
            return ChatResponse.model_validate(obj)
        except ValidationError:
            raise UpstreamBadResponseError(
                f"upstream {self._id} answered a stream request with JSON that is not a chat completion",
                deployment=self._id,
            ) from None

    # -- EmbeddingModel -------------------------------------------------------------------------
    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Texts and token ids go to the upstream as they came; so does ``encoding_format``, unless the
        upstream refuses base64: then it is asked for floats, which the router encodes."""
        payload = request.model_dump(exclude_none=True)
        payload["model"] = self._model
        try:
            return await self._post_json("embeddings", payload, EmbeddingResponse, "an embedding list")
        except UpstreamBadRequestError as exc:
            refused = exc.message.lower()
            if request.encoding_format != "base64" or ("base64" not in refused and "encoding_format" not in refused):
                raise
        payload["encoding_format"] = "float"
        return await self._post_json("embeddings", payload, EmbeddingResponse, "an embedding list")

    # -- Probe ----------------------------------------------------------------------------------
    async def check(self) -> str:
        headers = {k: v for k, v in self._headers.items() if k != "content-type"}
        async with _http.get(self._ctx.http, self._url("models"), headers, deployment=self._id) as resp:
            await _http.raise_for_status(
                resp, deployment=self._id, secrets=self._secrets(), now=self._ctx.clock.time
            )
            data = await _http.read_json(resp, deployment=self._id)
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise UpstreamBadResponseError(f"upstream {self._id} has no model list", deployment=self._id)
        ids = {m.get("id") for m in models if isinstance(m, dict)}
        if self._model not in ids and ids:
            return f"answers, but does not list '{self._model}'"
        return "ok"


class AzureOpenAIProvider(OpenAIProvider):
    """Azure OpenAI: ``base_url`` is the resource endpoint, ``model`` the Azure deployment name."""

    default_base_url = None
    key_env_hint = "AZURE_OPENAI_API_KEY"

    def _auth_headers(self) -> dict[str, str]:
        return {"api-key": self._key} if self._key else {}

    def _url(self, path: str) -> str:
        version = self.deployment.api_version or "2024-10-21"
        if path == "models":
            return f"{self.base_url}/openai/models?api-version={version}"
        return f"{self.base_url}/openai/deployments/{self._model}/{path}?api-version={version}"


class OllamaProvider(OpenAIProvider):
    needs_key = False

    def _default_base(self) -> str | None:
        host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
        if not host.startswith(("http://", "https://")):
            host = "http://" + host
        return host.rstrip("/") + "/v1"


class VLLMProvider(OpenAIProvider):
    default_base_url = None
    needs_key = False


class OpenRouterProvider(OpenAIProvider):
    default_base_url = "https://openrouter.ai/api/v1"
    key_env_hint = "OPENROUTER_API_KEY"


class GroqProvider(OpenAIProvider):
    default_base_url = "https://api.groq.com/openai/v1"
    key_env_hint = "GROQ_API_KEY"


class TogetherProvider(OpenAIProvider):
    default_base_url = "https://api.together.xyz/v1"
    key_env_hint = "TOGETHER_API_KEY"


class MistralProvider(OpenAIProvider):
    default_base_url = "https://api.mistral.ai/v1"
    key_env_hint = "MISTRAL_API_KEY"


class DeepSeekProvider(OpenAIProvider):
    default_base_url = "https://api.deepseek.com/v1"
    key_env_hint = "DEEPSEEK_API_KEY"
