"""The start form of the Evaluations page: reading the posted multipart form (a dataset file or a stored
dataset, candidates, judges, checks, a cost limit) within its bounds, after its CSRF check, into the values the
page shows again on an error and the request the evaluation API takes.

Every problem is an :class:`~thinktank.errors.InvalidRequestError` with a sentence the page shows (never a 500).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from ...api.credentials import CSRF_FIELD
from ...errors import InvalidRequestError, PayloadTooLargeError
from ..session import WebUser, check_form_csrf

__all__ = [
    "MAX_CANDIDATES",
    "MAX_CHECKS_CHARS",
    "MAX_DATASET_BYTES",
    "MAX_JUDGES",
    "EvalForm",
    "Upload",
    "dataset_format",
    "read_form",
]

MAX_CANDIDATES = 8
MAX_JUDGES = 3
MAX_DATASET_BYTES = 10 * 1024 * 1024
"""The largest dataset file (the evaluation API's own limit on a dataset's text)."""
MAX_CHECKS_CHARS = 65_536
MAX_NAME = 200
_MAX_FIELDS = 400
"""Text fields a form may carry: a checkbox per model ticked, twice, and the rest."""
_MAX_PART = 128 * 1024
"""The largest text field (the checks)."""

Format = Literal["jsonl", "csv"]
_FORMATS: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


@dataclass(frozen=True)
class Upload:
    """A dataset file as the browser sent it."""

    filename: str
    data: bytes

    @property
    def format(self) -> Format | None:
        return dataset_format(self.filename)

    @property
    def name(self) -> str:
        """The dataset's default name: the file's name without its folders and extension."""
        base = self.filename.replace("\\", "/").rsplit("/", 1)[-1]
        stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
        return stem.strip()[:MAX_NAME] or "dataset"


def dataset_format(filename: str) -> Format | None:
    """``jsonl`` or ``csv`` by the file's extension; None to let the parser tell from the content."""
    lower = filename.lower()
    for ext, fmt in _FORMATS.items():
        if lower.endswith(ext):
            return fmt
    return None


@dataclass
class EvalForm:
    """What the form held: shown again as it was when the page reports a problem."""

    dataset_id: str = ""
    name: str = ""
    candidates: list[str] = field(default_factory=list)
    judges: list[str] = field(default_factory=list)
    checks: str = ""
    max_cost_usd: str = ""
    concurrency: str = "4"
    upload: Upload | None = None
    upload_error: str = ""
    """Why the file cannot be used (too large, empty): reported with the rest of the form kept."""

    def values(self) -> dict[str, Any]:
        """For the template (the file itself is never sent back)."""
        return {"dataset_id": self.dataset_id, "name": self.name, "candidates": self.candidates,
                "judges": self.judges, "checks": self.checks, "max_cost_usd": self.max_cost_usd,
                "concurrency": self.concurrency}

    def parsed_checks(self) -> list[Any]:
        """The checks for every item: a JSON list (each check is validated by the evaluation API)."""
        text = self.checks.strip()
        if not text:
            return []
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"Checks: not valid JSON ({exc.msg} at character {exc.pos}).",
                                      param="checks") from None
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
            raise InvalidRequestError(
                'Checks: give a JSON list of checks, e.g. [{"type": "contains", "value": "Paris"}].', param="checks")
        return value

    def cost_limit(self) -> float | None:
        text = self.max_cost_usd.strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            raise InvalidRequestError("Max cost: enter an amount in USD, such as 0.50.", param="max_cost_usd") from None
        if not math.isfinite(number) or number <= 0:
            raise InvalidRequestError("Max cost: enter an amount above 0 USD.", param="max_cost_usd")
        return number

    def concurrency_value(self) -> int:
        text = self.concurrency.strip() or "4"
        if not (text.isascii() and text.isdigit() and len(text) <= 3) or not 1 <= int(text) <= 32:
            raise InvalidRequestError("Answers at a time: a whole number from 1 to 32.", param="concurrency")
        return int(text)

    def check_choices(self) -> None:
        """The choices the page can judge on its own (the models themselves are checked by the API: 400)."""
        if self.upload_error:
            raise InvalidRequestError(self.upload_error, param="file")
        if len(self.checks) > MAX_CHECKS_CHARS:
            raise InvalidRequestError(f"Checks: at most {MAX_CHECKS_CHARS:,} characters.", param="checks")
        if self.upload is None and not self.dataset_id:
            raise InvalidRequestError("Upload a dataset file or choose a stored dataset.", param="file")
        if not self.candidates:
            raise InvalidRequestError("Choose at least one candidate.", param="candidate")
        if len(self.candidates) > MAX_CANDIDATES:
            raise InvalidRequestError(f"Choose at most {MAX_CANDIDATES} candidates (you chose {len(self.candidates)}).",
                                      param="candidate")
        if len(self.judges) > MAX_JUDGES:
            raise InvalidRequestError(f"Choose at most {MAX_JUDGES} judges (you chose {len(self.judges)}).",
                                      param="judge")


def _text(value: object, limit: int = 1000) -> str:
    return value.strip()[:limit] if isinstance(value, str) else ""


def _names(values: list[Any]) -> list[str]:
    """Ticked model names, each once, in the page's order."""
    return list(dict.fromkeys(v.strip() for v in values if isinstance(v, str) and v.strip() and len(v) <= 300))


async def read_form(request: Request, user: WebUser) -> EvalForm:
    """The posted start form (multipart with a file, or url-encoded without one), its CSRF token checked."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_DATASET_BYTES + _MAX_FIELDS * 1024:
        raise PayloadTooLargeError(f"The dataset file is too large: at most {MAX_DATASET_BYTES // (1024 * 1024)} MB.")
    try:
        async with request.form(max_files=1, max_fields=_MAX_FIELDS, max_part_size=_MAX_PART) as form:
            check_form_csrf(request, user, form.get(CSRF_FIELD))
            values = EvalForm(
                dataset_id=_text(form.get("dataset_id"), 200), name=_text(form.get("name"), MAX_NAME),
                candidates=_names(form.getlist("candidate")), judges=_names(form.getlist("judge")),
                checks=_text(form.get("checks"), MAX_CHECKS_CHARS + 1),
                max_cost_usd=_text(form.get("max_cost_usd"), 40),
                concurrency=_text(form.get("concurrency"), 10) or "4",
            )
            upload = form.get("file")
            if isinstance(upload, UploadFile) and upload.filename:
                known_too_large = upload.size is not None and upload.size > MAX_DATASET_BYTES
                data = b"" if known_too_large else await upload.read(MAX_DATASET_BYTES + 1)
                if known_too_large or len(data) > MAX_DATASET_BYTES:
                    values.upload_error = f"The dataset file is larger than {MAX_DATASET_BYTES:,} bytes."
                elif not data.strip():
                    values.upload_error = f"The file {upload.filename[:300]!r} is empty."
                else:
                    values.upload = Upload(filename=upload.filename[:300], data=data)
    except MultiPartException as exc:
        raise InvalidRequestError(f"The form could not be read: {exc.message}") from None
    return values
