"""An agent for the page tests (here and in tests/e2e): ``agent/clock`` thinks with a scripted mock model and
calls the built-in ``current_time``, which needs a person's approval.

The model, by what its prompt holds (the first rule that matches answers):

- a denial with a reason: an answer quoting the reason (so a test sees the model read it);
- a question about the time, before any tool result or denial: a call of ``current_time`` in UTC;
- ``hostile``, before any tool error: a call whose arguments hold markup (shown as text, never run);
- ``two clocks``: a call in UTC, then (once it has that result) another in Tokyo: two approvals in one run;
- the tool's result: an answer in Markdown quoting it.
"""

from __future__ import annotations

from typing import Any

from thinktank.config import GatewayConfig
from thinktank.discovery import demo_config, merge

AGENT = "agent/clock"
MODEL = "demo/clockwork"
HOSTILE_ZONE = "<img src=x onerror=alert(1)><script>alert(2)</script>"
"""Arguments the model proposes for 'hostile' (within the tool's 64 characters, so the call waits)."""

RULES: list[dict[str, Any]] = [
    {"match": r"user denied this call: (?P<why>[^\n]*?)\. Do not", "template": True,
     "reply": "I did not look at the clock, because you said: \"\\g<why>\"."},
    {"match": r"user denied this call\. Do not", "reply": "I did not look at the clock."},
    {"match": r"^(?!.*(?:tool_result tool=|user denied this call)).*what time", "reply": "Let me look at the clock.",
     "tool_calls": [{"name": "current_time", "arguments": {"timezone": "UTC"}}]},
    {"match": r"^(?!.*(?:Tool error|user denied this call)).*hostile",
     "tool_calls": [{"name": "current_time", "arguments": {"timezone": HOSTILE_ZONE}}]},
    {"match": r"^(?!.*tool_result tool=).*two clocks",
     "tool_calls": [{"name": "current_time", "arguments": {"timezone": "UTC"}}]},
    {"match": r"two clocks(?=.*tool_result tool=)(?!(?:.*tool_result tool=){2})",
     "tool_calls": [{"name": "current_time", "arguments": {"timezone": "Asia/Tokyo"}}]},
    {"match": r'<tool_result tool="current_time">\s*(?P<now>[^\n]+)', "template": True,
     "reply": " It is **\\g<now>** now."},
]


def agent_section() -> dict[str, Any]:
    """The model and the agent, as a config file's YAML would give them."""
    return {
        "models": [{"name": MODEL, "provider": "mock", "model": MODEL, "description": "MOCK: the clock agent's mind",
                    "options": {"rules": RULES}}],
        "agents": [{"name": "clock", "model": MODEL, "description": "MOCK: tells the time, once you approve",
                    "tools": [{"name": "current_time", "approval": "required"}]}],
    }


def agent_config() -> GatewayConfig:
    """The offline demo with the clock agent."""
    return merge(GatewayConfig.model_validate(agent_section()), demo_config())
