"""The result as CSV and Markdown: every item and candidate a row, nothing a spreadsheet would run as a formula,
nothing that breaks a Markdown table."""

from __future__ import annotations

import csv
import io
from typing import Any

from thinktank.evals.export import CSV_COLUMNS, to_csv, to_markdown

RESULT: dict[str, Any] = {
    "summary": {
        "items": 2, "answered_items": 2, "candidates": ["a|b", "c"], "judges": ["j"],
        "per_candidate": [
            {"candidate": "a|b", "pass_rate": 0.5, "win_rate": 0.75, "win_ci": [0.5, 1.0], "rating": 1040.26,
             "rating_ci": [1001.0, 1080.0], "rank": 1, "latency_mean_ms": 12.0, "latency_p95_ms": 30.0,
             "cost_total_usd": 0.0123, "cost_per_answer_usd": 0.00616},
            {"candidate": "c", "pass_rate": None, "win_rate": 0.25, "win_ci": [0.0, 0.5], "rating": 959.74,
             "rating_ci": [920.0, 999.0], "rank": 2, "latency_mean_ms": None, "latency_p95_ms": None,
             "cost_total_usd": 0.0, "cost_per_answer_usd": None}],
        "pairs": [{"a": "a|b", "b": "c", "n": 2, "wins": 1, "losses": 0, "ties": 1, "win_rate": 0.75,
                   "ci": [0.5, 1.0]}],
        "judge_agreement": None, "excluded": [], "order_dependent": 1},
    "items": [
        {"id": "q1", "question": "=HYPERLINK(\"http://x\")", "reference": "-3", "tags": ["t1", "t2"],
         "answers": {"a|b": {"text": "+cmd|' /C calc'!A0", "error": None, "cost_usd": 0.01, "latency_ms": 10.0,
                             "cached": True, "checks": [{"passed": True}, {"passed": False}]},
                     "c": {"text": None, "error": "upstream down", "cost_usd": 0.0, "latency_ms": 0.0,
                           "cached": False, "checks": [{"passed": False}, {"passed": False}]}},
         "verdicts": [], "disagreement": True},
        {"id": "q2", "question": "multi\nline, with \"quotes\"", "reference": None, "tags": [],
         "answers": {"a|b": {"text": "@SUM(1)", "error": None, "cost_usd": 0.0023, "latency_ms": 14.0,
                             "cached": False, "checks": []}},
         "verdicts": [], "disagreement": False}],
}


def test_csv_has_a_row_per_item_and_candidate_and_no_formulas() -> None:
    rows = list(csv.reader(io.StringIO(to_csv(RESULT))))
    assert tuple(rows[0]) == CSV_COLUMNS
    body = [dict(zip(CSV_COLUMNS, r, strict=True)) for r in rows[1:]]
    assert [(r["item"], r["candidate"]) for r in body] == [("q1", "a|b"), ("q1", "c"), ("q2", "a|b")]
    assert body[0]["question"] == "'=HYPERLINK(\"http://x\")" and body[0]["reference"] == "-3"
    assert body[0]["answer"] == "'+cmd|' /C calc'!A0" and body[2]["answer"] == "'@SUM(1)"
    assert (body[0]["checks_passed"], body[0]["checks_total"], body[0]["passed"]) == ("1", "2", "false")
    assert (body[1]["answer"], body[1]["error"], body[1]["passed"]) == ("", "upstream down", "")
    assert body[0]["cached"] == "true" and body[0]["tags"] == "t1;t2" and body[0]["disagreement"] == "true"
    assert body[2]["question"] == "multi\nline, with \"quotes\"" and body[2]["passed"] == "true"


def test_markdown_tables_escape_the_names() -> None:
    text = to_markdown(RESULT, title="My | eval")
    lines = text.splitlines()
    assert lines[0] == "# My \\| eval"
    assert "| a\\|b | 50.0 % | 75.0 % [50.0, 100.0] | 1040.3 [1001.0, 1080.0] | 1 | 12 ms / 30 ms | " \
           "$0.0123 / $0.0062 |" in lines
    assert "| c | – | 25.0 % [0.0, 50.0] | 959.7 [920.0, 999.0] | 2 | – / – | $0.0000 / – |" in lines
    assert "| a\\|b | c | 2 | 1 | 0 | 1 | 75.0 % [50.0, 100.0] |" in lines
    assert lines[-1] == "Verdicts excluded: 0; order-dependent (counted as ties): 1"
