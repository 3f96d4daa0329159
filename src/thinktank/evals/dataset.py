"""Evaluation datasets: JSONL or CSV files (or JSON objects from a request body) read into :class:`EvalItem`s.

One item per JSONL line (blank lines skipped; a file that is one JSON array is read too) or per CSV row (a
header row names the columns ``id, question, messages, reference, tags, checks``; ``expected`` is an alias of
``reference``; other columns are ignored and named in a warning). An item has a ``question`` or ``messages``
(OpenAI chat messages, the last one the user's), an optional ``id`` (default ``item-<line>``, unique; an
integer is read as its digits), ``reference`` (a number is read as its text), ``tags`` (a list, or one string
separated by ``;`` or ``,`` as in a CSV cell) and ``checks`` (CSV: a JSON array in the cell).

A bad line becomes a :class:`LineError` (1-based; in a CSV the line a row starts on, the header being line 1)
and the rest goes on. Only whole-file problems raise :class:`~thinktank.errors.InvalidRequestError`: more than
:data:`MAX_BYTES` or :data:`MAX_ITEMS`, text that is not UTF-8 (a BOM is fine) or holds a lone surrogate, an
unknown format, a CSV without a question column, and a dataset without a single valid item (the message then
names the first line errors).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InvalidRequestError
from ..types import Message, message_text
from .check_types import Checks

__all__ = [
    "MAX_BYTES",
    "MAX_ITEMS",
    "MAX_LINE_BYTES",
    "EvalItem",
    "LineError",
    "ParsedDataset",
    "describe_error",
    "items_from_json",
    "parse_dataset",
]

MAX_BYTES: Final = 10 * 1024 * 1024
MAX_ITEMS: Final = 2_000
MAX_LINE_BYTES: Final = 256 * 1024
MAX_MESSAGES: Final = 256
MAX_TAGS: Final = 32
MAX_ID_CHARS: Final = 128

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_TAG_SEPARATORS: Final = re.compile(r"[;,]")
_CHECK_TAGS: Final = frozenset({
    "contains", "not_contains", "regex", "is_json", "json_schema", "numeric", "similar", "citations", "cost",
    "latency", "rubric", "all", "any", "not",
})
_FIELDS: Final = ("id", "question", "messages", "reference", "expected", "tags", "checks")

Tag = Annotated[str, Field(min_length=1, max_length=64)]


class EvalItem(BaseModel):
    """One question of a dataset, with what its answers are held to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    reference: Annotated[str, Field(max_length=MAX_LINE_BYTES)] | None = None
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] = []
    checks: Checks = []

    @field_validator("id")
    @classmethod
    def _printable_id(cls, v: str) -> str:
        if not v.strip() or _CONTROL.search(v):
            raise ValueError("an id must be printable text (no line breaks or control characters)")
        return v

    @field_validator("messages")
    @classmethod
    def _ends_with_a_question(cls, v: list[Message]) -> list[Message]:
        if v[-1].role != "user":
            raise ValueError(f"the last message must be the user's (it is the {v[-1].role}'s)")
        if not message_text(v[-1]).strip():
            raise ValueError("the last message has no text")
        return v

    @property
    def question(self) -> str:
        """The text of the last (user) message."""
        return message_text(self.messages[-1])

    def key(self) -> str:
        """SHA-256 (hex) of the canonical messages: what an answer to this item depends on."""
        canonical = [m.model_dump(mode="json", exclude_none=True) for m in self.messages]
        return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The item as a dataset line (``question`` when it is one plain user message), read back the same."""
        out: dict[str, Any] = {"id": self.id}
        only = self.messages[0]
        if len(self.messages) == 1 and isinstance(only.content, str) and set(only.model_fields_set) <= {
                "role", "content"}:
            out["question"] = only.content
        else:
            out["messages"] = [m.model_dump(mode="json", exclude_none=True) for m in self.messages]
        if self.reference is not None:
            out["reference"] = self.reference
        if self.tags:
            out["tags"] = list(self.tags)
        if self.checks:
            out["checks"] = [c.model_dump(mode="json", exclude_none=True) for c in self.checks]
        return out


@dataclass(frozen=True)
class LineError:
    line: int
    """1-based: the JSONL line, the CSV row's first line (the header is line 1), or the JSON list's index + 1."""
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "message": self.message}


@dataclass(frozen=True)
class ParsedDataset:
    items: list[EvalItem]
    errors: list[LineError]
    warnings: list[str]

    def tags(self) -> list[str]:
        """The distinct tags of the items, sorted."""
        return sorted({tag for item in self.items for tag in item.tags})


class _LineProblem(Exception):
    """A line that cannot be an item; the message says why."""


def describe_error(exc: ValidationError) -> str:
    """A pydantic error as one short sentence: where (``checks.0.pattern``) and what, and how many more."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"] if p not in _CHECK_TAGS)
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where + ': ' if where else ''}{message}{more}"


