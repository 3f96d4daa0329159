"""The Grafana dashboard and the Prometheus alert rules use only metrics ``/metrics`` really exports (read from a
live scrape after real requests), and promtool accepts them (rules checked and unit-tested, every dashboard
query parsed) when it is installed (Debian: ``apt-get install prometheus``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from thinktank.api.app import create_app
from thinktank.config import Settings, parse_config

from ..fakes.server import serving
from .scrape import Scrape, parse

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "thinktank-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
ADMIN = "tt-test-admin-key-0123456789"

_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                       "offset", "inf", "nan", "Inf", "NaN", "atan2"})
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$model": ".*"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: every identifier that is not a function or aggregation
    (followed by '('), a keyword, a label (inside {} or by/without/on/ignoring (...)), a duration or a number."""
    expr = re.sub(r"label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)", r"\1", expr)  # Grafana's variable query
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    names = set()
    for found in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        before = expr[found.start() - 1] if found.start() else " "
        if before.isdigit() or before == ".":
            continue  # 1e3, 5m
        if expr[found.end():].lstrip().startswith("(") or found.group() in _KEYWORDS:
            continue
        names.add(found.group())
    return names


def test_the_name_extraction_itself() -> None:
    assert metric_names('histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{model=~"x|y"}[5m]))) > 30') \
        == {"a_bucket"}
    assert metric_names("max by (deployment) (b) > bool time()") == {"b"}
    assert metric_names("sum(rate(c_total[$__rate_interval])) / ignoring(x) d * 1e3 offset 5m") == {"c_total", "d"}
    assert metric_names("up == 0") == {"up"}  # a metric thinktank does not export would be caught
    assert metric_names("label_values(e_total, model)") == {"e_total"}


def _dashboard_queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_queries(item)


def dashboard_queries() -> list[str]:
    return list(_dashboard_queries(json.loads(DASHBOARD.read_text())))


def alert_queries() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Scrape:
    """A scrape of a real server (single process: every metric family is listed, with samples or without)
    after a plain request, a stream, and a refused one."""
    import asyncio

    async def run() -> str:
        data = tmp_path_factory.mktemp("data")
        app = create_app(Settings(data_dir=data, admin_key=ADMIN), parse_config(
            {"models": [{"name": "m", "provider": "mock", "input_price": 1, "output_price": 1}]}))
        auth = {"Authorization": f"Bearer {ADMIN}"}
        async with serving(app) as url, httpx.AsyncClient() as http:
            for stream in (False, True):
                r = await http.post(url + "/v1/chat/completions", headers=auth, json={
                    "model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200
            key = (await http.post(url + "/api/v1/keys", headers=auth, json={"budget_usd": 0})).json()["key"]
            r = await http.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 429
            text = (await http.get(url + "/metrics", headers=auth)).text
            return text

    return parse(asyncio.run(run()))


def test_every_query_uses_exported_metrics(scrape: Scrape) -> None:
    exported = scrape.sample_names()
    queries = dashboard_queries() + alert_queries()
    assert len(queries) > 30
    used: set[str] = set()
    for query in queries:
        names = metric_names(query)
        assert names, f"no metric in {query!r}"
        unknown = names - exported
        assert not unknown, f"{query!r} uses {sorted(unknown)}, which /metrics does not export"
        used |= names
    # What the dashboard is for: every one of these shows.
    for wanted in ("thinktank_requests_total", "thinktank_request_duration_seconds_bucket",
                   "thinktank_time_to_first_token_seconds_bucket", "thinktank_tokens_total", "thinktank_cost_usd_total",
                   "thinktank_cache_hits_total", "thinktank_cache_misses_total", "thinktank_upstream_cooldowns_total",
                   "thinktank_refusals_total", "thinktank_runs_total", "thinktank_upstream_failures_total"):
        assert wanted in used, wanted
    assert scrape.value("thinktank_refusals_total", reason="budget", scope="key") == 1


def test_the_dashboard_is_grafana_json() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] == "thinktank"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24


promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool is not installed (apt-get install prometheus)")


def _promtool(*args: str, stdin: str | None = None) -> None:
    assert promtool is not None
    done = subprocess.run([promtool, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    _promtool("check", "rules", str(ALERTS))
    _promtool("test", "rules", str(ALERT_TESTS))


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = []
    for i, query in enumerate(q for q in dashboard_queries() if not q.startswith("label_values(")):
        expr = query
        for variable, value in _GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool("check", "rules", str(path))


@needs_promtool
def test_promtool_lints_the_scrape(scrape: Scrape) -> None:
    _promtool("check", "metrics", stdin=scrape.text)
