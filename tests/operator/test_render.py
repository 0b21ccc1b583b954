"""Rendering: a probe spec in, the exact manifests out, no cluster."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from netprobe_operator import agent_support
from node_agent import config as agent_config
from node_agent.programs import CATALOGUE as AGENT_CATALOGUE

REPO = Path(__file__).resolve().parents[2]
ALL_IMPLEMENTED = [{"name": "rx_latency", "attach": "tracepoint", "maxEntries": 4096},
                   {"name": "tcp_retransmit"}, {"name": "tcp_connections", "maxEntries": 65536},
                   {"name": "tcp_rtt"}]


def test_exported_metrics_are_named_by_the_agent():
    # Dashboards and alerts may only use agent_support.EXPORTED_METRICS; each of
    # those must appear in the agent's source, so a rename there fails here.
    source = " ".join(p.read_text() for p in (REPO / "node_agent").rglob("*.py"))
    missing = [m for m in agent_support.EXPORTED_METRICS if f'"{m}"' not in source and f"'{m}'" not in source]
    assert missing == []


def test_implemented_programs_are_what_the_agent_implements():
    # The operator's single list must follow the agent: a test, not a hope.
    assert agent_support.IMPLEMENTED_PROGRAMS == set(AGENT_CATALOGUE)


def test_full_set_in_apply_order(render_probe):
    rendered = render_probe({"programs": ALL_IMPLEMENTED})
    kinds = [(m["kind"], m["metadata"]["name"]) for m in rendered.manifests]
    assert kinds == [
        ("ConfigMap", "netprobe-demo"), ("Service", "netprobe-demo"), ("DaemonSet", "netprobe-demo"),
        ("ServiceMonitor", "netprobe-demo"), ("PrometheusRule", "netprobe-demo"),
        ("ConfigMap", "netprobe-demo-dashboard-overview"), ("ConfigMap", "netprobe-demo-dashboard-agents"),
    ]


def test_every_object_is_owned_by_the_probe_and_labelled(render_probe):
    for m in render_probe({"programs": ALL_IMPLEMENTED}, name="p1", uid="u-1").manifests:
        assert m["metadata"]["namespace"] == "netprobe-system"
        assert m["metadata"]["ownerReferences"] == [{
            "apiVersion": "netprobe.io/v1alpha1", "kind": "NetworkProbe", "name": "p1",
            "uid": "u-1", "controller": True, "blockOwnerDeletion": True}]
        labels = m["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "netprobe-operator"
        assert labels["netprobe.io/probe"] == "p1"


def test_rendering_is_deterministic(render_probe):
    spec = {"programs": ALL_IMPLEMENTED, "serviceMonitor": {"labels": {"release": "kps"}}}
    assert render_probe(spec).manifests == render_probe(spec).manifests


def test_agent_config_is_accepted_by_the_agent(render_probe):
    rendered = render_probe({
        "programs": ALL_IMPLEMENTED, "labels": ["peer_pod", "workload"],
        "resolver": {"peers": "cluster", "deletedPodGraceSeconds": 120},
        "agent": {"logLevel": "debug", "metricsPort": 9500},
    })
    text = rendered.one("ConfigMap", "netprobe-demo")["data"]["agent.yaml"]
    parsed = agent_config.parse_config(text)  # the agent's own validator
    assert parsed.listen_port == 9500 and parsed.log_level == "debug"
    assert set(parsed.labels) == {"namespace", "pod", "workload", "peer_pod"}
    assert parsed.resolver == agent_config.KubernetesResolverConfig("cluster", 120.0)
    assert set(parsed.programs) == {"rx_latency", "tcp_retransmit", "tcp_connections", "tcp_rtt"}
    assert parsed.programs["rx_latency"]["attach"] == "tracepoint"
    assert parsed.programs["rx_latency"]["max_entries"] == 4096
    assert parsed.programs["tcp_connections"]["max_entries"] == 65536
    # node_name stays out: the agent takes $NODE_NAME from the downward API.
    assert "node_name" not in yaml.safe_load(text)


def test_agent_config_options_only_where_given(render_probe):
    text = render_probe({"programs": [{"name": "tcp_rtt"}]}).one("ConfigMap", "netprobe-demo")["data"]["agent.yaml"]
    assert yaml.safe_load(text)["programs"] == {"tcp_rtt": {}}


@pytest.fixture
def daemonset(render_probe):
    return render_probe({
        "programs": ALL_IMPLEMENTED, "nodeSelector": {"zone": "a"},
        "tolerations": [{"operator": "Exists"}],
        "agent": {"metricsPort": 9436, "priorityClassName": "system-node-critical",
                  "maxUnavailable": "10%"},
    }).one("DaemonSet")


def test_daemonset_least_privilege(daemonset):
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    # No SYS_RESOURCE by default: a runtime on a host without it cannot start the pod.
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "NET_ADMIN"]}
    assert "SYS_ADMIN" not in json.dumps(daemonset)
    assert sc["readOnlyRootFilesystem"] is True
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "hostPID" not in pod and "hostIPC" not in pod


@pytest.mark.parametrize("raise_memlock, added", [
    (None, ["BPF", "PERFMON", "NET_ADMIN"]),
    (False, ["BPF", "PERFMON", "NET_ADMIN"]),
    (True, ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"]),
])
def test_sys_resource_only_when_asked_for(render_probe, raise_memlock, added):
    agent = {} if raise_memlock is None else {"raiseMemlockLimit": raise_memlock}
    ds = render_probe({"programs": ALL_IMPLEMENTED, "agent": agent}).one("DaemonSet")
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": added}


def test_doctor_checks_the_capabilities_the_daemonset_grants():
    from netprobe_operator import render
    from node_agent import doctor
    assert doctor.DAEMONSET_CAPABILITIES == render.AGENT_CAPABILITIES


def test_daemonset_host_mounts_are_read_only(daemonset):
    pod = daemonset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    for path in ("/sys", "/sys/kernel/debug", "/sys/kernel/tracing", "/sys/fs/bpf",
                 "/sys/fs/cgroup", "/lib/modules", "/usr/src"):
        mount = mounts[path]
        assert mount["readOnly"] is True, path
        assert volumes[mount["name"]]["hostPath"]["path"] == path
    writable = [m["mountPath"] for m in mounts.values() if not m.get("readOnly")]
    assert writable == ["/run/netprobe", "/tmp"]
    assert "emptyDir" in volumes["run"] and "emptyDir" in volumes["tmp"]


def test_daemonset_agent_command_config_and_node_name(daemonset):
    pod = daemonset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] + container["args"] == ["netprobe-agent", "--config", "/etc/netprobe/agent.yaml"]
    assert container["image"] == "registry.example/netprobe:test"  # the operator's default
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert config_mount["mountPath"] == "/etc/netprobe" and "subPath" not in config_mount  # updates in place
    assert next(v for v in pod["volumes"] if v["name"] == "config")["configMap"]["name"] == "netprobe-demo"
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert pod["serviceAccountName"] == "netprobe-agent"


def test_daemonset_probes_ports_scheduling_and_rollout(daemonset):
    pod = daemonset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9436, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert pod["nodeSelector"] == {"zone": "a", "kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%", "maxSurge": 0}}
    assert daemonset["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "netprobe-agent", "netprobe.io/probe": "demo"}


def test_program_changes_do_not_touch_the_pod_template(render_probe):
    # The ConfigMap volume carries program changes to the agent's hot reload;
    # a pod template change would restart every agent for nothing.
    before = render_probe({"programs": [{"name": "tcp_rtt"}]})
    after = render_probe({"programs": [{"name": "tcp_rtt"}, {"name": "tcp_retransmit"}],
                          "agent": {"logLevel": "debug"}})
    assert before.one("DaemonSet")["spec"]["template"] == after.one("DaemonSet")["spec"]["template"]
    assert before.one("ConfigMap", "netprobe-demo") != after.one("ConfigMap", "netprobe-demo")


def test_image_and_port_changes_roll_the_pods(render_probe):
    base = render_probe({"programs": [{"name": "tcp_rtt"}]}).one("DaemonSet")["spec"]["template"]
    image = render_probe({"programs": [{"name": "tcp_rtt"}], "agent": {"image": "x/y:2"}}).one("DaemonSet")
    port = render_probe({"programs": [{"name": "tcp_rtt"}], "agent": {"metricsPort": 9999}}).one("DaemonSet")
    assert image["spec"]["template"] != base and port["spec"]["template"] != base
    assert image["spec"]["template"]["spec"]["containers"][0]["image"] == "x/y:2"


def test_service_and_servicemonitor(render_probe):
    rendered = render_probe({"programs": [{"name": "tcp_rtt"}], "agent": {"metricsPort": 9440},
                             "serviceMonitor": {"interval": "15s", "labels": {"release": "kps"}}})
    service = rendered.one("Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9440, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"] == rendered.one("DaemonSet")["spec"]["selector"]["matchLabels"]
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["netprobe-system"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["interval"] == "15s"


def test_user_labels_cannot_replace_the_operators_own(render_probe):
    rendered = render_probe({"programs": [{"name": "tcp_rtt"}],
                             "serviceMonitor": {"labels": {"netprobe.io/probe": "other", "release": "r"}}})
    assert rendered.one("ServiceMonitor")["metadata"]["labels"]["netprobe.io/probe"] == "demo"


def test_disabled_parts_are_not_rendered(render_probe):
    rendered = render_probe({"programs": [{"name": "tcp_rtt"}], "serviceMonitor": {"enabled": False},
                             "prometheusRule": {"enabled": False}, "dashboards": {"enabled": False}})
    assert [m["kind"] for m in rendered.manifests] == ["ConfigMap", "Service", "DaemonSet"]


def test_alerts_follow_the_programs(render_probe):
    def alerts(programs):
        rule = render_probe({"programs": [{"name": p} for p in programs]}).one("PrometheusRule")
        return [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    health = ["NetprobeAgentDown", "NetprobeProgramLoadFailed", "NetprobeAgentConfigRejected",
              "NetprobeMapNearlyFull"]
    assert alerts(["tcp_rtt"]) == health
    assert "NetprobeHighTcpRetransmitRate" in alerts(["tcp_retransmit"])
    assert "NetprobeHighRxLatency" in alerts(["rx_latency"])


def test_dashboards_configmaps(render_probe):
    rendered = render_probe({"programs": [{"name": "tcp_rtt"}],
                             "dashboards": {"namespace": "monitoring", "labels": {"grafana_dashboard": "1"}}})
    uids = set()
    for key in ("overview", "agents"):
        cm = rendered.one("ConfigMap", f"netprobe-demo-dashboard-{key}")
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        (text,) = cm["data"].values()
        dashboard = json.loads(text)
        assert len(dashboard["uid"]) <= 40
        assert dashboard["title"].startswith("netprobe / demo / ")
        job = next(v for v in dashboard["templating"]["list"] if v["name"] == "job")
        assert job["query"] == "netprobe-demo"
        uids.add(dashboard["uid"])
    assert len(uids) == 2
    other = render_probe({"programs": [{"name": "tcp_rtt"}]}, name="other")
    other_uid = json.loads(next(iter(other.one("ConfigMap", "netprobe-other-dashboard-overview")["data"].values())))["uid"]
    assert other_uid not in uids  # two probes, two distinct Grafana dashboards


def test_hostile_strings_stay_values(render_probe):
    # Every value goes through tojson: YAML syntax in a label cannot inject fields.
    rendered = render_probe({"programs": [{"name": "tcp_rtt"}],
                             "serviceMonitor": {"labels": {"team": "a\nkind: Secret"}},
                             "agent": {"image": "img:1\"\n  privileged: true"}})
    assert rendered.one("ServiceMonitor")["metadata"]["labels"]["team"] == "a\nkind: Secret"
    container = rendered.one("DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "img:1\"\n  privileged: true"
    assert container["securityContext"]["privileged"] is False
