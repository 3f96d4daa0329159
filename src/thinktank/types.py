"""The OpenAI chat format, as typed values shared by every layer.

Requests are validated strictly where thinktank needs the value (model, messages, sampling
parameters) and let unknown OpenAI parameters through, so a new upstream parameter works
without a thinktank release. Responses keep unknown upstream fields (``extra="allow"``).
"""

from __future__ import annotations

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


class ChatResponse(_Open):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None

    _served_by: str | None = PrivateAttr(default=None)

    @property
    def served_by(self) -> str | None:
        """Id of the deployment that produced this answer (set by the router)."""
        return self._served_by


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


class ChatChunk(_Open):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None


class EmbeddingRequest(_Open):
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
        return v

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        return [x for x in self.input if isinstance(x, str)]


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
