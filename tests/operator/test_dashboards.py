"""Grafana dashboards: valid JSON, every query parses and names only exported metrics."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

import promql_names
from netprobe_operator import agent_support

PROMTOOL = shutil.which("promtool")


@pytest.fixture
def dashboards(render_probe) -> dict[str, dict]:
    rendered = render_probe({"programs": [{"name": "tcp_rtt"}]})
    out = {}
    for cm in rendered.by_kind("ConfigMap"):
        for filename, text in cm["data"].items():
            if filename.endswith(".json"):
                out[filename] = json.loads(text)
    assert set(out) == {"netprobe-demo-overview.json", "netprobe-demo-agents.json"}
    return out


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            found.append((panel["title"], target["expr"]))
    return found


def variable_queries(dashboard: dict) -> list[tuple[str, str]]:
    found = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
            assert match, var["query"]
            found.append((f"${var['name']}", match.group(1)))
    return found


def test_dashboard_structure(dashboards):
    for name, dashboard in dashboards.items():
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert panel["description"], panel["title"]


def test_overview_has_the_panels_a_user_opens_first(dashboards):
    overview = dashboards["netprobe-demo-overview.json"]
    exprs = " ".join(e for _, e in panel_queries(overview))
    for metric in ("netprobe_tcp_connections_active", "netprobe_tcp_retransmits_total",
                   "netprobe_tcp_rtt_seconds_bucket", "netprobe_rx_latency_seconds_bucket", "netprobe_drops_total"):
        assert metric in exprs
    # the seed article's panel: kernel receive latency, 90th percentile
    titles = {t: e for t, e in panel_queries(overview)}
    assert titles["Kernel receive latency p90 by node"].startswith("histogram_quantile(0.9,")
    assert titles["Drops /s by reason per namespace"].startswith(
        "sum by (namespace, reason) (rate(netprobe_drops_total{")
    for quantile in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(netprobe_tcp_rtt_seconds_bucket" in exprs
        assert f"histogram_quantile({quantile}, sum by (le) (rate(netprobe_rx_latency_seconds_bucket" in exprs
        assert f"histogram_quantile({quantile}, sum by (namespace, workload, le) (rate(netprobe_dns_latency_seconds_bucket" in exprs
    ratio = titles["DNS error ratio by workload"]
    assert "netprobe_dns_timeouts_total" in ratio and 'rcode!~"NOERROR|NXDOMAIN"' in ratio


def test_every_query_names_only_exported_metrics(dashboards):
    exported = agent_support.exported_series_names()
    for name, dashboard in dashboards.items():
        for title, expr in panel_queries(dashboard) + variable_queries(dashboard):
            names = promql_names.series_names(promql_names.expand_grafana(expr, "netprobe-demo"))
            assert names, (name, title)
            assert names <= exported, (name, title, names - exported)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: run `make setup`")
def test_every_query_parses(dashboards, tmp_path):
    # promtool parses each expression as a recording rule: a syntax error fails it.
    rules = []
    for name, dashboard in dashboards.items():
        for i, (title, expr) in enumerate(panel_queries(dashboard) + variable_queries(dashboard)):
            rules.append({"record": f"dashboard:query_{len(rules)}",
                          "expr": promql_names.expand_grafana(expr, "netprobe-demo"),
                          "labels": {"panel": title[:60]}})
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_lexer_sees_what_it_should():
    # guard for the guard: the name extraction must catch an unknown metric
    expr = 'sum by (namespace, pod) (rate(netprobe_tcp_retransmits_total{job="x", pod=~"a.*"}[5m])) / on(pod) group_left bogus_metric > 1e-05'
    assert promql_names.series_names(expr) == {"netprobe_tcp_retransmits_total", "bogus_metric"}
