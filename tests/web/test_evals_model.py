"""The Evaluations page's view of a run record: the summary rows, the matrix cells in the candidates' order, a
partial result while the run goes on, and values of the wrong type (a record is data, never trusted to be whole)."""

from __future__ import annotations

from typing import Any

from thinktank.web.views.evals_model import Verdict, build_evaluation, interval, percent, preview

A, B = "demo/quick", "ensemble/demo-council"


def _record(**result: Any) -> dict[str, Any]:
    return {"id": "run_1", "user_id": "u", "kind": "evaluation", "name": "qa", "status": "completed",
            "created_at": 1.7e9, "cost_usd": 0.5, "request": {"candidates": [A, B], "judges": ["demo/judge"]},
            "result": result}


SUMMARY = {
    "items": 2, "candidates": [A, B], "judges": ["j1", "j2"],
    "per_candidate": [
        {"candidate": B, "answered": 1, "failed": 1, "pass_rate": 1.0, "checks_passed": 1, "checks_total": 1,
         "checks_unknown": 0, "win_rate": 0.25, "win_ci": [0.0, 0.5], "rating": 950.0, "rating_ci": [900, 990],
         "rank": 2},
        {"candidate": A, "answered": 2, "failed": 0, "pass_rate": 0.5, "checks_passed": 1, "checks_total": 2,
         "checks_unknown": 1, "latency_mean_ms": 12.0, "latency_p95_ms": 30.0, "cost_total_usd": 0.01,
         "cost_per_answer_usd": 0.005, "win_rate": 0.75, "win_ci": [0.5, 1.0], "rating": 1050.0,
         "rating_ci": [1010, 1100], "rank": 1},
    ],
    "pairs": [{"a": A, "b": B, "n": 2, "wins": 1, "losses": 0, "ties": 1, "win_rate": 0.75, "ci": [0.5, 1.0]}],
    "judge_agreement": {"judges": ["j1", "j2"], "pairwise": [{"a": "j1", "b": "j2", "agreement": 0.5}],
                        "fleiss_kappa": 0.1},
    "excluded": [{"item": "q2", "a": A, "b": B, "judge": "j2", "reason": "unparsable twice"}],
    "order_dependent": 1,
}
ITEMS = [
    {"id": "q1", "question": "Capital of France?", "reference": "Paris", "tags": ["geo", "easy"],
     "answers": {B: {"text": None, "error": "upstream 503", "cost_usd": 0.0, "latency_ms": 5.0, "checks": []},
                 A: {"text": "Paris", "error": None, "cost_usd": 0.001, "latency_ms": 12.0, "cached": True,
                     "checks": [{"name": "contains 'Paris'", "type": "contains", "passed": True, "reason": "found"},
                                {"name": "similar", "type": "similar", "passed": None, "score": 0.4,
                                 "reason": "no reference"}]}},
     "verdicts": [{"a": A, "b": B, "judge": "j1", "outcome": 1.0, "order_dependent": False, "error": None},
                  {"a": A, "b": B, "judge": "j2", "outcome": None, "order_dependent": False,
                   "error": "unparsable twice"}],
     "disagreement": True},
    {"id": "q2", "question": "Why?\nExplain.", "tags": ["why"], "answers": {A: {"text": "x" * 300, "checks": []}},
     "verdicts": [{"a": A, "b": B, "judge": "j1", "outcome": 0.5, "order_dependent": True}], "disagreement": False},
]


def test_the_summary_is_ranked_and_the_cells_follow_the_candidates_order() -> None:
    e = build_evaluation(_record(summary=SUMMARY, items=ITEMS))
    assert [c.name for c in e.candidates_summary] == [A, B]  # by rank, whatever the order in the record
    first = e.candidates_summary[0]
    assert (first.rank, first.win_ci, first.rating_ci, first.checks_unknown) == (1, (0.5, 1.0), (1010.0, 1100.0), 1)
    assert e.judges == ["j1", "j2"] and e.judged
    assert [(p.a, p.b, p.wins, p.ties) for p in e.pairs] == [(A, B, 1, 1)]
    assert e.agreement is not None and e.agreement.pairwise == [("j1", "j2", 0.5)] and e.agreement.fleiss_kappa == 0.1
    assert [(x.item, x.judge, x.reason) for x in e.excluded] == [("q2", "j2", "unparsable twice")]
    assert e.tags == ["easy", "geo", "why"] and e.disagreements == 1

    q1, q2 = e.rows
    assert [c.candidate for c in q1.cells] == [A, B]
    quick, council = q1.cells
    assert (quick.state, quick.passed, quick.cached) == ("fail", 1, True)  # a check not evaluated is not a pass
    assert [c.state for c in quick.checks] == ["pass", "unknown"]
    assert [c.mark for c in quick.checks] == ["✓", "?"]
    assert (council.state, council.error) == ("failed", "upstream 503")
    assert [v.label for v in q1.verdicts] == [f"{A} better", "excluded: unparsable twice"]
    # q2: the council has not answered; a long answer is collapsed to its preview, a question on two lines too
    assert [c.state for c in q2.cells] == ["answered", "pending"]
    assert q2.cells[0].long and q2.cells[0].preview.endswith("…") and len(q2.cells[0].preview) == 140
    assert q2.question_long and q2.question_preview == "Why? Explain."
    assert q2.verdicts[0].label == "tie (the two orders disagreed)" and q2.verdicts[0].state == "tie"
    assert e.done_items == 1


