"""The checks an answer can be held to, as data: a pydantic union on ``type`` (:data:`Check`).

Every check validates what it can when it is parsed (a regular expression compiles, a JSON schema is itself
valid, numbers are finite and in range, composites nest at most :data:`MAX_DEPTH` deep), so a dataset or a
request with a bad check is refused up front instead of failing answer after answer. Each check has an
optional display ``name``; :attr:`label` falls back to one made from the check (``contains 'Paris'``).
Inputs are strict (``"true"`` is not a boolean, ``"3"`` not a number) and unknown fields are refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from ..bounds import MAX_INT32, Usd
from .patterns import compile_pattern
from .schemas import check_schema

__all__ = [
    "MAX_CHECKS",
    "MAX_DEPTH",
    "AllCheck",
    "AnyCheck",
    "Check",
    "CheckList",
    "CitationsCheck",
    "ContainsCheck",
    "CostCheck",
    "IsJsonCheck",
    "JsonSchemaCheck",
    "LatencyCheck",
    "NotCheck",
    "NotContainsCheck",
    "NumericCheck",
    "RegexCheck",
    "RubricCheck",
    "SimilarCheck",
    "iter_checks",
    "judges_named",
    "needs_judge",
]

MAX_DEPTH: Final = 6
"""How deep ``all`` / ``any`` / ``not`` may nest (a plain check in a ``not`` is depth 2)."""
MAX_CHECKS: Final = 64
"""The most checks one list may hold, nested ones counted."""
MAX_TEXT: Final = 10_000
MAX_MS: Final = 86_400_000.0
"""A day, in milliseconds: the largest latency ceiling."""

Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e300, le=1e300)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
ModelName = Annotated[str, Field(min_length=1, max_length=256)]


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: float) -> str:
    return f"{value:g}"


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    """How the check is shown; None: :meth:`default_name`."""

    @property
    def label(self) -> str:
        """The check's display name: its ``name``, else one made from it."""
        return self.name or self.default_name()

    def default_name(self) -> str:
        raise NotImplementedError

    def children(self) -> Sequence[Check]:
        """The checks this one is made of (``all``, ``any``, ``not``)."""
        return ()


class ContainsCheck(_Check):
    type: Literal["contains"] = "contains"
    value: Text
    case_sensitive: bool = False

    def default_name(self) -> str:
        return f"contains '{_short(self.value)}'"


class NotContainsCheck(_Check):
    type: Literal["not_contains"] = "not_contains"
    value: Text
    case_sensitive: bool = False

    def default_name(self) -> str:
        return f"does not contain '{_short(self.value)}'"


class RegexCheck(_Check):
    """The answer matches ``pattern`` somewhere (``regex`` engine; inline flags such as ``(?i)`` work)."""

    type: Literal["regex"] = "regex"
    pattern: Annotated[str, Field(min_length=1)]

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        compile_pattern(v)
        return v

    def default_name(self) -> str:
        return f"regex /{_short(self.pattern)}/"


class IsJsonCheck(_Check):
    type: Literal["is_json"] = "is_json"

    def default_name(self) -> str:
        return "is JSON"


class JsonSchemaCheck(_Check):
    """The answer is JSON valid against ``schema`` (given as ``"schema"``; ``schema_`` in Python)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_by_alias=True,
                              validate_by_name=True, serialize_by_alias=True)

    type: Literal["json_schema"] = "json_schema"
    schema_: dict[str, Any] = Field(alias="schema")

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_schema(v)
        return v

    def default_name(self) -> str:
        return "matches the JSON schema"


class NumericCheck(_Check):
    """The answer's last number is within ``tolerance`` (absolute) or ``relative`` (a fraction of ``value``)."""

    type: Literal["numeric"] = "numeric"
    value: Finite
    tolerance: Annotated[float, Field(ge=0, le=1e300, allow_inf_nan=False)] = 0.0
    relative: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] | None = None

    def allowed(self) -> float:
        """The largest distance from ``value`` that passes."""
        return max(self.tolerance, (self.relative or 0.0) * abs(self.value))

    def default_name(self) -> str:
        if self.relative is not None and self.relative > 0 and self.tolerance == 0:
            return f"≈ {_num(self.value)} ± {_num(self.relative * 100)}%"
        if self.allowed() > 0:
            return f"≈ {_num(self.value)} ± {_num(self.allowed())}"
        return f"= {_num(self.value)}"


class SimilarCheck(_Check):
    """Cosine similarity of local embeddings of the answer and ``value`` (default: the item's reference)."""

    type: Literal["similar"] = "similar"
    threshold: Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)] = 0.8
    value: Text | None = None

    def default_name(self) -> str:
        to = "reference" if self.value is None else f"'{_short(self.value)}'"
        return f"similar to {to} ≥ {_num(self.threshold)}"


