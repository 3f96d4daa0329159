"""An evaluation's result for people and programs: the summary table and the pairs, as a rich table or CSV
(Markdown is :func:`thinktank.evals.export.to_markdown`, the API's export).

The input is the ``result`` of ``GET /api/v1/eval/runs/{id}`` (``{"summary": {...}, "items": [...]}``, see
docs/evals.md): the per-candidate rows (pass rate, win rate with its 95 % interval, Bradley-Terry rating with its
interval, rank, latency, cost) and the pairwise win rates.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, JustifyMethod
    from rich.table import Table

__all__ = [
    "CANDIDATE_FIELDS", "PAIR_FIELDS", "candidate_rows", "footer_lines", "pair_rows", "print_tables", "to_csv",
]

CANDIDATE_FIELDS = (
    "candidate", "answered", "failed", "pass_rate", "checks_passed", "checks_total", "checks_unknown", "win_rate",
    "win_ci_low", "win_ci_high", "rating", "rating_ci_low", "rating_ci_high", "rank", "latency_mean_ms",
    "latency_p95_ms", "cost_total_usd", "cost_per_answer_usd",
)
"""The columns of the per-candidate table in CSV (intervals as two columns each)."""
PAIR_FIELDS = ("a", "b", "n", "wins", "losses", "ties", "win_rate", "ci_low", "ci_high")
"""The columns of the pairs table in CSV: ``a``'s wins, losses and ties against ``b``, and ``a``'s win rate."""


def _bounds(value: Any) -> tuple[Any, Any]:
    if isinstance(value, list | tuple) and len(value) == 2:
        return value[0], value[1]
    return None, None


def candidate_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per candidate (keys :data:`CANDIDATE_FIELDS`), best rank first when judged."""
    rows = []
    for c in summary.get("per_candidate") or []:
        win_low, win_high = _bounds(c.get("win_ci"))
        rating_low, rating_high = _bounds(c.get("rating_ci"))
        rows.append({**{k: c.get(k) for k in CANDIDATE_FIELDS}, "win_ci_low": win_low, "win_ci_high": win_high,
                     "rating_ci_low": rating_low, "rating_ci_high": rating_high})
    return sorted(rows, key=lambda r: (r["rank"] is None, r["rank"] or 0))


def pair_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per pair of candidates (keys :data:`PAIR_FIELDS`)."""
    rows = []
    for p in summary.get("pairs") or []:
        low, high = _bounds(p.get("ci"))
        rows.append({**{k: p.get(k) for k in PAIR_FIELDS}, "ci_low": low, "ci_high": high})
    return rows


# -- text ------------------------------------------------------------------------------------------------------
def _pct(x: Any) -> str:
    return f"{x:.0%}" if isinstance(x, int | float) else "–"


def _with_ci(value: str, ci: Any, fmt: str) -> str:
    low, high = _bounds(ci)
    if not isinstance(low, int | float) or not isinstance(high, int | float):
        return value
    return f"{value} [{format(low, fmt)}–{format(high, fmt)}]"


def _ms(x: Any) -> str:
    return f"{x:,.0f}" if isinstance(x, int | float) else "–"


def _usd(x: Any) -> str:
    """Dollars to the cent from $1, to four places from a cent, else to two significant digits ($0.00034)."""
    if not isinstance(x, int | float):
        return "–"
    if x == 0 or x >= 1:
        return f"${x:,.2f}" if x else "$0"
    return f"${x:.4f}" if x >= 0.01 else f"${x:.2g}" if x >= 1e-4 else f"${x:.6f}"


def _pass(c: dict[str, Any]) -> str:
    """The pass rate, with the items the candidate failed to answer (the rate is over those it answered)."""
    rate = c.get("pass_rate")
    text = f"{rate:.0%}" if isinstance(rate, int | float) else "–"
    return text + (f" ({c['failed']} failed)" if c.get("failed") else "")


def candidate_cells(c: dict[str, Any]) -> list[str]:
    """The table's cells for one candidate row of the summary."""
    win = c.get("win_rate")
    rating = c.get("rating")
    return [
        "" if c.get("rank") is None else str(c["rank"]),
        str(c.get("candidate", "")),
        _pass(c),
        _with_ci(_pct(win), c.get("win_ci"), ".0%").replace("%–", "–") if isinstance(win, int | float) else "–",
        _with_ci(f"{rating:.0f}", c.get("rating_ci"), ".0f") if isinstance(rating, int | float) else "–",
        f"{_ms(c.get('latency_mean_ms'))} / {_ms(c.get('latency_p95_ms'))}",
        _usd(c.get("cost_total_usd")),
        _usd(c.get("cost_per_answer_usd")),
    ]


