"""The rendered PrometheusRule, checked and exercised by Prometheus' own promtool."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import promql_names
from netprobe_operator import agent_support
from node_agent.programs import CATALOGUE

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: run `make setup` "
                                "(Debian's prometheus package)")

ALL = [{"name": n} for n in CATALOGUE]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def write_rules(tmp_path: Path, rendered) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rendered.one("PrometheusRule")["spec"]["groups"]}))
    return path


def test_promtool_accepts_the_rules(render_probe, tmp_path):
    path = write_rules(tmp_path, render_probe({"programs": ALL}))
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_rules_name_only_exported_metrics(render_probe):
    exported = agent_support.exported_series_names()
    rule = render_probe({"programs": ALL}).one("PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            names = promql_names.series_names(r["expr"])
            assert names and names <= exported, (r["alert"], names - exported)


RETRANSMIT_DESCRIPTION = (
    "Pod {ns}/{pod} has retransmitted more than {ratio} of the TCP segments it sent (and more than {floor} "
    "segments/s) for 10m: packet loss or congestion on its path (the dashboard shows which peers).")


def retransmit_alert(ns: str, pod: str, value: str, ratio: str = "2 %", floor: str = "1") -> dict:
    return {
        "exp_labels": {"severity": "warning", "namespace": ns, "pod": pod},
        "exp_annotations": {
            "summary": f"Pod {ns}/{pod} retransmits {value} of its TCP segments",
            "description": RETRANSMIT_DESCRIPTION.format(ns=ns, pod=pod, ratio=ratio, floor=floor),
        },
    }


def run_unit_tests(tmp_path: Path, rules: Path, tests: list[dict], series: list[dict]) -> subprocess.CompletedProcess:
    doc = {"rule_files": [rules.name], "evaluation_interval": "1m",
           "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": tests}]}
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return promtool("test", "rules", path.name, cwd=tmp_path)


def retransmit_series(job: str) -> list[dict]:
    """Per minute: retransmitted segments and segments sent, split over peers
    to show the sums per pod. Figures of real pods as the agent counts them
    (both in segments, like the kernel's RetransSegs and OutSegs +
    RetransSegs; tests/agent/test_programs.py checks that equality):

    cart-1: a bulk sender on a path losing 10 % of its packets: 1,000
            segments/s, 88 of them retransmitted (8.8 %, what the agent
            measured on such a transfer with GSO on: 270 of 3,082 segments,
            in just 6 retransmitted packets)  (above ratio and floor)
    cart-2: a quiet pod on a lossy path, 0.5/s of 5/s = 10 %
                                             (above ratio, under the default floor)
    cart-4: a busy healthy pod, 3/s of 1,000/s = 0.3 %
                                             (above the floor, under the ratio)
    """
    def pair(pod, peer, retrans_per_min, sent_per_min, job=job):
        labels = f'job="{job}",namespace="shop",pod="{pod}",peer_namespace="{peer}"'
        return [{"series": f"netprobe_tcp_retransmits_total{{{labels}}}", "values": f"0+{retrans_per_min}x40"},
                {"series": f"netprobe_tcp_segments_sent_total{{{labels}}}", "values": f"0+{sent_per_min}x40"}]
    return [
        *pair("cart-1", "pay", 3520, 40000), *pair("cart-1", "db", 1760, 20000),
        *pair("cart-2", "pay", 30, 300),
        *pair("cart-4", "pay", 180, 60000),
        # another probe's agents: never this probe's alert
        *pair("cart-3", "pay", 600, 600, job="netprobe-other"),
    ]


def test_retransmit_alert_fires_above_the_threshold_only(render_probe, tmp_path):
    rules = write_rules(tmp_path, render_probe({"programs": ALL}))  # default: 2 % and 1 segment/s
    alert = "NetprobeHighTcpRetransmitRate"
    tests = [
        # pending (for: 10m) but not firing yet
        {"eval_time": "8m", "alertname": alert, "exp_alerts": []},
        # firing for cart-1 only: cart-2 is under the floor, cart-4 under the ratio
        {"eval_time": "20m", "alertname": alert, "exp_alerts": [retransmit_alert("shop", "cart-1", "8.8%")]},
    ]
    result = run_unit_tests(tmp_path, rules, tests, retransmit_series("netprobe-demo"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("thresholds, expected", [
    # a lower floor lets cart-2 (10 % at 0.5/s) fire too
    ({"retransmitsPerSecond": 0.25}, [("cart-1", "8.8%", {"floor": "0.25"}), ("cart-2", "10%", {"floor": "0.25"})]),
    # a lower ratio lets cart-4 (0.3 % at 3/s) fire too
    ({"retransmitRatio": 0.002}, [("cart-1", "8.8%", {"ratio": "0.2 %"}), ("cart-4", "0.3%", {"ratio": "0.2 %"})]),
    # a ratio above everyone's: nothing fires
    ({"retransmitRatio": 0.5}, []),
], ids=["floor", "ratio-low", "ratio-high"])
def test_retransmit_thresholds_come_from_the_spec(render_probe, tmp_path, thresholds, expected):
    rules = write_rules(tmp_path, render_probe({"programs": ALL, "prometheusRule": {"thresholds": thresholds}}))
    tests = [{"eval_time": "20m", "alertname": "NetprobeHighTcpRetransmitRate",
              "exp_alerts": [retransmit_alert("shop", pod, value, **kw) for pod, value, kw in expected]}]
    result = run_unit_tests(tmp_path, rules, tests, retransmit_series("netprobe-demo"))
    assert result.returncode == 0, result.stdout + result.stderr


DNS_DESCRIPTION = (
    "Pod {ns}/{pod} has had more than {ratio} of its DNS queries time out or answered with an error (SERVFAIL, "
    "REFUSED, ...; more than {floor}/s) for 10m: its DNS servers are overloaded, unreachable or failing upstream "
    "(the dashboard shows which server).")


def dns_alert(ns: str, pod: str, value: str, ratio: str = "5 %", floor: str = "0.1") -> dict:
    return {
        "exp_labels": {"severity": "warning", "namespace": ns, "pod": pod},
        "exp_annotations": {
            "summary": f"Pod {ns}/{pod}: {value} of its DNS queries fail",
            "description": DNS_DESCRIPTION.format(ns=ns, pod=pod, ratio=ratio, floor=floor),
        },
    }


def dns_series(job: str) -> list[dict]:
    """Per minute, per pod: queries, timeouts and responses by rcode (split over two servers).

    web-1: 10 queries/s, 0.5 timeouts/s + 0.5 SERVFAIL/s = 10 %     (above ratio and floor)
    web-2: 0.1 queries/s, 0.05 timeouts/s = 50 %                     (above ratio, under the floor)
    web-3: 100 queries/s, 1 REFUSED/s = 1 %, 50 NXDOMAIN/s (normal)  (above the floor, under the ratio)
    web-4: 10 queries/s, 1 SERVFAIL/s = 10 %, no timeout series     (fires: one kind of failure is enough)
    """
    def counter(name, pod, per_min, job=job, **extra):
        labels = ",".join(f'{k}="{v}"' for k, v in {"job": job, "namespace": "shop", "pod": pod,
                                                     "peer_pod": "coredns-1", "qtype": "A", **extra}.items())
        return {"series": f"{name}{{{labels}}}", "values": f"0+{per_min}x40"}
    q, t, r = "netprobe_dns_queries_total", "netprobe_dns_timeouts_total", "netprobe_dns_responses_total"
    return [
        counter(q, "web-1", 300), counter(q, "web-1", 300, qtype="AAAA"), counter(t, "web-1", 30),
        counter(r, "web-1", 30, rcode="SERVFAIL"), counter(r, "web-1", 540, rcode="NOERROR"),
        counter(q, "web-2", 6), counter(t, "web-2", 3), counter(r, "web-2", 3, rcode="NOERROR"),
        counter(q, "web-3", 6000), counter(r, "web-3", 60, rcode="REFUSED"),
        counter(r, "web-3", 3000, rcode="NXDOMAIN"),
        counter(q, "web-4", 600), counter(r, "web-4", 60, rcode="SERVFAIL"),
        # another probe's agents: never this probe's alert
        counter(q, "web-5", 60, job="netprobe-other"), counter(t, "web-5", 60, job="netprobe-other"),
    ]


@pytest.mark.parametrize("thresholds, expected", [
    ({}, [("web-1", "10%", {}), ("web-4", "10%", {})]),
    # a lower floor lets web-2 (50 % at 0.05/s) fire too
    ({"dnsErrorsPerSecond": 0.01}, [("web-1", "10%", {"floor": "0.01"}), ("web-2", "50%", {"floor": "0.01"}),
                                    ("web-4", "10%", {"floor": "0.01"})]),
    # a lower ratio lets web-3 (1 % REFUSED; its NXDOMAIN are no failures) fire too
    ({"dnsErrorRatio": 0.005}, [("web-1", "10%", {"ratio": "0.5 %"}), ("web-3", "1%", {"ratio": "0.5 %"}),
                                ("web-4", "10%", {"ratio": "0.5 %"})]),
    ({"dnsErrorRatio": 0.6}, []),
], ids=["default", "floor", "ratio-low", "ratio-high"])
def test_dns_error_alert_fires_above_the_spec_thresholds_only(render_probe, tmp_path, thresholds, expected):
    rules = write_rules(tmp_path, render_probe({"programs": ALL, "prometheusRule": {"thresholds": thresholds}}))
    alert = "NetprobeHighDnsErrorRate"
    tests = [{"eval_time": "8m", "alertname": alert, "exp_alerts": []},   # pending (for: 10m)
             {"eval_time": "20m", "alertname": alert,
              "exp_alerts": [dns_alert("shop", pod, value, **kw) for pod, value, kw in expected]}]
    result = run_unit_tests(tmp_path, rules, tests, dns_series("netprobe-demo"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_agent_health_alerts(render_probe, tmp_path):
    rules = write_rules(tmp_path, render_probe({"programs": ALL}))
    series = [
        {"series": 'up{job="netprobe-demo",node="n1",instance="192.0.2.1:9435"}', "values": "1x5 0x15"},
        {"series": 'up{job="netprobe-demo",node="n2",instance="192.0.2.2:9435"}', "values": "1x20"},
        {"series": 'netprobe_program_up{job="netprobe-demo",node="n2",program="rx_latency"}', "values": "1x5 0x15"},
        {"series": 'netprobe_program_up{job="netprobe-demo",node="n2",program="tcp_rtt"}', "values": "1x20"},
        {"series": 'netprobe_agent_config_reload_errors_total{job="netprobe-demo",node="n1"}', "values": "0x5 1x15"},
        {"series": 'netprobe_map_fill_ratio{job="netprobe-demo",node="n1",program="tcp_rtt",map="rtt"}',
         "values": "0.5x5 0.95x25"},
    ]
    tests = [
        {"eval_time": "15m", "alertname": "NetprobeAgentDown", "exp_alerts": [{
            "exp_labels": {"severity": "warning", "job": "netprobe-demo", "node": "n1", "instance": "192.0.2.1:9435"},
            "exp_annotations": {
                "summary": "netprobe agent on n1 is not being scraped",
                "description": "Prometheus cannot scrape the netprobe agent of NetworkProbe demo on node n1 "
                               "(192.0.2.1:9435) for 5 minutes: no network metrics from that node."}}]},
        {"eval_time": "9m", "alertname": "NetprobeProgramLoadFailed", "exp_alerts": []},  # pending
        {"eval_time": "15m", "alertname": "NetprobeProgramLoadFailed", "exp_alerts": [{
            "exp_labels": {"severity": "warning", "node": "n2", "program": "rx_latency"},
            "exp_annotations": {
                "summary": "netprobe program rx_latency is not running on n2",
                "description": "Kernel program rx_latency of NetworkProbe demo failed to load on node n2, so its "
                               "metrics are missing there. netprobe_program_errors_total{program=\"rx_latency\"} "
                               "gives the failing stage (compile, load, attach); the agent log and "
                               "`netprobe-agent doctor` say why."}}]},
        {"eval_time": "8m", "alertname": "NetprobeAgentConfigRejected", "exp_alerts": [{
            "exp_labels": {"severity": "warning", "node": "n1"},
            "exp_annotations": {
                "summary": "netprobe agent on n1 refused its new config",
                "description": "The agent of NetworkProbe demo on node n1 refused a changed config and keeps "
                               "running the previous one; the agent log names the field. The operator and "
                               "agent versions may not match."}}]},
        # ten minutes after the refusal the alert resolves by itself
        {"eval_time": "19m", "alertname": "NetprobeAgentConfigRejected", "exp_alerts": []},
        {"eval_time": "25m", "alertname": "NetprobeMapNearlyFull", "exp_alerts": [{
            "exp_labels": {"severity": "info", "node": "n1", "program": "tcp_rtt", "map": "rtt"},
            "exp_annotations": {
                "summary": "netprobe map tcp_rtt/rtt is over 90 % full on n1",
                "description": "An LRU map of NetworkProbe demo is nearly full: older entries are being evicted "
                               "(netprobe_map_evictions_total). Raise maxEntries of the program in the probe."}}]},
    ]
    result = run_unit_tests(tmp_path, rules, tests, series)
    assert result.returncode == 0, result.stdout + result.stderr
