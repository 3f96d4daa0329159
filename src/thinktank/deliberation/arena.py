"""Blind arenas: which model wrote which answer stays hidden until the user votes (in the record, the
configuration's model fields, error messages and events)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .runs import Event

__all__ = ["hide", "redact", "secret_names"]

_MODEL_KEYS = ("members", "judge", "judges", "chairman")
"""The configuration fields of an ensemble that name models."""


def secret_names(record: dict[str, Any]) -> list[str]:
    """Every model name a blind arena's record could give away (longest first, for :func:`_scrub`)."""
    result = record.get("result") or {}
    config = record.get("config") or {}
    names = [str(x.get("model")) for key in ("answers", "failed") for x in result.get(key) or [] if x.get("model")]
    for key in _MODEL_KEYS:
        value = config.get(key)
        names += [value] if isinstance(value, str) else [str(v) for v in value or [] if isinstance(v, str)]
    return sorted({n for n in names if n and n != "hidden"}, key=len, reverse=True)


def _scrub(text: Any, names: Sequence[str]) -> Any:
    """``text`` with every name in ``names`` replaced (an error message may name the model that failed)."""
    if not isinstance(text, str):
        return text
    for name in names:
        text = text.replace(name, "a model")
    return text


def redact(record: dict[str, Any]) -> dict[str, Any]:
    """A blind arena run before the vote: which model wrote which answer stays hidden (also in the
    configuration's model fields and in error messages)."""
    result = record.get("result") or {}
    arena = result.get("arena") or (record.get("request") or {}).get("arena")  # also a run still answering
    if not arena or result.get("revealed"):
        return record
    names = secret_names(record)
    out = dict(record)
    if result:
        out["result"] = {**result, "answers": [{k: v for k, v in a.items() if k != "model"}
                                               for a in result.get("answers", [])],
                         "failed": [{k: _scrub(v, names) for k, v in f.items() if k != "model"}
                                    for f in result.get("failed", [])]}
    out["calls"] = [
        {**c, "model": "hidden", "deployment": None, "error": _scrub(c.get("error"), names)}
        if c.get("stage") == "answer" else c
        for c in record.get("calls", [])
    ]
    config = dict(record.get("config", {}))
    for key in _MODEL_KEYS:
        if key in config:
            config[key] = "hidden until you vote"
    out["config"] = config
    out["error"] = _scrub(record.get("error"), names)
    return out


def hide(event: Event, names: Sequence[str]) -> Event:
    data = {k: _scrub(v, names) for k, v in event.data.items() if k != "model"}
    return event if data == event.data else Event(event.seq, event.ts, event.type, data)
