"""An evaluation's result (``{"summary", "items"}``) as CSV (one row per item and candidate) or Markdown (the
summary table and the pairs). Pure functions of the result JSON: the API's export and the CLI use the same."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CSV_COLUMNS", "to_csv", "to_markdown"]

CSV_COLUMNS = ("item", "question", "reference", "tags", "candidate", "answer", "error", "cost_usd", "latency_ms",
               "cached", "checks_passed", "checks_total", "passed", "disagreement")


def _cell(value: Any) -> str:
    """A CSV cell: no formula a spreadsheet would run (a text starting with = + - @ gets a leading quote)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(text) else text


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def to_csv(result: Mapping[str, Any]) -> str:
    """One row per item and candidate: the answer, its cost and latency, how many checks it passed."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item in result.get("items") or []:
        for candidate, a in (item.get("answers") or {}).items():
            checks = a.get("checks") or []
            passed = sum(1 for c in checks if c.get("passed") is True)
            writer.writerow([_cell(v) for v in (
                item.get("id"), item.get("question"), item.get("reference"), ";".join(item.get("tags") or []),
                candidate, a.get("text"), a.get("error"), a.get("cost_usd"), a.get("latency_ms"),
                "true" if a.get("cached") else "false", passed, len(checks),
                "" if a.get("text") is None else ("true" if passed == len(checks) else "false"),
                "true" if item.get("disagreement") else "false")])
    return out.getvalue()


def _md(value: Any) -> str:
    """Text for a Markdown table cell: one line, pipes and markup escaped."""
    text = "" if value is None else str(value)
    for ch in ("\\", "|", "*", "_", "`", "<", ">", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return " ".join(text.split())


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f} %"


def _interval(ci: Any, pct: bool) -> str:
    if not isinstance(ci, Sequence) or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return ""
    lo, hi = (f"{100 * float(ci[0]):.1f}", f"{100 * float(ci[1]):.1f}") if pct else (f"{float(ci[0]):.1f}",
                                                                                     f"{float(ci[1]):.1f}")
    return f" [{lo}, {hi}]"


def _usd(value: Any) -> str:
    return "–" if value is None else f"${float(value):.4f}"


def _ms(value: Any) -> str:
    return "–" if value is None else f"{float(value):.0f} ms"


def to_markdown(result: Mapping[str, Any], *, title: str | None = None) -> str:
    """The summary table (candidate, pass rate, win rate [95 % CI], rating [CI], rank, latency, cost) and the
    pairs, as Markdown."""
    summary: Mapping[str, Any] = result.get("summary") or {}
    lines = [f"# {_md(title)}", ""] if title else []
    lines += [f"{summary.get('items', 0)} items, {summary.get('answered_items', 0)} answered; judges: "
              f"{_md(', '.join(summary.get('judges') or [])) or 'none'}", "",
              "| Candidate | Pass rate | Win rate [95 % CI] | Rating [95 % CI] | Rank | Latency mean / p95 | "
              "Cost total / per answer |",
              "|---|---|---|---|---|---|---|"]
    for c in summary.get("per_candidate") or []:
        win = _pct(c.get("win_rate")) + _interval(c.get("win_ci"), True)
        rating = ("–" if c.get("rating") is None else f"{float(c['rating']):.1f}") + _interval(c.get("rating_ci"),
                                                                                               False)
        lines.append(f"| {_md(c.get('candidate'))} | {_pct(c.get('pass_rate'))} | {win} | {rating} | "
                     f"{c.get('rank') or '–'} | {_ms(c.get('latency_mean_ms'))} / {_ms(c.get('latency_p95_ms'))} | "
                     f"{_usd(c.get('cost_total_usd'))} / {_usd(c.get('cost_per_answer_usd'))} |")
    pairs = summary.get("pairs") or []
    if pairs:
        lines += ["", "| A | B | Items | Wins | Losses | Ties | Win rate of A [95 % CI] |",
                  "|---|---|---|---|---|---|---|"]
        for p in pairs:
            lines.append(f"| {_md(p.get('a'))} | {_md(p.get('b'))} | {p.get('n', 0)} | {p.get('wins', 0)} | "
                         f"{p.get('losses', 0)} | {p.get('ties', 0)} | {_pct(p.get('win_rate'))}"
                         f"{_interval(p.get('ci'), True)} |")
    agreement = summary.get("judge_agreement")
    if isinstance(agreement, Mapping) and agreement.get("fleiss_kappa") is not None:
        lines += ["", f"Judges' agreement: Fleiss' kappa {float(agreement['fleiss_kappa']):.2f}"]
    excluded = summary.get("excluded") or []
    if excluded or summary.get("order_dependent"):
        lines += ["", f"Verdicts excluded: {len(excluded)}; order-dependent (counted as ties): "
                      f"{summary.get('order_dependent') or 0}"]
    return "\n".join(lines) + "\n"
