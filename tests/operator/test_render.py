"""Rendering: a probe spec in, the exact manifests out, no cluster."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from node_agent import config as agent_config
from netprobe_operator.program_schema import crd_field
from node_agent.kernel.features import DAEMONSET_CAPABILITIES
from node_agent.programs import CATALOGUE as AGENT_CATALOGUE

from crd_schema import non_default

REPO = Path(__file__).resolve().parents[2]
SOME_OPTIONS = {"rx_latency": {"attach": "tracepoint", "maxEntries": 4096}, "tcp_connections": {"maxEntries": 65536}}
ALL_IMPLEMENTED = [{"name": name, **SOME_OPTIONS.get(name, {})} for name in AGENT_CATALOGUE]


def test_full_set_in_apply_order(render_probe):
    rendered = render_probe({"programs": ALL_IMPLEMENTED})
    kinds = [(m["kind"], m["metadata"]["name"]) for m in rendered.manifests]
    assert kinds == [
        ("Secret", "netprobe-demo-ca"), ("Secret", "netprobe-demo-tls"), ("ConfigMap", "netprobe-demo-ca"),
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
    assert set(parsed.programs) == set(AGENT_CATALOGUE)
    assert parsed.programs["rx_latency"]["attach"] == "tracepoint"
    assert parsed.programs["rx_latency"]["max_entries"] == 4096
    assert parsed.programs["tcp_connections"]["max_entries"] == 65536
    # node_name stays out: the agent takes $NODE_NAME from the downward API.
    assert "node_name" not in yaml.safe_load(text)


def test_every_option_of_every_program_reaches_the_agent_config(render_probe):
    """One pass-through rule: each option set in a probe (camelCase) arrives in the
    agent config (snake_case) with its value, and the agent's parser accepts it."""
    programs = [{"name": spec.name, **{crd_field(o.name): non_default(o) for o in spec.options}}
                for spec in AGENT_CATALOGUE.values()]
    text = render_probe({"programs": programs}).one("ConfigMap", "netprobe-demo")["data"]["agent.yaml"]
    parsed = agent_config.parse_config(text)
    for spec in AGENT_CATALOGUE.values():
        assert parsed.programs[spec.name] == {o.name: non_default(o) for o in spec.options}
        assert parsed.programs[spec.name] != spec.defaults()


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
    # SYSLOG: every program is selected, dns among them.
    assert sc["capabilities"] == {"drop": ["ALL"], "add": [*DAEMONSET_CAPABILITIES, "SYSLOG"]}
    assert "SYS_RESOURCE" not in DAEMONSET_CAPABILITIES
    assert "SYS_ADMIN" not in json.dumps(daemonset)
    assert sc["readOnlyRootFilesystem"] is True
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "hostPID" not in pod and "hostIPC" not in pod


WITHOUT_DNS = [p for p in ALL_IMPLEMENTED if p["name"] != "dns"]


@pytest.mark.parametrize("programs, raise_memlock, added", [
    (WITHOUT_DNS, None, ["BPF", "PERFMON", "NET_ADMIN"]),
    (WITHOUT_DNS, False, ["BPF", "PERFMON", "NET_ADMIN"]),
    (WITHOUT_DNS, True, ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"]),
    # dns reads TCP payload through the direct map, whose base only kallsyms gives (to SYSLOG)
    (ALL_IMPLEMENTED, None, ["BPF", "PERFMON", "NET_ADMIN", "SYSLOG"]),
    ([{"name": "dns"}], True, ["BPF", "PERFMON", "NET_ADMIN", "SYSLOG", "SYS_RESOURCE"]),
])
def test_sys_resource_and_syslog_only_when_needed(render_probe, programs, raise_memlock, added):
    agent = {} if raise_memlock is None else {"raiseMemlockLimit": raise_memlock}
    ds = render_probe({"programs": programs, "agent": agent}).one("DaemonSet")
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": added}


def test_doctor_checks_the_capabilities_the_daemonset_grants():
    from netprobe_operator import render
    from node_agent import doctor
    assert render.agent_capabilities({"agent": {}}) == list(doctor.DAEMONSET_CAPABILITIES)
    assert render.agent_capabilities({"agent": {"raiseMemlockLimit": True}}) == \
        [*doctor.DAEMONSET_CAPABILITIES, "SYS_RESOURCE"]
    assert render.agent_capabilities({"agent": {}, "programs": [{"name": "dns"}]}) == \
        [*doctor.DAEMONSET_CAPABILITIES, "SYSLOG"]


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
    # The port comes from the pod spec, the same as containerPort (9436 in this probe).
    assert container["command"] + container["args"] == ["netprobe-agent", "--config", "/etc/netprobe/agent.yaml",
                                                        "--listen", "0.0.0.0:9436"]
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
                             "prometheusRule": {"enabled": False}, "dashboards": {"enabled": False},
                             "agent": {"secureMetrics": False}})
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


