"""What an alert says: a JSON payload (the webhook's body) and a line of text (a mail's subject).

Only what identifies a budget or a deployment without being secret goes in: a budget's scope, its owner's id
and its label (a key's name and public prefix, a user's email, a team's name, "the global daily cap"), the
numbers, the period; a deployment's id, its cooldown and its failures in a row. Never a key, a prompt or an
upstream's error text.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..accounts.budget_backends import BudgetSpec

__all__ = ["Alert", "budget_alert", "cooldown_alert"]

_PERIODS = {"day": "daily", "month": "monthly", "total": "lifetime"}


@dataclass(frozen=True)
class Alert:
    kind: str
    """``budget_threshold`` or ``deployment_cooldown``."""
    payload: dict[str, Any]
    """The JSON body (it holds ``id``, ``kind``, ``timestamp`` and ``message`` too)."""
    summary: str
    """One line: a mail's subject, a log line."""

    @property
    def id(self) -> str:
        return str(self.payload["id"])


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _new_id() -> str:
    """The same for every attempt at delivering one alert: a receiver can drop a repeat."""
    return "alt_" + secrets.token_hex(8)


def budget_alert(
    spec: BudgetSpec, period_key: str, threshold: float, spent: float, now: float, *, refused: bool = False,
) -> Alert:
    """``refused``: the threshold (the last one) is told because the budget refused a request, its spend not
    having reached it: what is left is less than a request needs."""
    limit = spec.limit_usd or 0.0
    percent = f"{threshold * 100:g}%"
    why = f"refusing requests, {percent} reached in effect" if refused else f"crossed {percent}"
    summary = f"{spec.label} has spent ${spent:.2f} of its {_PERIODS[spec.period]} budget of ${limit:.2f} ({why})"
    payload: dict[str, Any] = {
        "id": _new_id(), "kind": "budget_threshold", "timestamp": _iso(now),
        "scope": spec.scope, "scope_id": spec.scope_id, "name": spec.label,
        "threshold": threshold, "spent_usd": round(spent, 6), "limit_usd": limit,
        "period": spec.period, "period_key": period_key, "refused": refused, "message": summary,
    }
    return Alert("budget_threshold", payload, summary)


def cooldown_alert(deployment: str, seconds: float, failures: int, now: float) -> Alert:
    summary = (f"deployment '{deployment}' is cooling down for {seconds:g}s after {failures} failures in a row")
    payload: dict[str, Any] = {
        "id": _new_id(), "kind": "deployment_cooldown", "timestamp": _iso(now),
        "deployment": deployment, "seconds": seconds, "failures": failures, "message": summary,
    }
    return Alert("deployment_cooldown", payload, summary)
