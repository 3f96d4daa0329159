"""Documents as a client sends them to ``POST /api/v1/knowledge-bases/{kb}/documents``: multipart files or
a JSON list, read into sources to ingest. Every name is made a safe relative path and every bound is
checked before anything is read into memory or ingested; an oversized file becomes its own 413 result.
Nothing here touches the file system."""

from __future__ import annotations

import unicodedata
from typing import Any

import orjson
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from ..errors import InvalidRequestError, UnsupportedMediaTypeError
from ..knowledge.ingest import IngestResult, Source
from ..knowledge.parsers import Limits

__all__ = ["MAX_FILE_BYTES", "DocumentsIn", "Item", "Scalar", "metadata_of", "read_items", "source_name"]

MAX_FILE_BYTES = Limits().max_inflated_bytes
"""The largest single document: the most bytes the parsers will read out of one file."""
_MAX_FILES = 1000
_MAX_METADATA = 64 * 1024
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

Scalar = str | int | float | bool


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DocumentIn(_In):
    name: str
    text: str
    content_type: str | None = None
    title: str | None = Field(default=None, max_length=500)
    metadata: dict[str, Scalar] | None = None


class DocumentsIn(_In):
    documents: list[DocumentIn] = Field(min_length=1, max_length=_MAX_FILES)


def source_name(raw: str | None) -> str:
    """A client's file name as a document's source: a relative path (``/`` or ``\\`` between folders),
    so ``a/README.md`` and ``b/README.md`` of one folder stay two documents. ``.``, empty parts and a
    leading ``/`` are dropped and ``..`` only ever removes the folder before it (``../x.txt`` is
    ``x.txt``). 400 for a name that names no file (empty, ``..``, ending in a separator), one with
    control characters, or one too long. It never touches the file system."""
    if raw is None or not raw.strip():
        raise InvalidRequestError("Every file needs a name.", param="files")
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI for ch in raw):
        raise InvalidRequestError(f"The file name {raw!r} holds control characters.", param="files")
    parts: list[str] = []
    for part in (p.strip() for p in raw.replace("\\", "/").split("/")):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    base = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if base in ("", ".", "..") or not parts:
        raise InvalidRequestError(f"The file name {raw!r} names no file.", param="files")
    if len(parts[-1]) > 255 or len("/".join(parts)) > 1000:
        raise InvalidRequestError("A file name is at most 255 characters, its path at most 1,000.", param="files")
    return "/".join(parts)


def metadata_of(value: dict[str, Any] | None, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > 100 or any(not isinstance(k, str) or len(k) > 100 for k in value):
        raise InvalidRequestError(f"{where}: at most 100 keys of at most 100 characters.", param="metadata")
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, str | int | float):
            out[k] = str(v)[:2000]
        else:
            raise InvalidRequestError(f"{where}: '{k}' must be a string, number or boolean.", param="metadata")
    return out


def _too_large(name: str, size: int) -> IngestResult:
    return IngestResult(name, "failed", error=f"The file is {size:,} bytes, more than the {MAX_FILE_BYTES:,} "
                        "allowed for one document.", status_code=413)


Item = Source | IngestResult
"""A source to ingest, or the result it already has (refused before ingestion)."""


async def _read_multipart(request: Request) -> list[Item]:
    items: list[Item] = []
    async with request.form(max_files=_MAX_FILES, max_fields=10, max_part_size=_MAX_METADATA) as form:
        unknown = sorted({k for k in form if k not in ("files", "metadata")})
        if unknown:
            raise InvalidRequestError(f"Unknown form fields: {', '.join(unknown)}; send 'files' and 'metadata'.",
                                      param=unknown[0])
        raw_meta = form.getlist("metadata")
        if len(raw_meta) > 1 or (raw_meta and not isinstance(raw_meta[0], str)):
            raise InvalidRequestError("'metadata' is one JSON object.", param="metadata")
        metadata = None
        if raw_meta:
            try:
                parsed = orjson.loads(str(raw_meta[0]))
            except orjson.JSONDecodeError:
                raise InvalidRequestError("'metadata' is not valid JSON.", param="metadata") from None
            if not isinstance(parsed, dict):
                raise InvalidRequestError("'metadata' must be a JSON object.", param="metadata")
            metadata = metadata_of(parsed, "metadata")
        uploads = form.getlist("files")
        if not uploads:
            raise InvalidRequestError("Send one or more files as 'files' parts.", param="files")
        named: list[tuple[str, UploadFile]] = []
        for upload in uploads:  # every name is checked before anything is read or ingested
            if not isinstance(upload, UploadFile):
                raise InvalidRequestError("Each 'files' part must be a file (with a filename).", param="files")
            named.append((source_name(upload.filename), upload))
        for name, upload in named:
            if upload.size is not None and upload.size > MAX_FILE_BYTES:
                items.append(_too_large(name, upload.size))
                continue
            data = await upload.read()
            items.append(Source(name=name, data=data, content_type=upload.content_type, metadata=metadata))
    return items


async def _read_json(request: Request) -> list[Item]:
    try:
        body = DocumentsIn.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "body"
        raise InvalidRequestError(f"{where}: {first.get('msg')}", param=where) from None
    names = [source_name(d.name) for d in body.documents]
    items: list[Item] = []
    for name, doc in zip(names, body.documents, strict=True):
        data = doc.text.encode("utf-8")
        if len(data) > MAX_FILE_BYTES:
            items.append(_too_large(name, len(data)))
            continue
        items.append(Source(name=name, data=data, content_type=doc.content_type or "text/plain", title=doc.title,
                            metadata=metadata_of(doc.metadata, f"documents.{name}.metadata")))
    return items


async def read_items(request: Request) -> list[Item]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_multipart(request)
    if content_type == "application/json":
        return await _read_json(request)
    raise UnsupportedMediaTypeError("Send documents as multipart/form-data ('files' parts) or as application/json "
                                    '({"documents": [{"name": ..., "text": ...}]}).')