# --- securing /metrics (issue 15) ---------------------------------------------


def _b64(data: str) -> bytes:
    import base64
    return base64.b64decode(data)


def test_secure_metrics_by_default(render_probe, certificates):
    rendered = render_probe({"programs": [{"name": "tcp_rtt"}], "agent": {"metricsPort": 9440}})
    ca_secret = rendered.one("Secret", "netprobe-demo-ca")
    assert ca_secret["type"] == "Opaque" and set(ca_secret["data"]) == {"ca.crt", "ca.key"}
    assert _b64(ca_secret["data"]["ca.key"]) == certificates.ca_key
    tls = rendered.one("Secret", "netprobe-demo-tls")
    assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert _b64(tls["data"]["tls.crt"]) == certificates.cert
    assert rendered.one("ConfigMap", "netprobe-demo-ca")["data"] == {"ca.crt": certificates.ca_cert.decode()}
    # the agent: the certificate mounted read-only, no key of the CA anywhere near it
    pod = rendered.one("DaemonSet")["spec"]["template"]["spec"]
    tls_volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls_volume["secret"]["secretName"] == "netprobe-demo-tls"
    assert {i["key"] for i in tls_volume["secret"]["items"]} == {"tls.crt", "tls.key"}
    assert "netprobe-demo-ca" not in json.dumps(pod)
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls")
    assert mount == {"name": "tls", "mountPath": "/etc/netprobe-tls", "readOnly": True}
    # probes stay plain HTTP on the metrics port
    assert pod["containers"][0]["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    config = agent_config.parse_config(rendered.one("ConfigMap", "netprobe-demo")["data"]["agent.yaml"])
    assert config.tls == agent_config.TLSConfig("/etc/netprobe-tls/tls.crt", "/etc/netprobe-tls/tls.key")
    assert config.authorization == agent_config.AuthorizationConfig(cache_seconds=30.0)
    (endpoint,) = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert endpoint["tlsConfig"] == {"ca": {"configMap": {"name": "netprobe-demo-ca", "key": "ca.crt"}},
                                     "serverName": "netprobe-demo.netprobe-system.svc"}


def test_the_certificate_names_what_the_servicemonitor_checks(render_probe):
    from cryptography import x509
    rendered = render_probe({"programs": [{"name": "tcp_rtt"}]})
    cert = x509.load_pem_x509_certificate(_b64(rendered.one("Secret", "netprobe-demo-tls")["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (endpoint,) = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"]["serverName"] in names.get_values_for_type(x509.DNSName)


def test_secure_metrics_off_is_plain_http(render_probe):
    rendered = render_probe({"programs": [{"name": "tcp_rtt"}], "agent": {"secureMetrics": False}})
    assert rendered.by_kind("Secret") == [] and rendered.find("ConfigMap", "netprobe-system", "netprobe-demo-ca") is None
    config = agent_config.parse_config(rendered.one("ConfigMap", "netprobe-demo")["data"]["agent.yaml"])
    assert config.tls is None and config.authorization is None
    (endpoint,) = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    assert "scheme" not in endpoint and "tlsConfig" not in endpoint and "bearerTokenFile" not in endpoint
    pod = rendered.one("DaemonSet")["spec"]["template"]["spec"]
    assert "tls" not in {v["name"] for v in pod["volumes"]}
    # switching it rolls the pods (the volume changes), since the agent is reconfigured anyway
    secure = render_probe({"programs": [{"name": "tcp_rtt"}]}).one("DaemonSet")["spec"]["template"]
    assert secure != rendered.one("DaemonSet")["spec"]["template"]


def test_secure_metrics_without_certificates_is_a_bug_not_a_plain_endpoint(operator_settings):
    from netprobe_operator import render
    import crd_schema
    probe = render.Probe("demo", "u", crd_schema.defaulted_spec({"programs": [{"name": "tcp_rtt"}]}))
    with pytest.raises(ValueError, match="secureMetrics needs the probe's certificates"):
        render.render(probe, operator_settings)