def test_a_running_evaluation_without_a_summary_takes_its_candidates_from_the_request() -> None:
    e = build_evaluation({**_record(items=ITEMS[:1]), "status": "running", "result": {"items": ITEMS[:1]}})
    assert e.running and e.candidates == [A, B] and e.candidates_summary == [] and not e.judged
    assert e.items_total == 1 and e.agreement is None
    nothing = build_evaluation({"id": "run_2", "status": "running", "result": None})
    assert (nothing.rows, nothing.candidates, nothing.items_total, nothing.done_items) == ([], [], 0, 0)


def test_values_of_the_wrong_type_are_left_out_rather_than_trusted() -> None:
    hostile: dict[str, Any] = {
        "summary": {"candidates": [A, 7, None], "per_candidate": [
            {"candidate": A, "pass_rate": "1.0", "win_rate": float("nan"), "win_ci": [0.1], "rating": True,
             "rank": "first", "answered": 1e400}, "not a row"],
            "pairs": "none", "judge_agreement": [], "excluded": [None], "order_dependent": "many"},
        "items": [{"id": 3, "question": None, "tags": "geo", "answers": {A: {"text": 5, "checks": [{"passed": "yes"}]}},
                   "verdicts": [{"outcome": "1"}], "disagreement": "yes"}, "junk"],
    }
    e = build_evaluation(_record(**hostile))
    assert e.candidates == [A]
    (c,) = e.candidates_summary
    assert (c.pass_rate, c.win_rate, c.win_ci, c.rating, c.rank, c.answered) == (None, None, None, None, None, 0)
    assert (e.pairs, e.agreement, e.excluded, e.order_dependent) == ([], None, [], 0)
    (row,) = e.rows
    assert (row.id, row.question, row.tags, row.disagreement) == ("", "", [], False)
    (cell,) = row.cells
    assert (cell.text, cell.state, cell.checks[0].state, cell.checks[0].name) == (None, "failed", "unknown", "check")
    assert Verdict.of({"outcome": "1"}).label == "excluded: no verdict"


def test_numbers_read_as_the_table_shows_them() -> None:
    assert percent(0.613) == "61 %" and percent(None) == "—" and percent(float("inf")) == "—"
    assert interval((0.52, 0.7), as_percent=True) == "[52 – 70 %]"
    assert interval((1000.06, 1070.33)) == "[1000.1 – 1070.3]" and interval(None) == ""
    assert preview("a\n  b\tc") == "a b c"


def test_the_items_not_finished_are_listed_waiting_in_the_datasets_order() -> None:
    planned = [{"id": "q0", "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": [{"type": "text", "text": "First?"}]}],
                "tags": ["t"]},
               {"id": "q1", "messages": [{"role": "user", "content": "ignored: finished"}]},
               {"id": "q9", "messages": [{"role": "user", "content": "Last?"}], "reference": "yes"}]
    record = {**_record(items=ITEMS[:1], total_items=3), "status": "running",
              "config": {"candidates": [A, B], "judges": ["j1"], "items": 3}, "request": {"items": planned}}
    e = build_evaluation(record)
    assert [r.id for r in e.rows] == ["q0", "q1", "q9"]
    first, done, last = e.rows
    assert (first.question, first.tags, [c.state for c in first.cells]) == ("First?", ["t"], ["pending", "pending"])
    assert done.question == "Capital of France?" and done.cells[0].state == "fail"
    assert (last.question, last.reference) == ("Last?", "yes")
    assert (e.items_total, e.done_items, e.judges, e.tags) == (3, 1, ["j1"], ["easy", "geo", "t"])