_CANDIDATE_HEADERS: list[tuple[str, JustifyMethod]] = [
    ("#", "right"), ("candidate", "left"), ("pass rate", "right"), ("win rate [95% CI]", "right"),
    ("rating [95% CI]", "right"), ("latency ms mean / p95", "right"), ("cost", "right"), ("cost per answer", "right"),
]


def _table(title: str, headers: list[tuple[str, JustifyMethod]], rows: list[list[str]]) -> Table:
    """A rich table of ``rows`` under ``headers``."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for header, justify in headers:
        # Headers on two lines when they are longer than the column's cells ("win rate" over "[95% CI]").
        wide = header.replace("pass rate", "pass\nrate").replace(" [", "\n[").replace(" mean", "\nmean")
        wide = wide.replace(" per ", "\nper ")
        table.add_column(wide, justify=justify)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # text, never rich markup (a model named "[b]x")
    return table


def pair_cells(p: dict[str, Any]) -> list[str]:
    win = p.get("win_rate")
    return [str(p.get("a", "")), str(p.get("b", "")), str(p.get("n", "")),
            f"{p.get('wins', 0)} / {p.get('losses', 0)} / {p.get('ties', 0)}",
            _with_ci(_pct(win), p.get("ci"), ".0%").replace("%–", "–") if isinstance(win, int | float) else "–"]


_PAIR_HEADERS: list[tuple[str, JustifyMethod]] = [
    ("a", "left"), ("b", "left"), ("items", "right"), ("a wins / loses / ties", "right"),
    ("a's win rate [95% CI]", "right")]


def footer_lines(record: dict[str, Any]) -> list[str]:
    """What the tables do not show: judging's exclusions and ties by position, the judges' agreement, the run."""
    result: dict[str, Any] = record.get("result") or {}
    summary: dict[str, Any] = result.get("summary") or {}
    lines = []
    judges = summary.get("judges") or []
    if judges:
        excluded = summary.get("excluded") or []
        lines.append(f"judged by {', '.join(map(str, judges))}, each pair in both orders: "
                     f"{summary.get('order_dependent') or 0} order-dependent verdicts counted as ties, "
                     f"{len(excluded)} excluded")
    agreement = summary.get("judge_agreement")
    if isinstance(agreement, dict):
        pairs = "; ".join(f"{a['a']} ~ {a['b']} {_pct(a.get('agreement'))}" for a in agreement.get("pairwise") or [])
        kappa = agreement.get("fleiss_kappa")
        lines.append(f"judges' agreement: {pairs}" + (f" (Fleiss' kappa {kappa:.2f})"
                                                      if isinstance(kappa, int | float) else ""))
    unknown = sum(int(c.get("checks_unknown") or 0) for c in summary.get("per_candidate") or [])
    if unknown:
        lines.append(f"{unknown} checks could not be evaluated (counted as not passed)")
    lines.append(f"{summary.get('answered_items', 0)}/{summary.get('items', 0)} items answered · cost "
                 f"{_usd(record.get('cost_usd'))} · run {record.get('id', '')} · {record.get('status', '')}")
    return lines


def print_tables(record: dict[str, Any], console: Console) -> None:
    """The summary table, the pairs table (with two or more candidates judged), and the footer lines."""
    summary: dict[str, Any] = (record.get("result") or {}).get("summary") or {}
    ranked = sorted(summary.get("per_candidate") or [], key=lambda c: (c.get("rank") is None, c.get("rank") or 0))
    n = summary.get("items", 0)
    console.print(_table(f"Evaluation of {n} item{'' if n == 1 else 's'}", _CANDIDATE_HEADERS,
                         [candidate_cells(c) for c in ranked]))
    pairs = summary.get("pairs") or []
    if pairs:
        console.print(_table("Pairs", _PAIR_HEADERS, [pair_cells(p) for p in pairs]))
    for line in footer_lines(record):
        console.print(line, highlight=False, markup=False)


# -- files -----------------------------------------------------------------------------------------------------
def _cell(value: Any) -> Any:
    """A CSV cell; a text a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``) gets a leading quote."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv_block(fields: Sequence[str], rows: list[dict[str, Any]], out: io.StringIO) -> None:
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)


def to_csv(result: dict[str, Any]) -> str:
    """The per-candidate table, then (after a blank line) the pairs table when there is one; each with a header."""
    summary: dict[str, Any] = result.get("summary") or {}
    out = io.StringIO()
    _csv_block(CANDIDATE_FIELDS, candidate_rows(summary), out)
    pairs = pair_rows(summary)
    if pairs:
        out.write("\n")
        _csv_block(PAIR_FIELDS, pairs, out)
    return out.getvalue()
