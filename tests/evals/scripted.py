"""Scripted judges for the pairwise and statistics tests: real async functions over the prompt text they are sent.

A judge reads the two responses out of the prompt's fences (as a model would see them) and decides by their
content, never by anything else; every call is recorded.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from thinktank.errors import UpstreamServerError
from thinktank.evals.dataset import EvalItem
from thinktank.types import Message, message_text

_BLOCK = re.compile(r"^(?P<title>[^\n]*):\n(?P<fence>`{3,})\n(?P<body>.*?)\n(?P=fence)$", re.MULTILINE | re.DOTALL)


def blocks(messages: list[Message]) -> dict[str, str]:
    """The fenced blocks of the first user message (the judging prompt), by title: "Question", "Response A", ..."""
    prompt = next(message_text(m) for m in messages if m.role == "user")
    return {match["title"].split(" (")[0]: match["body"] for match in _BLOCK.finditer(prompt)}


def winner(label: str, reason: str = "it is better") -> str:
    return json.dumps({"reason": reason, "winner": label})


Decide = Callable[[str, str, str], str]  # (question, response A, response B) -> the judge's reply


@dataclass
class Judge:
    """An async judge function (``ask``) with a record of the calls it got."""

    decide: Decide
    calls: list[tuple[str, list[Message]]] = field(default_factory=list)

    async def __call__(self, judge: str, messages: list[Message]) -> str:
        self.calls.append((judge, messages))
        shown = blocks(messages)
        return self.decide(shown["Question"], shown["Response A"], shown["Response B"])


def first_position() -> Judge:
    """Always prefers whatever is shown first."""
    return Judge(lambda question, a, b: winner("A", "the first one is better"))


def prefers(marker: str) -> Judge:
    """Prefers the response containing ``marker`` (a tie when both or neither do)."""

    def decide(question: str, a: str, b: str) -> str:
        if (marker in a) == (marker in b):
            return winner("tie")
        return winner("A" if marker in a else "B")

    return Judge(decide)


def coin(first: str, second: str, seed: int = 0) -> Judge:
    """Per question a fair coin (seeded by the question) says which of the responses containing ``first`` or
    ``second`` it prefers, the same in both orders: no real preference between the two candidates."""

    def decide(question: str, a: str, b: str) -> str:
        preferred = first if random.Random(f"{seed}:{question}").random() < 0.5 else second
        return winner("A" if preferred in a else "B")

    return Judge(decide)


def mostly(marker: str, share: float, seed: int = 0) -> Judge:
    """Prefers the response containing ``marker`` on a ``share`` of the questions (seeded by the question), and
    calls the others a tie."""

    def decide(question: str, a: str, b: str) -> str:
        if random.Random(f"{seed}:{question}").random() >= share:
            return winner("tie")
        return winner("A" if marker in a else "B")

    return Judge(decide)


@dataclass
class Unreadable(Judge):
    """Replies nonsense to a first request; after being told its reply could not be read (``retry_ok``), the
    wrapped judge's answer, or nonsense again."""

    retry_ok: bool = True

    async def __call__(self, judge: str, messages: list[Message]) -> str:
        self.calls.append((judge, messages))
        if self.retry_ok and any(m.role == "assistant" for m in messages):
            shown = blocks(messages)
            return self.decide(shown["Question"], shown["Response A"], shown["Response B"])
        return "Both responses have their merits; it is hard to say."


@dataclass
class Failing(Judge):
    """Every call fails as an upstream server error would."""

    async def __call__(self, judge: str, messages: list[Message]) -> str:
        self.calls.append((judge, messages))
        raise UpstreamServerError("upstream answered 500", deployment=judge, upstream_status=500)


def item(index: int, reference: str | None = None) -> EvalItem:
    return EvalItem(id=f"q{index}", messages=[Message(role="user", content=f"Question number {index}: why?")],
                    reference=reference)