def _text_value(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _LineProblem(f"'{key}' must be a string")
    if isinstance(value, int) and value.bit_length() > 256:
        raise _LineProblem(f"'{key}' is a number too large to be text")
    return str(value)


def _split_tags(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        raw = _TAG_SEPARATORS.split(value)
    elif isinstance(value, list) and all(isinstance(t, str) for t in value):
        raw = value
    else:
        raise _LineProblem("'tags' must be a list of strings")
    tags = list(dict.fromkeys(t.strip() for t in raw if t.strip()))
    if len(tags) > MAX_TAGS:
        raise _LineProblem(f"more than {MAX_TAGS} tags")
    return tags


class _Builder:
    """Items, line errors and warnings as lines come in; duplicate ids are line errors."""

    def __init__(self) -> None:
        self.items: list[EvalItem] = []
        self.errors: list[LineError] = []
        self.warnings: list[str] = []
        self.ids: dict[str, int] = {}
        self.unknown: dict[str, int] = {}

    def error(self, line: int, message: str) -> None:
        self.errors.append(LineError(line, message))

    def add(self, obj: Any, line: int) -> None:
        try:
            item = self._item(obj, line)
        except _LineProblem as exc:
            self.error(line, str(exc))
            return
        except ValidationError as exc:
            self.error(line, describe_error(exc))
            return
        first = self.ids.get(item.id)
        if first is not None:
            self.error(line, f"duplicate id {item.id!r} (first on line {first})")
            return
        self.ids[item.id] = line
        self.items.append(item)

    def _item(self, obj: Any, line: int) -> EvalItem:
        if not isinstance(obj, dict):
            raise _LineProblem(f"an item must be a JSON object, not {_json_kind(obj)}")
        for key in obj:
            if key not in _FIELDS:
                self.unknown.setdefault(str(key), line)
        raw_id = obj.get("id")
        if raw_id is None:
            item_id = f"item-{line}"
        elif isinstance(raw_id, str) or (isinstance(raw_id, int) and not isinstance(raw_id, bool)):
            if isinstance(raw_id, int) and raw_id.bit_length() > 256:
                raise _LineProblem(f"'id' is longer than {MAX_ID_CHARS} characters")
            item_id = str(raw_id)
        else:
            raise _LineProblem("'id' must be a string")
        question, messages = obj.get("question"), obj.get("messages")
        if question is not None and messages is not None:
            raise _LineProblem("give 'question' or 'messages', not both")
        if question is None and messages is None:
            raise _LineProblem("an item needs a 'question' (or 'messages')")
        if question is not None:
            if not isinstance(question, str) or not question.strip():
                raise _LineProblem("'question' must be a non-empty string")
            messages = [{"role": "user", "content": question}]
        elif not isinstance(messages, list):
            raise _LineProblem("'messages' must be a list of chat messages")
        reference, expected = _text_value(obj, "reference"), _text_value(obj, "expected")
        if reference is not None and expected is not None and reference != expected:
            raise _LineProblem("give 'reference' or its alias 'expected', not both")
        checks = obj.get("checks")
        if checks is not None and not isinstance(checks, list):
            raise _LineProblem("'checks' must be a list of checks")
        return EvalItem.model_validate({
            "id": item_id, "messages": messages, "reference": reference if reference is not None else expected,
            "tags": _split_tags(obj.get("tags")), "checks": checks or [],
        })

    def finish(self) -> ParsedDataset:
        if self.unknown:
            named = ", ".join(f"'{k[:40]}' (line {line})" for k, line in list(self.unknown.items())[:10])
            self.warnings.append(f"ignored unknown fields: {named}")
        if not self.items:
            if not self.errors:
                raise InvalidRequestError("The dataset has no items.", code="empty_dataset")
            first = "; ".join(f"line {e.line}: {e.message}" for e in self.errors[:3])
            more = f" (and {len(self.errors) - 3} more)" if len(self.errors) > 3 else ""
            raise InvalidRequestError(f"No valid item in the dataset: {first}{more}", code="invalid_dataset")
        return ParsedDataset(self.items, self.errors, self.warnings)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, int | float) else type(value).__name__


def _unencodable(why: str) -> str:
    """Why an item handed over as objects cannot be written as JSON (``orjson.dumps``'s complaint)."""
    if "surrogate" in why or "UTF-8" in why:
        return "the item holds text that is not valid Unicode (a lone surrogate)"
    if "64-bit" in why:
        return "the item holds an integer too large (beyond 64 bits)"
    return f"the item is not JSON: {why}"


def _too_many() -> InvalidRequestError:
    return InvalidRequestError(f"The dataset has more than {MAX_ITEMS:,} items; split it.", code="dataset_too_large")


def _too_big() -> InvalidRequestError:
    return InvalidRequestError(f"The dataset is larger than {MAX_BYTES // (1024 * 1024)} MB; split it.",
                               code="dataset_too_large")


def _not_utf8(why: str) -> InvalidRequestError:
    return InvalidRequestError(f"The dataset is not UTF-8 text: {why}. Save it as UTF-8.", code="invalid_encoding")


def _decode(data: bytes | str) -> str:
    """The dataset's text: UTF-8 (a BOM is dropped), within :data:`MAX_BYTES`, without lone surrogates."""
    if isinstance(data, str):
        text = data.removeprefix("\ufeff")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            line = text.count("\n", 0, exc.start) + 1
            raise _not_utf8(f"line {line} holds a lone surrogate ({text[exc.start]!r})") from None
        if size > MAX_BYTES:
            raise _too_big()
        return text
    if len(data) > MAX_BYTES:
        raise _too_big()
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                      (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if data.startswith(bom):
            raise _not_utf8(f"it is {name} (it starts with a {name} byte-order mark)")
    head = data[:64]
    if head and head.count(0) * 4 >= len(head):
        raise _not_utf8("it holds many NUL bytes, as UTF-16 or UTF-32 text does")
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _not_utf8(f"line {line}, byte {column} (0x{data[exc.start]:02x}) is not UTF-8 "
                        "(Latin-1 or Windows-1252 text?)") from None


def _format(fmt: str | None, filename: str | None, text: str) -> Literal["jsonl", "csv"]:
    if fmt is not None:
        chosen = {"jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl", "csv": "csv"}.get(str(fmt).lower())
        if chosen is None:
            raise InvalidRequestError(f"Unknown dataset format {str(fmt)[:40]!r}: use 'jsonl' or 'csv'.",
                                      param="format")
        return "jsonl" if chosen == "jsonl" else "csv"
    if filename:
        suffix = PurePath(filename).suffix.lower()
        if suffix in (".jsonl", ".json", ".ndjson"):
            return "jsonl"
        if suffix in (".csv", ".tsv"):
            return "csv"
    return "jsonl" if text.lstrip()[:1] in ("{", "[") else "csv"


def parse_dataset(data: bytes | str, *, format: Literal["jsonl", "csv"] | None = None,
                  filename: str | None = None) -> ParsedDataset:
    """Read a dataset. ``format`` None: from ``filename``'s suffix (``.jsonl``/``.json``/``.ndjson``, ``.csv``),
    else sniffed (JSON if it starts with ``{`` or ``[``). Bad lines are :class:`LineError`s; raises
    :class:`~thinktank.errors.InvalidRequestError` for whole-file problems (see the module's doc)."""
    text = _decode(data)
    if not text.strip():
        raise InvalidRequestError("The dataset is empty.", code="empty_dataset")
    if _format(format, filename, text) == "csv":
        return _parse_csv(text)
    if text.lstrip().startswith("["):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # not one JSON array: JSONL whose first line is an array (a line error)
        else:
            if isinstance(value, list):
                return items_from_json(value)
    return _parse_jsonl(text)


def _parse_jsonl(text: str) -> ParsedDataset:
    builder = _Builder()
    count = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        count += 1
        if count > MAX_ITEMS:
            raise _too_many()
        if len(line) > MAX_LINE_BYTES // 4 and len(line.encode("utf-8")) > MAX_LINE_BYTES:
            builder.error(number, f"the line is longer than {MAX_LINE_BYTES // 1024} KB")
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            builder.error(number, f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        builder.add(obj, number)
    return builder.finish()


def items_from_json(objects: Sequence[Any]) -> ParsedDataset:
    """The items of a JSON list (a request body's ``items``), validated as dataset lines (line = index + 1)."""
    if isinstance(objects, str | bytes) or not isinstance(objects, Sequence):
        raise InvalidRequestError("The items must be a list of JSON objects.", param="items")
    if len(objects) > MAX_ITEMS:
        raise _too_many()
    builder = _Builder()
    total = 0
    for index, obj in enumerate(objects):
        try:
            size = len(orjson.dumps(obj))
        except (orjson.JSONEncodeError, TypeError) as exc:
            builder.error(index + 1, _unencodable(str(exc)))
            continue
        total += size
        if total > MAX_BYTES:
            raise _too_big()
        if size > MAX_LINE_BYTES:
            builder.error(index + 1, f"the item is larger than {MAX_LINE_BYTES // 1024} KB")
            continue
        builder.add(obj, index + 1)
    return builder.finish()


_CSV_COLUMNS: Final = frozenset(_FIELDS)


def _csv_header(text: str) -> tuple[str, list[str]]:
    """The delimiter (``,``, tab or ``;``) under which the first line names a question column, and the header."""
    first = next((line for line in text.split("\n") if line.strip()), "")
    seen: list[str] = []
    for delimiter in (",", "\t", ";"):
        cells = next(csv.reader([first], delimiter=delimiter), [])
        names = [c.strip().lower().removeprefix("\ufeff") for c in cells]
        if "question" in names or "messages" in names:
            duplicates = sorted({n for n in names if n and names.count(n) > 1})
            if duplicates:
                raise InvalidRequestError(f"The CSV header names {duplicates[0]!r} twice.", code="invalid_dataset")
            return delimiter, names
        seen = seen or names
    shown = ", ".join(repr(n[:40]) for n in seen[:8])
    raise InvalidRequestError(f"The CSV header needs a 'question' (or 'messages') column; it has {shown}.",
                              code="invalid_dataset")


def _json_cell(value: str, column: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _LineProblem(f"the '{column}' cell is not valid JSON: {exc.msg} (column {exc.colno})") from None


def _parse_csv(text: str) -> ParsedDataset:
    delimiter, header = _csv_header(text)
    ignored = [n for n in header if n and n not in _CSV_COLUMNS]
    builder = _Builder()
    if ignored:
        builder.warnings.append(f"ignored CSV columns: {', '.join(repr(n[:40]) for n in ignored[:10])}")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    ended = 0  # the last line the previous row took
    header_seen = False
    count = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            builder.error(ended + 1, f"CSV: {exc}")
            ended = reader.line_num
            continue
        start, ended = ended + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if not header_seen:
            header_seen = True
            continue
        count += 1
        if count > MAX_ITEMS:
            raise _too_many()
        if len(row) > len(header):
            builder.error(start, f"the row has {len(row)} cells and the header {len(header)}")
            continue
        if sum(len(cell) for cell in row) > MAX_LINE_BYTES // 4 and \
                sum(len(cell.encode("utf-8")) for cell in row) > MAX_LINE_BYTES:
            builder.error(start, f"the row is longer than {MAX_LINE_BYTES // 1024} KB")
            continue
        cells = {name: cell for name, cell in zip(header, row, strict=False) if name in _CSV_COLUMNS}
        try:
            obj: dict[str, Any] = {k: v for k, v in cells.items() if k not in ("messages", "checks") and v.strip()}
            for column in ("messages", "checks"):
                if cells.get(column, "").strip():
                    obj[column] = _json_cell(cells[column], column)
        except _LineProblem as exc:
            builder.error(start, str(exc))
            continue
        builder.add(obj, start)
    return builder.finish()
