"""Conversation memory: threads with their messages and rolling summaries, personas, and a learned
profile of each user (facts, interests, preferences) that later prompts draw on."""

from __future__ import annotations

__all__: list[str] = []
