"""Log formats for ``thinktank serve`` (its workers too): text (the default) or one JSON object a line.

Both put the id of the request being handled on every line (``request_id``) and mask anything shaped like a
secret that reached a message or a traceback (bearer tokens, keys, credentials in URLs): a last line of
defence, since nothing logs a key on purpose. No prompt or answer is logged unless ``log_content`` is on.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from .request_ids import CURRENT

__all__ = ["JsonFormatter", "RequestIdFilter", "TextFormatter", "logging_config", "redact"]

_SECRETS = (
    (re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s@:]*:[^/\s@]*@", re.IGNORECASE), r"\1***@"),
    (re.compile(r"\b(bearer|basic)\s+[^\s\"',;]+", re.IGNORECASE), r"\1 ***"),
    (re.compile(r"\b((?:x-)?api[-_]?key|access_token|secret|password|authorization)(\s*[=:]\s*)[\"']?[^\s\"'&,;]+",
                re.IGNORECASE), r"\1\2***"),
    (re.compile(r"([?&](?:key|api_key|token|access_token|sig|signature)=)[^&\s\"']+", re.IGNORECASE), r"\1***"),
    (re.compile(r"\b(?:sk|pk|rk|tt|xai|gsk|hf)[-_][A-Za-z0-9_\-]{8,}"), "***"),
    (re.compile(r"\bAIza[A-Za-z0-9_\-]{10,}"), "***"),
)


def redact(text: str) -> str:
    """``text`` with anything shaped like a secret masked (its length and lines otherwise kept)."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id``: the id of the request being handled, or ``-``."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = CURRENT.get()
        record.request_id = "-" if rid is None else rid.value
        return True


class TextFormatter(logging.Formatter):
    """``2025-01-01 12:00:00,000 INFO thinktank [req-…]: message``, secrets masked."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        return redact(super().format(record))


#: LogRecord attributes that are not "extra" fields.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime",
                                                                                  "request_id", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``request_id`` (when
    handling one), ``exception`` (a traceback), and any ``extra={...}`` fields; secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": redact(record.getMessage()),
        }
        rid = getattr(record, "request_id", None)
        if rid is None:
            current = CURRENT.get()
            rid = None if current is None else current.value
        if rid is not None and rid != "-":
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(out, default=str).decode()


QUIET = {"aiosqlite": "INFO"}
"""Libraries whose debug lines hold what thinktank never logs (aiosqlite's: every statement with its parameters,
so the prompts and answers written): no lower than this, whatever the level."""
TERSE = {"procrastinate": "WARNING"}
"""Libraries that say too much at info (the job queue: two lines for every job, periodic ticks every second
included): no lower than this, unless the level is debug."""


def logging_config(level: str, fmt: Literal["text", "json"], *, content: bool = False) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the server and uvicorn (its ``log_config``, so that each worker
    process applies it too): one stderr handler in ``fmt`` on the root logger, which uvicorn's loggers
    propagate to. ``content``: let libraries that log what is stored (statements' parameters) do so at debug."""
    formatter = "thinktank.observability.logs.JsonFormatter" if fmt == "json" else \
        "thinktank.observability.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "thinktank.observability.logs.RequestIdFilter"}},
        "formatters": {"thinktank": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "thinktank", "filters": ["request_id"]}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.access": {"level": level.upper(), "handlers": [], "propagate": True},
            **({} if content else {name: {"level": _higher(level, floor), "handlers": [], "propagate": True}
                                   for name, floor in QUIET.items()}),
            **({} if level.upper() == "DEBUG" else {
                name: {"level": _higher(level, floor), "handlers": [], "propagate": True}
                for name, floor in TERSE.items()}),
        },
    }


def _higher(level: str, floor: str) -> str:
    return max(level.upper(), floor, key=logging.getLevelName)
