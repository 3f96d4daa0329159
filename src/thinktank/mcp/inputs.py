"""The MCP tools' arguments: one pydantic model per tool, whose JSON schema is the tool's ``inputSchema``.

Every model refuses unknown arguments and bounds every number (as the API's inputs do, :mod:`thinktank.bounds`):
an argument of the wrong type, a huge integer or an infinite float is the caller's error, reported as a tool
error, never a crash. Optional arguments are simply optional in the schemas (no ``null`` arm): what a
client may leave out, it leaves out.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from ..bounds import MAX_OUTPUT_TOKENS, MAX_USD
from ..conversations.memory import MAX_TEXT

__all__ = [
    "AddDocumentIn", "AskModelIn", "ForgetIn", "GetRunIn", "ListModelsIn", "RecallIn", "RememberIn",
    "RunDebateIn", "RunEnsembleIn", "SearchKnowledgeIn",
]

Name = Annotated[str, Field(min_length=1, max_length=256)]
Id = Annotated[str, Field(min_length=1, max_length=64)]
# Optional arguments: absent (None) or a value within bounds; the schema shows only the value's type.
OptText = Annotated[str, Field(min_length=1)] | SkipJsonSchema[None]
OptNames = Annotated[list[Name], Field(min_length=1, max_length=50)] | SkipJsonSchema[None]
OptTokens = Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS)] | SkipJsonSchema[None]
OptTemperature = Annotated[float, Field(ge=0, le=2)] | SkipJsonSchema[None]
OptUsd = Annotated[float, Field(gt=0, le=MAX_USD)] | SkipJsonSchema[None]
OptRounds = Annotated[int, Field(ge=1, le=10)] | SkipJsonSchema[None]
OptBool = bool | SkipJsonSchema[None]
OptUrl = Annotated[str, Field(min_length=1, max_length=2048)] | SkipJsonSchema[None]
OptFileName = Annotated[str, Field(min_length=1, max_length=1000)] | SkipJsonSchema[None]
OptTitle = Annotated[str, Field(min_length=1, max_length=500)] | SkipJsonSchema[None]
OptQuery = Annotated[str, Field(min_length=1, max_length=10_000)] | SkipJsonSchema[None]

_QUESTION = "The question (the user's message)."


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ListModelsIn(_In):
    """No arguments."""


class AskModelIn(_In):
    model: Name = Field(description="A name from list_models: a model, a group or alias, ensemble/<name>, "
                                    "debate/<name>, kb/<name> or agent/<name>.")
    question: str = Field(min_length=1, description=_QUESTION)
    system: OptText = Field(default=None, description="A system message sent before the question.")
    knowledge_bases: OptNames = Field(default=None, description="Ground the answer in these knowledge bases (ids or "
                                                                "names): it cites the passages it used.")
    max_tokens: OptTokens = Field(default=None, description="The longest answer, in tokens.")
    temperature: OptTemperature = None


class _RunIn(_In):
    question: str = Field(min_length=1, description=_QUESTION)
    max_tokens: OptTokens = Field(default=None, description="The longest answer of each step, in tokens.")
    temperature: OptTemperature = None
    max_cost_usd: OptUsd = Field(default=None, description="Stop the run before it would cost more.")
    cache: bool = Field(default=False, description="Let an identical earlier run of yours answer (no cost).")


class RunEnsembleIn(_RunIn):
    ensemble: Name = Field(description="A configured ensemble (list_models names it ensemble/<name>).")


class RunDebateIn(_RunIn):
    debate: Name = Field(description="A configured debate (list_models names it debate/<name>).")
    rounds: OptRounds = Field(default=None, description="Rounds at most (the debate's own setting otherwise).")
    plan: OptBool = Field(default=None, description="Also write plan.md and tasks.md (the resources "
                                                    "thinktank://runs/<run_id>/plan.md and .../tasks.md).")


class SearchKnowledgeIn(_In):
    knowledge_bases: list[Name] = Field(min_length=1, max_length=50, description="Knowledge bases (ids or names).")
    query: str = Field(min_length=1, max_length=10_000)
    top_k: int = Field(default=8, ge=1, le=100, description="How many passages.")
    mode: Literal["hybrid", "keyword", "vector"] = "hybrid"


class AddDocumentIn(_In):
    knowledge_base: Name = Field(description="The knowledge base (id or name).")
    text: OptText = Field(default=None, description="The document's text (Markdown or plain text); or give url.")
    url: OptUrl = Field(default=None, description="A public web page or file to fetch; or give text.")
    name: OptFileName = Field(default=None, description="The document's file name, e.g. notes/meeting.md (with "
                                                        "text; the same name again replaces the document).")
    title: OptTitle = None

    @model_validator(mode="after")
    def _text_or_url(self) -> AddDocumentIn:
        if (self.text is None) == (self.url is None):
            raise ValueError("give either text or url")
        if self.url is not None and self.name is not None:
            raise ValueError("a fetched document is named by its URL: give name with text only")
        return self


class RememberIn(_In):
    text: str = Field(min_length=1, max_length=MAX_TEXT,
                      description="One short sentence about you, e.g. 'Prefers answers in French.'")
    kind: Literal["fact", "interest", "preference"] = "fact"


class RecallIn(_In):
    query: OptQuery = Field(default=None, description="What the memories should be about (else all of them).")
    limit: int = Field(default=10, ge=1, le=100)


class ForgetIn(_In):
    memory_id: Id = Field(description="A memory's id (recall lists them).")


class GetRunIn(_In):
    run_id: Id = Field(description="A run's id (run_ensemble and run_debate give it).")
