"""Scripted models and a small dataset for the Evaluations pages' tests (the in-process pages and the browser):
two candidates, one answering well (every good answer ends ``(checked)``) and one weaker, and a judge that
prefers the response marked ``(checked)`` in either position, so its verdicts do not depend on the order.

The dataset has one malformed line (line 3) and an item whose good answer is hostile markup."""

from __future__ import annotations

from typing import Any

from thinktank.config import GatewayConfig
from thinktank.discovery import demo_config, merge

GOOD = "evalweb/good"
WEAK = "evalweb/weak"
JUDGE = "evalweb/judge"
HOSTILE = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1"><b onmouseover=window.__xss=1>bold</b>'

_GOOD_RULES = [
    {"match": r"capital of France", "reply": "Paris (checked)"},
    {"match": r"capital of Germany", "reply": "Berlin (checked)"},
    {"match": r"2 \+ 2", "reply": "It is 4 (checked)"},
    {"match": r"show the markup", "reply": f"Here is the markup:\n{HOSTILE}\n(checked)"},
    {"match": r"colour of the sky", "reply": "Blue (checked)"},
]
_WEAK_RULES = [
    {"match": r"capital of France", "reply": "Paris, I believe"},
    {"match": r"capital of Germany", "reply": "Munich"},
    {"match": r"2 \+ 2", "reply": "It is 5"},
    {"match": r"show the markup", "reply": "No."},
    {"match": r"colour of the sky", "reply": "Blue"},
]
_JUDGE_RULES = [
    {"match": r"Response A:\s*`{3,}[^`]*\(checked\)", "reply": '{"reason": "A is checked", "winner": "A"}'},
    {"match": r"Response B:\s*`{3,}[^`]*\(checked\)", "reply": '{"reason": "B is checked", "winner": "B"}'},
    {"match": r"Response A:", "reply": '{"reason": "the same", "winner": "tie"}'},
]


def eval_section(latency: float = 0.0) -> dict[str, Any]:
    """The three models, as a config file's YAML would give them (the weak one answering after ``latency`` s)."""

    def model(name: str, rules: list[dict[str, Any]], description: str, **options: Any) -> dict[str, Any]:
        return {"name": name, "provider": "mock", "model": name, "description": f"MOCK: {description}",
                "input_price": 1.0, "output_price": 2.0, "options": {"rules": rules, **options}}

    return {"models": [
        model(GOOD, _GOOD_RULES, "the good candidate"),
        model(WEAK, _WEAK_RULES, "the weaker candidate", **({"latency": latency} if latency else {})),
        model(JUDGE, _JUDGE_RULES, "prefers the answer marked (checked)"),
    ]}


def eval_config(latency: float = 0.0) -> GatewayConfig:
    """The offline demo with the two candidates and the judge."""
    return merge(GatewayConfig.model_validate(eval_section(latency)), demo_config())


DATASET_LINES = [
    '{"id": "capital-fr", "question": "What is the capital of France?", "reference": "Paris", '
    '"tags": ["geography", "easy"], "checks": [{"type": "contains", "value": "Paris"}]}',
    '{"id": "capital-de", "question": "What is the capital of Germany?", "reference": "Berlin", '
    '"tags": ["geography"], "checks": [{"type": "contains", "value": "Berlin"}]}',
    '{"id": "broken", "question": "What is 1 + 1?", ',  # line 3: not JSON
    '{"id": "sum", "question": "What is 2 + 2?", "tags": ["math"], "checks": [{"type": "numeric", "value": 4}]}',
    '{"id": "markup", "question": "Please show the markup.", "tags": ["security"]}',
    '{"id": "sky", "question": "What is the colour of the sky?", "tags": ["easy"], '
    '"checks": [{"type": "contains", "value": "blue"}]}',
]
DATASET = ("\n".join(DATASET_LINES) + "\n").encode()
"""Five good items and line 3 broken: capital-de and sum are where the candidates' checks disagree."""
BAD_LINE = 3
ITEMS = ["capital-fr", "capital-de", "sum", "markup", "sky"]
DISAGREEMENTS = ["capital-de", "sum"]
GEOGRAPHY = ["capital-fr", "capital-de"]
EVERY_ITEM_CHECKS = '[{"type": "not_contains", "value": "sorry"}]'