class CitationsCheck(_Check):
    type: Literal["citations"] = "citations"
    min: Annotated[int, Field(ge=0, le=MAX_INT32)] = 1

    def default_name(self) -> str:
        return f"cites ≥ {self.min}"


class CostCheck(_Check):
    type: Literal["cost"] = "cost"
    max_usd: Usd

    def default_name(self) -> str:
        return f"cost ≤ ${_num(self.max_usd)}"


class LatencyCheck(_Check):
    type: Literal["latency"] = "latency"
    max_ms: Annotated[float, Field(ge=0, le=MAX_MS, allow_inf_nan=False)]

    def default_name(self) -> str:
        return f"latency ≤ {_num(self.max_ms)} ms"


class RubricCheck(_Check):
    """A judge model says whether the answer meets ``criterion`` (``judge``: the evaluation's first judge)."""

    type: Literal["rubric"] = "rubric"
    criterion: Text
    judge: ModelName | None = None

    def default_name(self) -> str:
        return f"rubric '{_short(self.criterion)}'"


def _raw_shape(data: Any, depth: int = 1, seen: list[int] | None = None) -> tuple[int, int]:
    """(depth, number of checks) of a check as received, counted before it is validated, so that a deeply
    nested input is refused with a clear message rather than by the validator's recursion guard. Stops
    counting past the limits."""
    count = [0] if seen is None else seen
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_CHECKS or not isinstance(data, dict):
        return depth, count[0]
    inner: list[Any] = []
    if isinstance(data.get("checks"), list):
        inner = data["checks"]
    elif data.get("check") is not None:
        inner = [data["check"]]
    deepest = depth
    for child in inner:
        d, _ = _raw_shape(child, depth + 1, count)
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH or count[0] > MAX_CHECKS:
            break
    return deepest, count[0]


class _Composite(_Check):
    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        depth, count = _raw_shape(data)
        if depth > MAX_DEPTH:
            raise ValueError(f"checks nest more than {MAX_DEPTH} deep")
        if count > MAX_CHECKS:
            raise ValueError(f"more than {MAX_CHECKS} checks in one check")
        return data

    def _names(self) -> str:
        return _short(", ".join(c.label for c in self.children()), 80)


class AllCheck(_Composite):
    type: Literal["all"] = "all"
    checks: Annotated[list[Check], Field(min_length=1, max_length=MAX_CHECKS)]

    def children(self) -> Sequence[Check]:
        return self.checks

    def default_name(self) -> str:
        return f"all of ({self._names()})"


class AnyCheck(_Composite):
    type: Literal["any"] = "any"
    checks: Annotated[list[Check], Field(min_length=1, max_length=MAX_CHECKS)]

    def children(self) -> Sequence[Check]:
        return self.checks

    def default_name(self) -> str:
        return f"any of ({self._names()})"


class NotCheck(_Composite):
    type: Literal["not"] = "not"
    check: Check

    def children(self) -> Sequence[Check]:
        return (self.check,)

    def default_name(self) -> str:
        return f"not ({self._names()})"


Check = Annotated[
    ContainsCheck | NotContainsCheck | RegexCheck | IsJsonCheck | JsonSchemaCheck | NumericCheck | SimilarCheck
    | CitationsCheck | CostCheck | LatencyCheck | RubricCheck | AllCheck | AnyCheck | NotCheck,
    Field(discriminator="type"),
]
"""One check; ``type`` says which."""

for _model in (AllCheck, AnyCheck, NotCheck):
    _model.model_rebuild()


def iter_checks(checks: Sequence[Check]) -> Iterator[Check]:
    """Every check of ``checks``, nested ones included (depth first)."""
    for check in checks:
        yield check
        yield from iter_checks(check.children())


def _total_bounded(checks: list[Check]) -> list[Check]:
    if sum(1 for _ in iter_checks(checks)) > MAX_CHECKS:
        raise ValueError(f"more than {MAX_CHECKS} checks, nested ones counted")
    return checks


Checks = Annotated[list[Check], Field(max_length=MAX_CHECKS), AfterValidator(_total_bounded)]
"""A list of checks (at most :data:`MAX_CHECKS`, nested ones counted)."""

CheckList: TypeAdapter[list[Check]] = TypeAdapter(Checks)
"""Validates (``validate_python``) and serialises (``dump_python(..., mode="json")``) a list of checks."""


def judges_named(checks: Sequence[Check]) -> set[str]:
    """Every judge a rubric among ``checks`` names (to validate up front, before anything is spent)."""
    return {c.judge for c in iter_checks(checks) if isinstance(c, RubricCheck) and c.judge is not None}


def needs_judge(checks: Sequence[Check]) -> bool:
    """Whether a rubric among ``checks`` names no judge of its own (it takes the evaluation's first)."""
    return any(isinstance(c, RubricCheck) and c.judge is None for c in iter_checks(checks))
