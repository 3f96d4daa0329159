"""Google Gemini through its native API (``generateContent`` / ``streamGenerateContent``).

Requests and answers are translated to and from the OpenAI chat format in
:mod:`._gemini_translate`. The key travels in the ``x-goog-api-key`` header, never in a URL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import aiohttp
import orjson

from ..config import DeploymentConfig
from ..errors import (
    ConfigError,
    ProviderError,
    UpstreamAuthError,
    UpstreamBadResponseError,
    UpstreamRateLimitError,
    UpstreamServerError,
)
from ..types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    encode_embedding,
)
from . import _http
from ._gemini_translate import StreamTranslator, WireError, from_gemini, to_gemini
from .base import ProviderContext

__all__ = ["GeminiProvider"]


def _retry_delay(body: bytes) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"retryDelay": "37s"``): Gemini's 429s
    usually carry no Retry-After header."""
    try:
        details = orjson.loads(body)["error"]["details"]
        for d in details:
            if str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
                return max(0.0, float(str(d["retryDelay"]).removesuffix("s")))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        pass
    return None


class GeminiProvider:
    """One Gemini model of the Generative Language API (AI Studio key)."""

    default_base_url: ClassVar[str] = "https://generativelanguage.googleapis.com/v1beta"
    key_env_hint: ClassVar[str] = "GEMINI_API_KEY"

    def __init__(self, deployment: DeploymentConfig, ctx: ProviderContext) -> None:
        self.deployment = deployment
        self._ctx = ctx
        self._id = deployment.id or deployment.name
        self.base_url = (deployment.base_url or self.default_base_url).rstrip("/")
        self._key = deployment.resolve_api_key()
        if self._key is None:
            raise ConfigError(
                f"model '{deployment.name}': no API key for provider '{deployment.provider}' - "
                f"set api_key_env: {self.key_env_hint} (or api_key) in the config"
            )
        self._headers = {"content-type": "application/json", "x-goog-api-key": self._key, **deployment.headers}
        self._model = deployment.upstream_model
        # "gemini-2.5-flash" is models/gemini-2.5-flash; "tunedModels/x" and "models/x" are kept as given.
        self._resource = self._model if "/" in self._model else f"models/{self._model}"

    @property
    def name(self) -> str:
        return self.deployment.name

    def _url(self, method: str = "") -> str:
        return f"{self.base_url}/{self._resource}{':' + method if method else ''}"

    def _secrets(self) -> tuple[str | None, ...]:
        """What must never reach a client: the key and the values of the deployment's ``headers:``."""
        return (self._key, *self.deployment.headers.values())

    # -- errors ---------------------------------------------------------------------------------
    def _error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        if status == 400 and b"API_KEY_INVALID" in body:
            # Gemini answers a bad key with 400 INVALID_ARGUMENT: a configuration problem, not the client's.
            return UpstreamAuthError(
                f"upstream {self._id} refused thinktank's credentials (400 API_KEY_INVALID)",
                deployment=self._id, upstream_status=status,
            )
        err = _http.map_status_error(
            status, headers, body, deployment=self._id, secrets=self._secrets(), now=self._ctx.clock.time()
        )
        if err.retry_after is None and isinstance(err, (UpstreamRateLimitError, UpstreamServerError)):
            err.retry_after = _retry_delay(body)
        return err

    async def _raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status < 300:
            return
        try:
            body = await resp.read()
        except (TimeoutError, aiohttp.ClientError):
            body = b""
        raise self._error(resp.status, resp.headers, body)

    def _bad_response(self, what: str) -> UpstreamBadResponseError:
        return UpstreamBadResponseError(f"upstream {self._id} {what}", deployment=self._id)

    # -- ChatModel ------------------------------------------------------------------------------
    def _new_id(self) -> str:
        return f"chatcmpl-{uuid.uuid4().hex[:24]}"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        payload = to_gemini(request)
        async with _http.post(
            self._ctx.http, self._url("generateContent"), payload, self._headers, deployment=self._id
        ) as resp:
            await self._raise_for_status(resp)
            data = await _http.read_json(resp, deployment=self._id)
        try:
            return from_gemini(data, response_id=self._new_id(), created=int(self._ctx.clock.time()),
                               model=self._model)
        except (WireError, ValueError, TypeError):
            raise self._bad_response("answered JSON that is not a Gemini response") from None

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        payload = to_gemini(request)
        state = StreamTranslator(response_id=self._new_id(), created=int(self._ctx.clock.time()),
                                 model=self._model)
        async with _http.post(
            self._ctx.http, self._url("streamGenerateContent") + "?alt=sse", payload, self._headers,
            deployment=self._id,
        ) as resp:
            await self._raise_for_status(resp)
            events = await _http.open_stream(resp, deployment=self._id)
            if isinstance(events, _http.JsonBody):
                # Without alt=sse (a server that ignores it) the answer is one JSON array of the events.
                whole = events.value if isinstance(events.value, list) else [events.value]
                chunks = [chunk for obj in whole for chunk in self._feed(state, obj)] + state.end()
                if not chunks:
                    raise self._bad_response("answered a stream request with JSON that is not a Gemini response")
                for chunk in chunks:
                    yield chunk
                return
            async for _event, data in events:
                for chunk in self._feed(state, _http.loads_event(data, deployment=self._id)):
                    yield chunk
        for chunk in state.end():
            yield chunk

    def _feed(self, state: StreamTranslator, obj: Any) -> list[ChatChunk]:
        """The chunks of one streamed GenerateContentResponse; an error object raises its ProviderError."""
        if isinstance(obj, dict) and isinstance(obj.get("error"), dict) and "candidates" not in obj:
            code = obj["error"].get("code")
            raise self._error(code if isinstance(code, int) and code >= 400 else 500, {}, orjson.dumps(obj))
        try:
            return state.feed(obj)
        except (WireError, ValueError, TypeError):
            raise self._bad_response("sent a stream event that is not a Gemini response") from None

    # -- EmbeddingModel -------------------------------------------------------------------------
    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        texts = request.text_only(self.name)
        one: dict[str, Any] = {"model": self._resource}
        if request.dimensions is not None:
            one["outputDimensionality"] = request.dimensions
        payload = {"requests": [{**one, "content": {"parts": [{"text": t}]}} for t in texts]}
        async with _http.post(
            self._ctx.http, self._url("batchEmbedContents"), payload, self._headers, deployment=self._id
        ) as resp:
            await self._raise_for_status(resp)
            data = await _http.read_json(resp, deployment=self._id)
        embeddings = data.get("embeddings") if isinstance(data, dict) else None
        if not isinstance(embeddings, list) or len(embeddings) != len(texts):
            raise self._bad_response("answered JSON that is not an embedding list")
        out: list[EmbeddingData] = []
        for i, e in enumerate(embeddings):
            values = e.get("values") if isinstance(e, dict) else None
            if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
                raise self._bad_response("answered an embedding without values")
            vector = [float(v) for v in values]
            out.append(EmbeddingData(index=i, embedding=encode_embedding(vector)
                                     if request.encoding_format == "base64" else vector))
        tokens = sum((len(t) + 3) // 4 for t in texts)  # Gemini reports none: estimate 4 chars a token
        return EmbeddingResponse(data=out, model=self._model,
                                 usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))

    # -- Probe ----------------------------------------------------------------------------------
    async def check(self) -> str:
        headers = {k: v for k, v in self._headers.items() if k != "content-type"}
        async with _http.get(self._ctx.http, self._url(), headers, deployment=self._id) as resp:
            await self._raise_for_status(resp)
            data = await _http.read_json(resp, deployment=self._id)
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise self._bad_response("answered JSON that is not a model description")
        return "ok"
