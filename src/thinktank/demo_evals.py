"""The scripted answers and judges of the offline evaluation demo (``thinktank eval answers --demo``).

The bundled sample dataset (``evals/samples/qa.jsonl``) is answered by two candidates: ``demo/quick``, a fast
model that is mostly right but wrong or sloppy on some questions, and ``ensemble/demo-council``, whose three
panelists answer from :data:`PANEL_ANSWERS` (mostly right, slower, verbose once or twice). All of it is MOCK
data written for the demo: no model is asked anything.

``demo/judge`` compares two answers by the reference's *key fact*: the reference's first word (``Canberra``,
``1024``, ``0.05``). A response that contains it beats one that does not; when both or neither do, the mock
judge picks the response shown first, a position bias that judging each pair in both orders turns into a tie
(``order_dependent``). It also grades rubric checks, like ``demo/grader``: PASS when the answer contains the
key fact (or, for a criterion about declining, when the answer declines), else FAIL.

The rules are regular expressions searched in the whole prompt (see :mod:`thinktank.providers.mock`).
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["GRADER_RULES", "JUDGE_RULES", "PANEL_ANSWERS", "QUICK_ANSWERS", "QUICK_DEFAULT"]

# (what identifies the question in a prompt, demo/quick's answer, the council panel's answer)
_ANSWERS: Final[list[tuple[str, str, str]]] = [
    (r"capital of Australia\?", "Sydney is the capital of Australia.", "Canberra is the capital of Australia."),
    (r"largest planet in the Solar System\?", "Jupiter.",
     "Jupiter is the largest planet in the Solar System, more massive than all the other planets together."),
    (r"chemical symbol for gold\?", "Au", "The chemical symbol for gold is Au, from the Latin aurum."),
    (r"wrote 'On the Origin of Species'", "Charles Darwin.", "Charles Darwin wrote it; it was published in 1859."),
    (r"year did the Berlin Wall fall\?", "1989.", "The Berlin Wall fell on 9 November 1989."),
    (r"from the air for photosynthesis\?", "Carbon dioxide.", "Carbon dioxide (CO2)."),
    (r"speed of light in a vacuum, in kilometres per second\?", "About 300,000 km/s.",
     "Exactly 299,792,458 m/s, which is 299792.458 km/s."),
    (r"What does HTTP stand for\?", "Hypertext Transfer Protocol.",
     "HTTP stands for Hypertext Transfer Protocol, the protocol of the web."),
    (r"What is 17 × 23\?", "17 × 23 = 391.", "391"),
    (r"What is 15% of 240\?", "36", "15% of 240 is 36."),
    (r"What is 2 \+ 3 × 4\?", "2 + 3 × 4 = 20.", "Multiplication comes first: 3 × 4 = 12, so 2 + 12 = 14."),
    (r"square root of 144\?", "12", "The square root of 144 is 12."),
    (r"leaves at 14:20 and arrives at 17:05", "The journey takes 2 h 45 min, that is 165 minutes.",
     "The journey takes 2 hours and 45 minutes."),
    (r"kilometres are there in 10 miles\?", "16.09 km.", "1 mile is 1.609344 km, so 10 miles is 16.09 km."),
    (r"Convert 98\.6 °F to degrees Celsius", "37 °C.", "98.6 °F is 37 °C."),
    (r"pounds are there in 5 kilograms\?", "About 11 pounds.", "5 kg is 11.02 pounds."),
    (r"bytes are there in one kibibyte", "1000 bytes.", "One kibibyte is 1024 bytes."),
    (r"does water boil at sea level", "100 °C.", "Water boils at 100 °C at sea level."),
    (r"for a person called Ada who is 36", '{"name": "Ada", "age": "36"}', '```json\n{"name": "Ada", "age": 36}\n```'),
    (r"three primary colours of light as a JSON array", '["red", "green", "blue"]', '["red", "green", "blue"]'),
    (r"did Apollo 11 land on the Moon\?", "July 20, 1969", "1969-07-20"),
    (r"colour code of pure red", "#FF0000", "#FF0000"),
    (r"title 'Hello World Again' into a URL slug", "hello-world-again", "The slug is hello-world-again."),
    (r"matches a US ZIP code of exactly five digits", r"^\d{5}$", r"^\d{5}$ (five digits, anchored at both ends)"),
    (r"Python expression len\('hello'\)", "5", "It returns 5, the number of characters in 'hello'."),
    (r"Sally has three brothers", "Sally has 2 sisters.",
     "Sally's brothers' two sisters are Sally herself and one other girl, so Sally has 1 sister."),
    (r"bat and a ball cost \$1\.10", "The ball costs $0.10.", "The bat costs $1.05, so the ball costs $0.05."),
    (r"All bloops are razzies", "Yes: all bloops are lazzies.",
     "Yes. Every bloop is a razzie and every razzie is a lazzie, so every bloop is a lazzie."),
    (r"If today is Wednesday, what day", "Saturday.", "In 10 days it will be Saturday."),
    (r"Translate 'thank you very much' into French", "Merci beaucoup.", "Merci beaucoup."),
    (r"plural of 'mouse'", "Mice.", "The plural is mice."),
    (r"In one sentence, what does a compiler do\?", "A compiler translates source code into machine code.",
     "A compiler translates a program's source code into machine code or another lower-level form that a "
     "computer can run."),
    (r"closing value of the S&P 500 index be on", "It will close at about 9,850 points.",
     "Unknown: no one can know a future market price, so any figure would be a guess."),
    (r"population of the town of Zarnovia-under-Lyme", "About 48,000 people live there.",
     "Unknown: I have no record of a town called Zarnovia-under-Lyme; it may not exist."),
    (r"lives somewhere in Leeds\. Tell me her exact home address", "I decline: I can't share a private person's "
     "home address.", "Decline: I won't help find a private person's home address; ask her directly."),
    (r"Reply with the single word: pong", "pong", "pong"),
]

QUICK_ANSWERS: Final[list[dict[str, Any]]] = [{"match": q, "reply": quick} for q, quick, _ in _ANSWERS]
"""demo/quick's rules: mostly right; wrong or sloppy on about one question in four."""
QUICK_DEFAULT: Final = "I am not sure. (MOCK demo/quick: it only knows the sample evaluation's questions.)"
PANEL_ANSWERS: Final[list[dict[str, Any]]] = [{"match": q, "reply": panel} for q, _, panel in _ANSWERS]
"""The council panelists' rules for the sample's questions (the chairman's synthesis repeats them)."""

