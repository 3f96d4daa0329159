from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest
from markupsafe import Markup

from thinktank.web.charts import CHART_CSS, bar_chart, interval_chart, line_chart

NS = "{http://www.w3.org/2000/svg}"
NAN, INF = float("nan"), float("inf")
HOSTILE = '<script>alert(1)</script>"&\x00\x07\ud800'


def parse(svg: Markup) -> ET.Element:
    assert isinstance(svg, Markup)
    root = ET.fromstring(str(svg))  # well-formed XML, or this raises
    assert root.tag == f"{NS}svg"
    assert root.get("role") == "img"
    assert root.get("aria-label")
    assert root.find(f"{NS}title") is not None and root.find(f"{NS}desc") is not None
    view = [float(v) for v in (root.get("viewBox") or "").split()]
    assert len(view) == 4 and view[2] > 0 and view[3] > 0
    for el in root.iter():
        assert "style" not in el.attrib
        assert not any(name.startswith("on") for name in el.attrib)
        for name, value in el.attrib.items():
            assert "nan" not in value.lower() and "inf" not in value.lower(), (name, value)
    assert root.find(f".//{NS}script") is None and root.find(f".//{NS}foreignObject") is None
    return root


def by_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [el for el in root.iter(f"{NS}{tag}") if cls in (el.get("class") or "").split()]


def texts(root: ET.Element) -> list[str]:
    """The visible text of each <text> (a <title> inside it is a tooltip, not shown)."""
    return [(el.text or "") + "".join(child.tail or "" for child in el) for el in root.iter(f"{NS}text")]


def f(el: ET.Element, attr: str) -> float:
    value = float(el.get(attr) or "x")
    assert math.isfinite(value)
    return value


def test_line_chart_geometry() -> None:
    root = parse(line_chart({"a": [(3, 5.0), (1, 1.0), (2, 3.0)], "b": [(1, 2.0), (3, 2.0)]}, width=390, height=200))
    a = by_class(root, "circle", "series-0")
    b = by_class(root, "circle", "series-1")
    assert len(a) == 3 and len(b) == 2  # one point per datum
    xs = [f(c, "cx") for c in a]
    ys = [f(c, "cy") for c in a]
    assert xs == sorted(xs)  # sorted by x
    assert ys[0] > ys[1] > ys[2]  # higher value, smaller y
    # Same x value, same horizontal position; same y value, same height.
    assert f(a[0], "cx") == f(b[0], "cx") and f(b[0], "cy") == f(b[1], "cy")
    lines = by_class(root, "polyline", "line")
    assert len(lines) == 2
    assert len((lines[0].get("points") or "").split()) == 3
    width = float((root.get("viewBox") or "").split()[2])
    assert all(0 <= x <= width for x in xs)
    # The legend names both series, each beside a swatch of its colour class.
    assert {"a", "b"} <= set(texts(root))
    assert by_class(root, "rect", "series-0") and by_class(root, "rect", "series-1")


def test_line_chart_labels() -> None:
    root = parse(line_chart({"m": [(0, 1.0), (86400, 2.0)]}, x_labels=[(0, "Mon"), (86400, "Tue"), (10**9, "far")]))
    assert {"Mon", "Tue"} <= set(texts(root))
    assert "far" not in texts(root)  # outside the data range
    root = parse(line_chart({"m": [(0, 1.0), (1, 2.0)]}, x_format=lambda x: f"day {x:g}", y_format=lambda y: f"${y:g}"))
    assert {"day 0", "day 1", "$0", "$2"} <= set(texts(root))


def test_line_chart_empty() -> None:
    empty: list[dict[str, list[tuple[float, float]]]] = [{}, {"a": []}, {"a": [(NAN, 1.0), (1.0, INF)]}]
    for series in empty:
        root = parse(line_chart(series))
        assert "No data" in texts(root)
        assert root.find(f".//{NS}circle") is None


def test_line_chart_single_point_zero_and_negative() -> None:
    root = parse(line_chart({"a": [(5, 3.0)]}))
    assert len(by_class(root, "circle", "series-0")) == 1
    assert by_class(root, "polyline", "line") == []
    root = parse(line_chart({"a": [(1, 0.0), (2, 0.0)]}))
    ys = {f(c, "cy") for c in by_class(root, "circle", "point")}
    assert len(ys) == 1
    root = parse(line_chart({"a": [(1, -5.0), (2, 5.0)]}))
    lo, hi = (f(c, "cy") for c in by_class(root, "circle", "point"))
    assert lo > hi


def test_line_chart_skips_non_finite() -> None:
    root = parse(line_chart({"a": [(1, 1.0), (2, NAN), (3, INF), (4, 2.0), (NAN, 3.0), (5, 1e300)]}))
    assert len(by_class(root, "circle", "point")) == 3  # 1e300 is kept, clamped, still finite


