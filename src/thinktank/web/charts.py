"""Small SVG charts rendered on the server, inline in the page.

No scripts and no ``style=`` attributes: shapes carry CSS classes (``CHART_CSS``) and presentation
attributes only. Every piece of text goes through ``_text`` (XML-invalid characters dropped, then escaped),
so names such as model names can hold anything. Non-finite values (NaN, infinities) never reach an attribute:
points are skipped, bars and intervals are shown as ``n/a`` or clamped to the axis.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup, escape

__all__ = ["CHART_CSS", "bar_chart", "interval_chart", "line_chart"]

PALETTE_SIZE = 8
_LIMIT = 1e15  # finite values are clamped to +-_LIMIT so that spans and ticks stay finite
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_ROW = 34  # height of one row of a bar or interval chart: a line of text above a bar
_CHAR = 7.0  # rough width of one character of label text at the size CHART_CSS sets

CHART_CSS = """\
svg.chart { display: block; width: 100%; height: auto; max-width: min(100%, 52rem); font: 12px system-ui, sans-serif; }
svg.chart .axis { stroke: #6b7280; stroke-width: 1; fill: none; }
svg.chart .grid { stroke: #e5e7eb; stroke-width: 1; fill: none; }
svg.chart .label, svg.chart .value { fill: #374151; }
svg.chart .empty { fill: #6b7280; font-style: italic; }
svg.chart .line { fill: none; stroke-width: 2; }
svg.chart .track { fill: #f3f4f6; }
svg.chart .series-0 { fill: #2563eb; stroke: #2563eb; }
svg.chart .series-1 { fill: #d97706; stroke: #d97706; }
svg.chart .series-2 { fill: #059669; stroke: #059669; }
svg.chart .series-3 { fill: #dc2626; stroke: #dc2626; }
svg.chart .series-4 { fill: #7c3aed; stroke: #7c3aed; }
svg.chart .series-5 { fill: #0891b2; stroke: #0891b2; }
svg.chart .series-6 { fill: #db2777; stroke: #db2777; }
svg.chart .series-7 { fill: #65a30d; stroke: #65a30d; }
svg.chart .line[class*="series-"] { fill: none; }
@media (max-width: 600px) {
  /* A 640-unit chart squeezed into a phone's width would set its 12px text at 5px: keep it readable,
     and let the box that holds it scroll sideways instead of the page. */
  svg.chart { min-width: 32rem; }
  *:has(> svg.chart) { overflow-x: auto; }
}
@media (prefers-color-scheme: dark) {
  svg.chart .axis { stroke: #9ca3af; }
  svg.chart .grid { stroke: #374151; }
  svg.chart .label, svg.chart .value { fill: #e5e7eb; }
  svg.chart .empty { fill: #9ca3af; }
  svg.chart .track { fill: #1f2937; }
  svg.chart .series-0 { fill: #60a5fa; stroke: #60a5fa; }
  svg.chart .series-1 { fill: #fbbf24; stroke: #fbbf24; }
  svg.chart .series-2 { fill: #34d399; stroke: #34d399; }
  svg.chart .series-3 { fill: #f87171; stroke: #f87171; }
  svg.chart .series-4 { fill: #a78bfa; stroke: #a78bfa; }
  svg.chart .series-5 { fill: #22d3ee; stroke: #22d3ee; }
  svg.chart .series-6 { fill: #f472b6; stroke: #f472b6; }
  svg.chart .series-7 { fill: #a3e635; stroke: #a3e635; }
  svg.chart .line[class*="series-"] { fill: none; }
}
"""


def fmt_number(v: float) -> str:
    """A short human form: integers with thousands separators, others with two decimals or 3 digits."""
    if v == int(v):
        return f"{int(v):,}"
    if abs(v) >= 1:
        return f"{v:,.2f}"
    return f"{v:.3g}"


def _text(s: str) -> str:
    """Escaped text that is valid in XML (and so in HTML): control characters and lone surrogates removed."""
    return str(escape(_XML_INVALID.sub("\ufffd", s)))


def _n(v: float) -> str:
    """A coordinate attribute: always finite, one decimal."""
    return f"{v:.1f}".removesuffix(".0") if math.isfinite(v) else "0"


def _finite(v: float) -> float | None:
    if not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return max(-_LIMIT, min(_LIMIT, float(v)))


def _ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Round tick values covering [lo, hi] (lo < hi); the first and last become the axis bounds."""
    raw = (hi - lo) / count
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start, end = math.floor(lo / step) * step, math.ceil(hi / step) * step
    n = round((end - start) / step)
    return [start + i * step for i in range(n + 1)]


def _clip(label: str, width: float) -> str:
    room = max(4, int(width / _CHAR))
    return label if len(label) <= room else label[: room - 1] + "…"


def _svg(width: float, height: float, title: str, desc: str, body: list[str]) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {_n(width)} {_n(height)}" '
        f'role="img" aria-label="{_text(title)}"><title>{_text(title)}</title><desc>{_text(desc)}</desc>'
    )
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704 - every text above went through _text


def _empty(width: float, height: float, title: str) -> Markup:
    body = [f'<text class="label empty" x="{_n(width / 2)}" y="{_n(height / 2)}" text-anchor="middle">No data</text>']
    return _svg(width, height, title, "No data", body)


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    width: float = 640,
    height: float = 240,
    title: str = "Line chart",
    x_labels: Sequence[tuple[float, str]] | None = None,
    x_format: Callable[[float], str] = fmt_number,
    y_format: Callable[[float], str] = fmt_number,
) -> Markup:
    """One line per series (points sorted by x), a dot per point, y axis from min(0, data), a legend below."""
    clean: list[tuple[str, list[tuple[float, float]]]] = []
    for name, points in series.items():
        pts = [(x, y) for x, y in ((_finite(px), _finite(py)) for px, py in points) if x is not None and y is not None]
        clean.append((name, sorted(pts)))
    xs = [x for _, pts in clean for x, _ in pts]
    ys = [y for _, pts in clean for _, y in pts]
    if not xs:
        return _empty(width, height, title)
    left, right, top, plot_h = 56.0, 12.0, 10.0, height - 38.0
    x_lo, x_hi = min(xs), max(xs)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = min(0.0, *ys), max(ys)
    if y_hi <= y_lo:
        y_hi = y_lo + 1
    yt = _ticks(y_lo, y_hi)
    y_lo, y_hi = yt[0], yt[-1]
    plot_w = width - left - right

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + (y_hi - y) / (y_hi - y_lo) * plot_h

    body: list[str] = []
    for t in yt:
        y = py(t)
        body.append(f'<line class="grid" x1="{_n(left)}" x2="{_n(left + plot_w)}" y1="{_n(y)}" y2="{_n(y)}"/>')
        body.append(
            f'<text class="label" x="{_n(left - 6)}" y="{_n(y + 4)}" text-anchor="end">{_text(y_format(t))}</text>'
        )
    base = top + plot_h
    body.append(f'<line class="axis" x1="{_n(left)}" x2="{_n(left + plot_w)}" y1="{_n(base)}" y2="{_n(base)}"/>')
    if x_labels is None:
        uniq = sorted(set(xs))
        step = max(1, math.ceil(len(uniq) / 6))
        x_labels = [(x, x_format(x)) for x in uniq[::step]]
    for x, label in x_labels:
        fx = _finite(x)
        if fx is not None and x_lo <= fx <= x_hi:
            body.append(
                f'<text class="label" x="{_n(px(fx))}" y="{_n(base + 16)}" text-anchor="middle">{_text(label)}</text>'
            )
    legend: list[str] = []
    legend_x = 8.0
    lx, ly = legend_x, height + 4.0
    for i, (name, pts) in enumerate(clean):
        cls = f"series-{i % PALETTE_SIZE}"
        coords = " ".join(f"{_n(px(x))},{_n(py(y))}" for x, y in pts)
        if len(pts) > 1:
            body.append(f'<polyline class="line {cls}" fill="none" points="{coords}"/>')
        for x, y in pts:
            tip = _text(f"{name}: {x_format(x)}, {y_format(y)}")
            body.append(
                f'<circle class="point {cls}" cx="{_n(px(x))}" cy="{_n(py(y))}" r="3"><title>{tip}</title></circle>'
            )
        item_w = 18 + min(len(name), 28) * _CHAR + 14
        if lx + item_w > width and lx > legend_x:
            lx, ly = legend_x, ly + 18
        legend.append(f'<rect class="{cls}" x="{_n(lx)}" y="{_n(ly)}" width="12" height="12"/>')
        legend.append(
            f'<text class="label" x="{_n(lx + 16)}" y="{_n(ly + 10)}">{_text(_clip(name, 28 * _CHAR))}</text>'
        )
        lx += item_w
    total_h = ly + 18
    names = ", ".join(name for name, _ in clean)
    desc = (
        f"{len(clean)} series ({names}); x from {x_format(min(xs))} to {x_format(max(xs))}; y up to {y_format(max(ys))}"
    )
    return _svg(width, total_h, title, desc, body + legend)


def _anchor(v: float, lo: float, hi: float) -> str:
    """Tick labels at the ends of an axis are aligned inwards so they stay inside the viewBox."""
    return "start" if v == lo else "end" if v == hi else "middle"


def _tick_text(x: float, y: float, label: str, anchor: str) -> str:
    return f'<text class="label" x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}">{_text(label)}</text>'


def _row_label(y: float, width: float, label: str, value: str) -> list[str]:
    """A row's label at the left (clipped to the room left by the value; the full label as a tooltip)."""
    shown = _clip(label, width - 16 - len(value) * _CHAR - 12)
    tip = f"<title>{_text(label)}</title>" if shown != label else ""
    return [
        f'<text class="label" x="8" y="{_n(y + 12)}">{tip}{_text(shown)}</text>',
        f'<text class="value" x="{_n(width - 8)}" y="{_n(y + 12)}" text-anchor="end">{_text(value)}</text>',
    ]


def bar_chart(
    values: Sequence[tuple[str, float]],
    *,
    width: float = 640,
    title: str = "Bar chart",
    max_value: float | None = None,
    value_format: Callable[[float], str] = fmt_number,
) -> Markup:
    """Horizontal bars, one row each (label and value above the bar: readable at phone width).

    ``max_value`` fixes the scale (e.g. 1.0 for scores in 0..1); otherwise the largest value fills the width.
    Negative values get an empty bar; NaN and infinities are shown as ``n/a``.
    """
    if not values:
        return _empty(width, 80, title)
    finite = [v for v in (_finite(v) for _, v in values) if v is not None]
    top_value = _finite(max_value) if max_value is not None else None
    scale = top_value if top_value is not None and top_value > 0 else max([0.0, *finite])
    bar_w = width - 16
    body: list[str] = []
    parts: list[str] = []
    for i, (label, raw) in enumerate(values):
        v = _finite(raw)
        y = 6 + i * _ROW
        body += _row_label(y, width, label, "n/a" if v is None else value_format(v))
        body.append(f'<rect class="track" x="8" y="{_n(y + 17)}" width="{_n(bar_w)}" height="12"/>')
        frac = 0.0 if v is None or scale <= 0 else max(0.0, min(1.0, v / scale))
        body.append(f'<rect class="bar series-0" x="8" y="{_n(y + 17)}" width="{_n(frac * bar_w)}" height="12"/>')
        parts.append(f"{label}: {'n/a' if v is None else value_format(v)}")
    return _svg(width, 12 + len(values) * _ROW, title, "; ".join(parts), body)


def interval_chart(
    rows: Sequence[tuple[str, float, float, float]],
    *,
    width: float = 640,
    title: str = "Estimates with 95% intervals",
    value_format: Callable[[float], str] = fmt_number,
) -> Markup:
    """A forest plot: per row (label, estimate, low, high) a dot at the estimate on a line from low to high.

    low/high are taken in order; a NaN bound collapses to the estimate, an infinite one runs to the axis end.
    Rows whose estimate is not finite are listed as ``n/a``.
    """
    if not rows:
        return _empty(width, 80, title)
    finite = [
        v
        for _, est, *bounds in rows
        if _finite(est) is not None
        for v in (_finite(x) for x in (est, *bounds))
        if v is not None
    ] or [0.0]
    lo, hi = min(finite), max(finite)
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    ticks = _ticks(lo, hi)
    lo, hi = ticks[0], ticks[-1]
    left, plot_w = 8.0, width - 16.0

    def px(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    body: list[str] = []
    bottom = 6 + len(rows) * _ROW
    for t in ticks:
        x = px(t)
        body.append(f'<line class="grid" x1="{_n(x)}" x2="{_n(x)}" y1="6" y2="{_n(bottom)}"/>')
        body.append(_tick_text(x, bottom + 14, value_format(t), _anchor(t, ticks[0], ticks[-1])))
    body.append(f'<line class="axis" x1="{_n(left)}" x2="{_n(left + plot_w)}" y1="{_n(bottom)}" y2="{_n(bottom)}"/>')
    parts: list[str] = []
    for i, (label, est_raw, low_raw, high_raw) in enumerate(rows):
        y = 6 + i * _ROW
        est = _finite(est_raw)
        if est is None:
            body += _row_label(y, width, label, "n/a")
            parts.append(f"{label}: n/a")
            continue
        a, b = (_bound(v, est, lo, hi) for v in (low_raw, high_raw))
        a, b = min(a, b), max(a, b)
        ends = [_bound_text(v, e, value_format) for v, e in sorted([(low_raw, a), (high_raw, b)], key=lambda p: p[1])]
        value = f"{value_format(est)} ({ends[0]} to {ends[1]})"
        body += _row_label(y, width, label, value)
        cy = y + 23
        body.append(f'<line class="interval series-0" x1="{_n(px(a))}" x2="{_n(px(b))}" y1="{_n(cy)}" y2="{_n(cy)}"/>')
        for end in (a, b):
            ex = _n(px(end))
            body.append(f'<line class="whisker series-0" x1="{ex}" x2="{ex}" y1="{_n(cy - 5)}" y2="{_n(cy + 5)}"/>')
        body.append(f'<circle class="estimate series-0" cx="{_n(px(est))}" cy="{_n(cy)}" r="4"/>')
        parts.append(f"{label}: {value}")
    return _svg(width, bottom + 22, title, "; ".join(parts), body)


def _bound_text(raw: float, v: float, value_format: Callable[[float], str]) -> str:
    if isinstance(raw, int | float) and math.isinf(raw):
        return "∞" if raw > 0 else "−∞"
    return value_format(v)


def _bound(v: float, est: float, lo: float, hi: float) -> float:
    if isinstance(v, int | float) and math.isinf(v):
        return hi if v > 0 else lo
    f = _finite(v)
    return est if f is None else f