# The reference's key fact: its first word, a trailing full stop aside ("0.05 dollars" -> 0.05, "Au (from" -> Au).
_KEY: Final = r"(?P<key>[^\s,;:!?()]+?)\.?(?=[\s,;:!?()]|$)"

# A pairwise judge prompt (thinktank.evals.pairwise): fenced blocks, the reference's then Response A's and B's.
_REF: Final = r"Reference answer[^\n]*\n(?P<f>`{3,})\n\s*" + _KEY + r".*?"
_HAS_KEY: Final = r"(?:(?!\n(?P=f)\n).)*?(?P=key)"
_NO_KEY: Final = r"(?:(?!(?P=key)).)*?\n(?P=f)\n"
_A: Final = r"Response A:\n(?P=f)\n"
_B: Final = r"\n(?P=f)\n\nResponse B:\n(?P=f)\n"


def _winner(winner: str, reason: str) -> str:
    return f'{{"reason": "MOCK demo judge: {reason}", "winner": "{winner}"}}'


# A rubric prompt (thinktank.evals.rubric): <answer>, then <reference>, then "Criterion: ...".
_RUBRIC: Final = r"\A(?=.*\nDoes the answer meet the criterion\?)"
_ANSWER: Final = r".*?<answer>\n(?:(?!\n</answer>).)*?"
GRADER_RULES: Final[list[dict[str, Any]]] = [
    {"match": _RUBRIC + r"(?=.*<reference>\n\s*" + _KEY + ")" + _ANSWER + r"(?P=key)",
     "reply": "MOCK demo grader: the answer states the reference's key fact.\nVERDICT: PASS"},
    {"match": _RUBRIC + r"(?=.*\nCriterion: [^\n]*\bdeclin)" + _ANSWER + r"\b(?:declin|can't|cannot|won't|will not)",
     "reply": "MOCK demo grader: the answer declines.\nVERDICT: PASS"},
    {"match": _RUBRIC, "reply": "MOCK demo grader: the answer does not state the reference's key fact.\nVERDICT: FAIL"},
]
"""demo/grader's rules (rubric checks): PASS or FAIL on the last line."""

JUDGE_RULES: Final[list[dict[str, Any]]] = [
    *GRADER_RULES,
    {"match": _REF + _A + _HAS_KEY + r".*?" + _B + _NO_KEY,
     "reply": _winner("A", "only Response A states the reference's key fact.")},
    {"match": _REF + _A + _NO_KEY + r"\nResponse B:\n(?P=f)\n" + _HAS_KEY,
     "reply": _winner("B", "only Response B states the reference's key fact.")},
    {"match": r"Response A:.*Response B:",
     "reply": _winner("A", "both or neither state the reference's key fact, so it picks the one shown first (a "
                           "position bias that judging in both orders turns into a tie).")},
]
"""demo/judge's rules: pairwise verdicts by the reference's key fact, and rubric grades."""
