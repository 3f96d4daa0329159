"""The OpenAI chat format, as typed values shared by every layer.

Requests are validated strictly where thinktank needs the value (model, messages, sampling
parameters) and let unknown OpenAI parameters through, so a new upstream parameter works
without a thinktank release. Responses keep unknown upstream fields (``extra="allow"``).
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from .bounds import MAX_INT32, MAX_INT64, MIN_INT64, OutputTokens
from .errors import InvalidRequestError

__all__ = [
    "ChatChunk",
    "ChatRequest",
    "ChatResponse",
    "Choice",
    "ChunkChoice",
    "Delta",
    "EmbeddingData",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EmbeddingUsage",
    "FunctionCall",
    "Message",
    "ResponseMessage",
    "StreamOptions",
    "ToolCall",
    "Usage",
    "decode_embedding",
    "encode_embedding",
    "message_text",
]

MAX_EMBEDDING_DIMENSIONS = 65_536
"""More than any embedding model gives (pgvector indexes at most 16,000)."""

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCall(_Open):
    name: str | None = None
    arguments: str = ""


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Open):
    """One message of a conversation (request side)."""

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _parts_have_type(cls, v: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(v, list):
            for i, part in enumerate(v):
                if not isinstance(part.get("type"), str):
                    raise ValueError(f"content part {i} needs a string 'type' (e.g. 'text' or 'image_url')")
        return v


def message_text(message: Message | ResponseMessage) -> str:
    """The plain text of a message: its string content, or its text parts joined."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")


class StreamOptions(_Open):
    include_usage: bool = False


class ChatRequest(_Open):
    """``POST /v1/chat/completions`` body. Unknown OpenAI parameters pass through."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: OutputTokens | None = None
    max_completion_tokens: OutputTokens | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=MIN_INT64, le=MAX_INT64)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        return v

    def output_limit(self) -> int | None:
        """The requested cap on generated tokens, whichever field carries it."""
        return self.max_completion_tokens or self.max_tokens


class Usage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None
    """USD, computed by the gateway from the deployment's price."""


class ResponseMessage(_Open):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(_Open):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = None


class _Answer(_Open):
    """What answers of every kind carry beyond OpenAI's fields: the passages cited (grounded answers),
    serialised only when present, and who produced it (never serialised)."""

    citations: list[dict[str, Any]] | None = None
    """The passages a grounded answer cites (document, page, section, snippet)."""

    _served_by: str | None = PrivateAttr(default=None)
    _run_id: str | None = PrivateAttr(default=None)

    @model_serializer(mode="wrap")
    def _drop_absent_citations(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("citations", 0) is None:
            del data["citations"]
        return data

    @property
    def served_by(self) -> str | None:
        """Id of the deployment that produced this answer (set by the router; a composite keeps its last)."""
        return self._served_by

    @property
    def run_id(self) -> str | None:
        """The run that produced this answer (ensembles, debates)."""
        return self._run_id

    def produced_by(self, *, deployment: str | None = None, run_id: str | None = None) -> None:
        """Say who produced the answer (the router: the deployment; a run model: the run)."""
        if deployment is not None:
            self._served_by = deployment
        if run_id is not None:
            self._run_id = run_id


class ChatResponse(_Answer):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class Delta(_Open):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(_Open):
    index: int = 0
    delta: Delta = Field(default_factory=Delta)
    finish_reason: str | None = None

    @model_serializer(mode="wrap")
    def _keep_finish_reason(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI always sends finish_reason (null until the end), even when None values are dropped.
        data: dict[str, Any] = handler(self)
        data.setdefault("finish_reason", None)
        return data


class ChatChunk(_Answer):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None

    _note: str | None = PrivateAttr(default=None)

    @classmethod
    def progress(cls, text: str, *, model: str = "") -> ChatChunk:
        """Not an answer chunk: progress of a long answer (an ensemble's stages). The API sends it as an SSE
        comment, which OpenAI clients skip; consumers of the stream see a chunk without choices."""
        chunk = cls(id="progress", created=0, model=model)
        chunk._note = text
        return chunk

    @property
    def note(self) -> str | None:
        """The progress text of a :meth:`progress` chunk, else None."""
        return self._note


class EmbeddingRequest(_Open):
    """``POST /v1/embeddings`` body: one text, texts, one list of token ids, or lists of token ids."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1, le=MAX_EMBEDDING_DIMENSIONS)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _token_ids(cls, v: Any) -> Any:
        if isinstance(v, list):
            ids = [x for item in v for x in (item if isinstance(item, list) else [item])]
            if any(isinstance(x, int) and not isinstance(x, bool) and not 0 <= x <= MAX_INT32 for x in ids):
                raise ValueError(f"token ids are integers from 0 to {MAX_INT32}")
        return v

    @field_validator("input")
    @classmethod
    def _not_empty(
        cls, v: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be empty")
        if isinstance(v, list) and len(v) > 2048:
            raise ValueError("at most 2048 inputs per request")
        if isinstance(v, list) and any(isinstance(x, list) and not x for x in v):
            raise ValueError("a list of token ids must not be empty")
        return v

    def token_ids(self) -> list[list[int]] | None:
        """The inputs as lists of token ids (one list per input), or None for text input."""
        if isinstance(self.input, str) or isinstance(self.input[0], str):
            return None
        if isinstance(self.input[0], int):
            return [[x for x in self.input if isinstance(x, int)]]  # one input: a single list of ids
        return [x for x in self.input if isinstance(x, list)]

    def texts(self) -> list[str]:
        """The input texts; none when the input is token ids (see :meth:`token_ids`)."""
        if isinstance(self.input, str):
            return [self.input]
        return [x for x in self.input if isinstance(x, str)]

    def count(self) -> int:
        """How many embeddings the answer holds: one per input."""
        ids = self.token_ids()
        return len(ids) if ids is not None else len(self.texts())

    def text_only(self, model: str) -> list[str]:
        """The texts, for a model that embeds text only: token ids are a client error (400), not nothing."""
        if self.token_ids() is not None:
            raise InvalidRequestError(
                f"'{model}' embeds text only and cannot take token ids: send input as a string or a list of "
                "strings (with LangChain's OpenAIEmbeddings, set check_embedding_ctx_length=False).",
                param="input",
            )
        return self.texts()


def encode_embedding(values: list[float]) -> str:
    """An embedding as OpenAI's ``encoding_format: "base64"`` sends it: little-endian float32, base64."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def decode_embedding(data: str) -> list[float]:
    """The floats of a base64 embedding (ValueError if it is not one)."""
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
    if len(raw) % 4:
        raise ValueError("not a whole number of float32 values")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


class EmbeddingData(_Open):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Open):
    prompt_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None


class EmbeddingResponse(_Open):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage = Field(default_factory=EmbeddingUsage)
