"""An agent run's checkpoint: everything needed to go on from the last completed step.

It is written with the run's events after every model call and every tool result (one transaction), so a
run resumed elsewhere neither repeats nor pays again for what it finished: the conversation so far (with
the tool calls and their results), the steps taken, the text answered so far, the tool calls of the last
step with their results or the decision they wait for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = ["AgentState", "PendingCall"]

Decision = Literal["approved", "denied"]


@dataclass
class PendingCall:
    """One tool call the model asked for in the last step."""

    id: str
    name: str
    """The function name the model used."""
    raw_arguments: str
    qualified: str | None = None
    """The tool it names (``knowledge_search``, ``git.git_log``); None for an unknown name."""
    arguments: dict[str, Any] | None = None
    """The parsed arguments (None when they did not parse: the model is told)."""
    problem: str | None = None
    """Why the call cannot run as asked (unknown tool, arguments that are not JSON or not valid)."""
    needs_approval: bool = False
    decision: Decision | None = None
    reason: str | None = None
    """A denial's reason, which the model sees."""
    decided_by: str | None = None
    result: str | None = None
    """What the model reads back (set once the call ran, failed or was denied)."""
    is_error: bool = False

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def waiting(self) -> bool:
        """It waits for a person's decision."""
        return not self.done and self.problem is None and self.needs_approval and self.decision is None

    def public(self) -> dict[str, Any]:
        """As the run's events and the approval card show it."""
        return {"id": self.id, "tool": self.qualified or self.name, "arguments": self.arguments,
                "needs_approval": self.needs_approval, "decision": self.decision}


@dataclass
class AgentState:
    messages: list[dict[str, Any]]
    """The conversation in OpenAI's format: system, user, assistant (with ``tool_calls``), tool."""
    steps: int = 0
    """Model calls completed."""
    answer: list[str] = field(default_factory=list)
    """The text the model has written so far (streamed to the client as it came)."""
    pending: list[PendingCall] = field(default_factory=list)
    citations: list[dict[str, Any]] = field(default_factory=list)
    """Passages the tools returned (``knowledge_search``), carried into the answer."""
    elapsed: float = 0.0
    """Seconds of work before the current execution began (time paused does not count)."""
    approval_deadline: float | None = None
    """While paused: when undecided calls are denied (Unix time)."""
    warnings: list[str] = field(default_factory=list)
    """Tool sources that could not be reached (an MCP server down), as the run reported them."""
    from_request: bool = False
    """The request described or changed the agent: the configuration's approvals hold over its own."""

    def waiting(self) -> list[PendingCall]:
        return [c for c in self.pending if c.waiting]

    def dumps(self) -> str:
        return orjson.dumps(self).decode()  # orjson writes dataclasses itself (asdict's deep copy is slow)

    @classmethod
    def loads(cls, raw: str | bytes | dict[str, Any]) -> AgentState:
        data = orjson.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
        pending = [PendingCall(**c) for c in data.pop("pending", [])]
        return cls(pending=pending, **data)

    def result(self, *, status: str = "completed") -> dict[str, Any]:
        """The run's result: the answer, the citations, the steps taken."""
        return {"answer": "".join(self.answer), "citations": self.citations, "steps": self.steps,
                **({"stopped": status} if status != "completed" else {}),
                **({"warnings": self.warnings} if self.warnings else {})}