def test_hostile_labels_are_escaped() -> None:
    charts = [
        line_chart({HOSTILE: [(1, 1.0), (2, 2.0)]}, title=HOSTILE, x_labels=[(1, HOSTILE)]),
        bar_chart([(HOSTILE, 1.0)], title=HOSTILE),
        interval_chart([(HOSTILE, 1.0, 0.5, 1.5)], title=HOSTILE),
    ]
    for svg in charts:
        root = parse(svg)
        assert "<script>" not in str(svg)
        assert any("<script>alert(1)</script>" in t for t in texts(root))
        assert "<script>alert(1)</script>" in (root.get("aria-label") or "")
        assert not re.search("[\x00-\x08\ud800-\udfff]", str(svg))


def test_bar_chart_geometry() -> None:
    root = parse(bar_chart([("a", 10.0), ("b", 5.0), ("c", 0.0)]))
    bars = by_class(root, "rect", "bar")
    assert len(bars) == 3
    widths = [f(b, "width") for b in bars]
    assert widths[0] > widths[1] > widths[2] == 0
    assert widths[1] == pytest.approx(widths[0] / 2, abs=0.1)
    ys = [f(b, "y") for b in bars]
    assert ys == sorted(ys)
    assert {"a", "b", "c", "10", "5", "0"} <= set(texts(root))


def test_bar_chart_fixed_scale_and_odd_values() -> None:
    root = parse(
        bar_chart([("r1", 0.5), ("r2", 1.0), ("r3", NAN), ("r4", -1.0), ("r5", INF), ("r6", 2.0)], max_value=1)
    )
    widths = [f(b, "width") for b in by_class(root, "rect", "bar")]
    track = f(by_class(root, "rect", "track")[0], "width")
    assert widths[0] == pytest.approx(track / 2, abs=0.1)
    assert widths[1] == widths[5] == track  # clamped to the scale
    assert widths[2] == widths[3] == widths[4] == 0
    assert texts(root).count("n/a") == 2


def test_bar_chart_empty_and_all_zero() -> None:
    assert "No data" in texts(parse(bar_chart([])))
    root = parse(bar_chart([("a", 0.0), ("b", 0.0)]))
    assert [f(b, "width") for b in by_class(root, "rect", "bar")] == [0, 0]


def test_interval_chart_geometry() -> None:
    rows = [("top", 1200.0, 1150.0, 1250.0), ("mid", 1100.0, 1120.0, 1060.0), ("low", 1000.0, 990.0, 1010.0)]
    root = parse(interval_chart(rows, width=390))
    lines = by_class(root, "line", "interval")
    dots = by_class(root, "circle", "estimate")
    assert len(lines) == len(dots) == 3
    for line, dot in zip(lines, dots, strict=True):
        x1, x2, cx = f(line, "x1"), f(line, "x2"), f(dot, "cx")
        assert x1 <= cx <= x2  # endpoints ordered even when low/high were given swapped
        assert f(line, "y1") == f(line, "y2") == f(dot, "cy")
    cxs = [f(d, "cx") for d in dots]
    assert cxs[0] > cxs[1] > cxs[2]  # a larger estimate lies further right
    assert f(lines[0], "x2") - f(lines[0], "x1") > f(lines[2], "x2") - f(lines[2], "x1")  # wider interval, longer line
    assert all(f(line, "x1") >= 0 and f(line, "x2") <= 390 for line in lines)
    assert "1,100 (1,060 to 1,120)" in texts(root)


def test_interval_chart_non_finite() -> None:
    rows = [("ok", 1.0, 0.5, 1.5), ("open", 1.0, -INF, NAN), ("gone", NAN, 0.0, 2.0)]
    root = parse(interval_chart(rows))
    assert len(by_class(root, "circle", "estimate")) == 2
    assert "n/a" in texts(root)
    assert "1 (−∞ to 1)" in texts(root)
    assert "No data" in texts(parse(interval_chart([])))
    root = parse(interval_chart([("x", NAN, NAN, NAN)]))
    assert by_class(root, "circle", "estimate") == []


def test_phone_width_keeps_everything_in_the_viewbox() -> None:
    long_name = "a-very-long-model-name/with-a-provider-prefix-and-a-version-2025-01-01"
    for svg in (bar_chart([(long_name, 3.0)], width=390), interval_chart([(long_name, 1.0, 0.0, 2.0)], width=390)):
        root = parse(svg)
        assert (root.get("viewBox") or "").split()[2] == "390"
        label = next(el for el in root.iter(f"{NS}text") if el.find(f"{NS}title") is not None)
        shown = texts(label)[0]
        assert len(shown) < len(long_name) and shown.endswith("…")
        title = label.find(f"{NS}title")
        assert title is not None and title.text == long_name  # the full name is still there


def test_css_covers_the_classes() -> None:
    for cls in ["axis", "grid", "label", "value", "track", *(f"series-{i}" for i in range(8))]:
        assert f".{cls}" in CHART_CSS
    assert "@media (prefers-color-scheme: dark)" in CHART_CSS
