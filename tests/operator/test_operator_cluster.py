"""The operator as a real process against the real control plane (issue 4's proofs).

One installation per module (manifests applied, operator started as its
ServiceAccount); every test uses its own probe names and metrics ports and
deletes its probes, so the tests do not depend on each other's objects. The
first test starts without the monitoring CRDs and installs them.
"""
from __future__ import annotations

import copy
import json

import pytest
import yaml

from crd_schema import non_default
from netprobe_operator.program_schema import crd_field
from netprobe_testbed import operator_harness as nc
from netprobe_testbed.operator_harness import NAMESPACE, REPO
from node_agent.config import parse_config
from node_agent.programs import CATALOGUE

pytestmark = pytest.mark.cluster

EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
OPERATOR_SA = f"system:serviceaccount:{NAMESPACE}:netprobe-operator"


@pytest.fixture(scope="module")
def netprobe(control_plane, kube_api, tmp_path_factory):
    installed = nc.install(control_plane, kube_api, tmp_path_factory.mktemp("operator"))
    yield installed
    nc.uninstall(installed)


@pytest.fixture
def monitoring_crds(netprobe):
    if not netprobe.monitoring_crds_installed():
        netprobe.install_monitoring_crds()


@pytest.fixture
def probes(netprobe):
    """probes(name, spec) applies a NetworkProbe; all are deleted after the test."""
    made = []

    def make(name: str, spec: dict) -> dict:
        body = {"apiVersion": "netprobe.io/v1alpha1", "kind": "NetworkProbe",
                "metadata": {"name": name}, "spec": spec}
        netprobe.apply_probe(body)
        made.append(name)
        return body
    yield make
    for name in made:
        netprobe.delete_probe(name)


def pool_spec(netprobe, port: int, **extra) -> dict:
    """A probe on this module's two fake nodes only, on its own port."""
    spec = {"programs": [{"name": "tcp_retransmit"}, {"name": "tcp_rtt"}],
            "nodeSelector": {"netprobe.test/pool": netprobe.pool},
            "agent": {"metricsPort": port}}
    spec.update(extra)
    return spec


def owned_by(obj: dict, probe: dict) -> bool:
    (ref,) = obj["metadata"]["ownerReferences"]
    return (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "NetworkProbe", probe["metadata"]["name"], probe["metadata"]["uid"], True)


# --- installation and identity ------------------------------------------------


def allowed(netprobe, user, verb, resource, namespace=None, group=""):
    """A SubjectAccessReview, not `kubectl auth can-i`: it works for resources
    whose CRD is not installed yet. `resource` may name a subresource (pods/status)."""
    sa_namespace = user.split(":")[2]
    resource, _, subresource = resource.partition("/")
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": user,
                       "groups": ["system:serviceaccounts", f"system:serviceaccounts:{sa_namespace}",
                                  "system:authenticated"],
                       "resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                              "subresource": subresource, "namespace": namespace or ""}}}
    reply = netprobe.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review))
    return json.loads(reply.stdout)["status"].get("allowed", False)


def test_agent_service_account_has_only_the_resolver_and_review_rights(netprobe):
    agent = f"system:serviceaccount:{NAMESPACE}:netprobe-agent"
    assert allowed(netprobe, agent, "list", "pods") and allowed(netprobe, agent, "watch", "pods")
    assert allowed(netprobe, agent, "get", "replicasets", "shop", "apps")
    # who may read /metrics: token and access reviews, create only
    assert allowed(netprobe, agent, "create", "tokenreviews", None, "authentication.k8s.io")
    assert allowed(netprobe, agent, "create", "subjectaccessreviews", None, "authorization.k8s.io")
    assert not allowed(netprobe, agent, "list", "subjectaccessreviews", None, "authorization.k8s.io")
    assert not allowed(netprobe, agent, "create", "localsubjectaccessreviews", NAMESPACE, "authorization.k8s.io")
    assert not allowed(netprobe, agent, "create", "serviceaccounts/token", NAMESPACE)
    assert not allowed(netprobe, agent, "get", "secrets", NAMESPACE)
    assert not allowed(netprobe, agent, "list", "replicasets", None, "apps")
    assert not allowed(netprobe, agent, "patch", "pods", "shop")
    # its own pod's ProgramsLoaded condition: pods/status, in its namespace only
    assert allowed(netprobe, agent, "patch", "pods/status", NAMESPACE)
    assert not allowed(netprobe, agent, "patch", "pods/status", "shop")
    assert not allowed(netprobe, agent, "patch", "pods", NAMESPACE)
    assert not allowed(netprobe, agent, "update", "pods/status", NAMESPACE)


def test_operator_runs_with_least_privilege(netprobe):
    def can(verb, resource, namespace=None, group=""):
        return allowed(netprobe, OPERATOR_SA, verb, resource, namespace, group)
    assert can("patch", "daemonsets", NAMESPACE, "apps")
    assert can("create", "servicemonitors", NAMESPACE, "monitoring.coreos.com")
    assert can("patch", "networkprobes/status", group="netprobe.io")
    assert not can("create", "daemonsets", "default", "apps")
    # the Secrets of its certificates, in its own namespace only
    assert can("create", "secrets", NAMESPACE) and can("get", "secrets", NAMESPACE)
    assert not can("get", "secrets", "default") and not can("list", "secrets")
    assert not can("create", "tokenreviews", group="authentication.k8s.io")
    assert not can("list", "pods")
    # its agent pods' state (Degraded), read only, in its namespace only
    assert can("watch", "pods", NAMESPACE) and can("list", "pods", NAMESPACE)
    assert not can("patch", "pods", NAMESPACE) and not can("list", "pods", "default")
    assert not can("delete", "nodes")
    # the process really authenticates as that account, not as admin
    kubeconfig = yaml.safe_load((netprobe.operator.log_path.parent / "operator.kubeconfig").read_text())
    assert kubeconfig["users"][0]["name"] == OPERATOR_SA


def test_monitoring_crds_absent_then_installed(netprobe, probes):
    if netprobe.monitoring_crds_installed():
        netprobe.remove_monitoring_crds()
    probes("no-monitoring", pool_spec(netprobe, 9601))
    cond = netprobe.wait_condition("no-monitoring", "MonitoringConfigured", "False", "MonitoringCRDsMissing")
    assert "ServiceMonitor and PrometheusRule skipped" in cond["message"]
    # the agent is deployed all the same
    netprobe.wait_child("DaemonSet", "netprobe-no-monitoring")
    status = netprobe.probe("no-monitoring")["status"]
    assert any(s.startswith("ServiceMonitor/netprobe-no-monitoring") for s in status["skipped"])

    netprobe.install_monitoring_crds()
    probe = netprobe.probe("no-monitoring")
    monitor = netprobe.wait_child("ServiceMonitor", "netprobe-no-monitoring")
    rule = netprobe.wait_child("PrometheusRule", "netprobe-no-monitoring")
    assert owned_by(monitor, probe) and owned_by(rule, probe)
    netprobe.wait_condition("no-monitoring", "MonitoringConfigured", "True", "Applied")
    assert netprobe.probe("no-monitoring")["status"]["skipped"] == []


# --- the examples -------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_probe_yields_its_objects_and_becomes_ready(netprobe, monitoring_crds, example):
    manifest = yaml.safe_load(example.read_text())
    name = manifest["metadata"]["name"]
    try:
        netprobe.apply_probe(example.read_text())
        daemonset = netprobe.wait_child("DaemonSet", f"netprobe-{name}")
        probe = netprobe.probe(name)
        spec = probe["spec"]
        expected = {("ConfigMap", f"netprobe-{name}"), ("Service", f"netprobe-{name}"),
                    ("DaemonSet", f"netprobe-{name}")}
        if spec["serviceMonitor"]["enabled"]:
            expected.add(("ServiceMonitor", f"netprobe-{name}"))
        if spec["prometheusRule"]["enabled"]:
            expected.add(("PrometheusRule", f"netprobe-{name}"))
        if spec["dashboards"]["enabled"]:
            expected |= {("ConfigMap", f"netprobe-{name}-dashboard-overview"),
                         ("ConfigMap", f"netprobe-{name}-dashboard-agents")}
        if spec["agent"]["secureMetrics"]:
            expected |= {("Secret", f"netprobe-{name}-ca"), ("Secret", f"netprobe-{name}-tls"),
                         ("ConfigMap", f"netprobe-{name}-ca")}
        netprobe.wait(f"all objects of {name}", lambda: {
            (o["kind"], o["metadata"]["name"]) for o in netprobe.children(name)} == expected)
        for obj in netprobe.children(name):
            assert owned_by(obj, probe), (obj["kind"], obj["metadata"]["name"])

        # agent pods land on the fake nodes the probe selects; ready pods make the probe Ready
        nodes = netprobe.mark_agents_ready(name)
        selector = spec.get("nodeSelector") or {}
        for node in nodes:
            labels = netprobe.get_json("node", node)["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in selector.items())
        ready = netprobe.wait_condition(name, "Ready", "True", "AgentsReady")
        assert ready["message"] == f"all {len(nodes)} agent pods are ready"
        assert netprobe.condition(name, "Degraded")["status"] == "False"

        table = netprobe.kubectl("get", "networkprobes", name).stdout.splitlines()
        assert table[0].split() == ["NAME", "PROGRAMS", "NODES", "READY", "AGE"]
        row = table[1].split()
        assert row[:4] == [name, ",".join(p["name"] for p in spec["programs"]),
                           f"{len(nodes)}/{len(nodes)}", "True"]
        wide = netprobe.kubectl("get", "np", name, "-o", "wide").stdout.splitlines()
        assert "REASON" in wide[0] and "AgentsReady" in wide[1]
        assert daemonset["spec"]["template"]["spec"]["containers"][0]["image"] == \
            spec["agent"].get("image", "registry.test/netprobe:test")
    finally:
        netprobe.delete_probe(name)


# --- drift --------------------------------------------------------------------


def test_deleted_children_come_back(netprobe, probes):
    probes("drift-delete", pool_spec(netprobe, 9611))
    netprobe.mark_agents_ready("drift-delete")
    netprobe.wait_condition("drift-delete", "Ready", "True")
    for kind in ("DaemonSet", "ConfigMap", "Service"):
        old = netprobe.child(kind, "netprobe-drift-delete")
        netprobe.kubectl("delete", nc.CHILD_KINDS[kind], "-n", NAMESPACE, "netprobe-drift-delete", "--wait=true")
        back = netprobe.wait_child(kind, "netprobe-drift-delete",
                                   lambda o: o["metadata"]["uid"] != old["metadata"]["uid"])
        assert back["metadata"]["ownerReferences"] == old["metadata"]["ownerReferences"]
    # a recreated DaemonSet has unready pods again: the status follows
    netprobe.wait_condition("drift-delete", "Ready", "False")


def test_a_deleted_serving_certificate_is_reissued_from_the_same_ca(netprobe, probes):
    probes("drift-cert", pool_spec(netprobe, 9613))
    old = netprobe.wait_child("Secret", "netprobe-drift-cert-tls")
    ca = netprobe.wait_child("ConfigMap", "netprobe-drift-cert-ca")
    netprobe.kubectl("delete", "secret", "-n", NAMESPACE, "netprobe-drift-cert-tls", "--wait=true")
    new = netprobe.wait_child("Secret", "netprobe-drift-cert-tls",
                              lambda o: o["metadata"]["uid"] != old["metadata"]["uid"])
    assert new["data"]["tls.key"] != old["data"]["tls.key"]
    assert new["data"]["ca.crt"] == old["data"]["ca.crt"]
    assert netprobe.child("ConfigMap", "netprobe-drift-cert-ca")["data"] == ca["data"]


def test_hand_edits_are_reverted_but_foreign_fields_kept(netprobe, probes):
    probes("drift-edit", pool_spec(netprobe, 9612))
    ds_name = "netprobe-drift-edit"
    daemonset = netprobe.wait_child("DaemonSet", ds_name)
    image = daemonset["spec"]["template"]["spec"]["containers"][0]["image"]
    netprobe.kubectl("annotate", "daemonset", "-n", NAMESPACE, ds_name, "team.example/owner=sre")
    netprobe.kubectl("patch", "daemonset", "-n", NAMESPACE, ds_name, "-p", json.dumps(
        {"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "evil.example/agent:1",
                                                        "securityContext": {"privileged": True,
                                                                            "allowPrivilegeEscalation": True}}]}}}}))
    back = netprobe.wait_child("DaemonSet", ds_name, lambda d: (
        d["spec"]["template"]["spec"]["containers"][0]["image"] == image))
    container = back["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["privileged"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert back["metadata"]["annotations"]["team.example/owner"] == "sre"  # not ours: left alone

    netprobe.kubectl("patch", "configmap", "-n", NAMESPACE, ds_name, "--type", "merge",
                     "-p", json.dumps({"data": {"agent.yaml": "programs: {}\n"}}))
    config = netprobe.wait_child("ConfigMap", ds_name, lambda c: "tcp_retransmit" in c["data"]["agent.yaml"])
    assert yaml.safe_load(config["data"]["agent.yaml"])["programs"] == {"tcp_retransmit": {}, "tcp_rtt": {}}


# --- spec changes -------------------------------------------------------------


def test_every_program_option_reaches_the_agent_config_through_the_operator(netprobe, probes):
    """Each option of each program, set off its default in the probe, arrives in the
    ConfigMap the operator (as its ServiceAccount) writes, and the agent parses it."""
    programs = [{"name": spec.name, **{crd_field(o.name): non_default(o) for o in spec.options}}
                for spec in CATALOGUE.values()]
    probes("options", pool_spec(netprobe, 9681, programs=programs))
    config = netprobe.wait_child("ConfigMap", "netprobe-options")
    parsed = parse_config(config["data"]["agent.yaml"])
    for spec in CATALOGUE.values():
        assert parsed.programs[spec.name] == {o.name: non_default(o) for o in spec.options}


def test_spec_update_reaches_the_agent_config_without_restarting_pods(netprobe, probes):
    body = probes("update", pool_spec(netprobe, 9621))
    daemonset = netprobe.wait_child("DaemonSet", "netprobe-update")
    netprobe.wait_condition("update", "Degraded", "False")
    generation = daemonset["metadata"]["generation"]

    changed = copy.deepcopy(body)
    changed["spec"]["programs"].append({"name": "rx_latency", "attach": "tracepoint"})
    changed["spec"]["agent"]["logLevel"] = "debug"
    netprobe.apply_probe(changed)
    config = netprobe.wait_child("ConfigMap", "netprobe-update",
                                 lambda c: "rx_latency" in c["data"]["agent.yaml"])
    agent = yaml.safe_load(config["data"]["agent.yaml"])
    assert agent["programs"]["rx_latency"] == {"attach": "tracepoint"}
    assert agent["log_level"] == "debug"
    status = netprobe.wait("observedGeneration 2", lambda: (
        (netprobe.probe("update")["status"]["observedGeneration"] == 2) and netprobe.probe("update")["status"]))
    assert status["programs"] == "tcp_retransmit,tcp_rtt,rx_latency"
    # hot reload: the pod template did not change, so no agent pod restarts
    assert netprobe.child("DaemonSet", "netprobe-update")["metadata"]["generation"] == generation
    rule = netprobe.child("PrometheusRule", "netprobe-update") if netprobe.monitoring_crds_installed() else None
    if rule is not None:
        alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
        assert "NetprobeHighRxLatency" in alerts

    # a port change is not hot-reloadable: it rolls the pods
    changed["spec"]["agent"]["metricsPort"] = 9622
    netprobe.apply_probe(changed)
    rolled = netprobe.wait_child("DaemonSet", "netprobe-update",
                                 lambda d: d["metadata"]["generation"] > generation)
    assert rolled["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 9622
    assert netprobe.child("Service", "netprobe-update")["spec"]["ports"][0]["port"] == 9622


def test_disabling_a_part_prunes_it(netprobe, monitoring_crds, probes):
    body = probes("prune", pool_spec(netprobe, 9625))
    netprobe.wait_child("ServiceMonitor", "netprobe-prune")
    netprobe.wait_child("ConfigMap", "netprobe-prune-dashboard-overview")
    netprobe.wait_child("Secret", "netprobe-prune-tls")
    body["spec"]["serviceMonitor"] = {"enabled": False}
    body["spec"]["dashboards"] = {"enabled": False}
    body["spec"]["agent"]["secureMetrics"] = False
    netprobe.apply_probe(body)
    netprobe.wait("ServiceMonitor, dashboards and certificates pruned", lambda: {
        (o["kind"], o["metadata"]["name"]) for o in netprobe.children("prune")} == {
        ("ConfigMap", "netprobe-prune"), ("Service", "netprobe-prune"),
        ("DaemonSet", "netprobe-prune"), ("PrometheusRule", "netprobe-prune")})


def test_probe_deletion_removes_everything(netprobe, monitoring_crds):
    netprobe.apply_probe({"apiVersion": "netprobe.io/v1alpha1", "kind": "NetworkProbe",
                          "metadata": {"name": "short-lived"}, "spec": pool_spec(netprobe, 9631)})
    netprobe.wait("ten objects", lambda: len(netprobe.children("short-lived")) == 10)
    netprobe.mark_agents_ready("short-lived")
    netprobe.kubectl("delete", "networkprobe", "short-lived", "--wait=true")  # no finalizer holds it
    netprobe.wait("garbage collection of every object and agent pod",
                  lambda: not netprobe.children("short-lived")
                  and not netprobe.finish_terminating_pods("short-lived"),
                  timeout=nc.GC_TIMEOUT)


# --- several probes -----------------------------------------------------------


def test_two_probes_coexist_and_a_port_clash_is_refused(netprobe, probes):
    probes("pair-a", pool_spec(netprobe, 9641))
    probes("pair-b", pool_spec(netprobe, 9642, programs=[{"name": "tcp_connections"}]))
    for name in ("pair-a", "pair-b"):
        netprobe.mark_agents_ready(name)
    for name in ("pair-a", "pair-b"):
        netprobe.wait_condition(name, "Ready", "True", "AgentsReady")
    config_a = yaml.safe_load(netprobe.child("ConfigMap", "netprobe-pair-a")["data"]["agent.yaml"])
    config_b = yaml.safe_load(netprobe.child("ConfigMap", "netprobe-pair-b")["data"]["agent.yaml"])
    assert set(config_a["programs"]) == {"tcp_retransmit", "tcp_rtt"}
    assert set(config_b["programs"]) == {"tcp_connections"}

    probes("pair-clash", pool_spec(netprobe, 9641))
    cond = netprobe.wait_condition("pair-clash", "Degraded", "True", "MetricsPortConflict")
    assert "pair-a" in cond["message"] and "9641" in cond["message"]
    assert netprobe.children("pair-clash") == []
    assert netprobe.condition("pair-clash", "Ready")["reason"] == "NotApplied"
    netprobe.wait_condition("pair-a", "Ready", "True")  # the older probe is untouched


# --- what only the operator can judge -----------------------------------------


def test_unimplemented_program_is_degraded_not_rendered(netprobe, probes):
    body = probes("future", pool_spec(netprobe, 9651, programs=[{"name": "tcp_rtt"}, {"name": "flows"}]))
    cond = netprobe.wait_condition("future", "Degraded", "True", "UnsupportedProgram")
    assert "flows" in cond["message"] and "not implemented by this agent version" in cond["message"]
    assert netprobe.children("future") == []
    body["spec"]["programs"] = [{"name": "tcp_rtt"}]
    netprobe.apply_probe(body)
    netprobe.wait_condition("future", "Degraded", "False")
    netprobe.wait_child("DaemonSet", "netprobe-future")


def test_conflicting_options_are_a_condition(netprobe, probes):
    probes("conflict", pool_spec(netprobe, 9652, labels=["peer_pod"], resolver={"peers": "node"}))
    cond = netprobe.wait_condition("conflict", "Degraded", "True", "ConflictingOptions")
    assert "resolver.peers" in cond["message"]
    assert netprobe.children("conflict") == []


def test_node_selector_matching_no_node(netprobe, probes):
    probes("nowhere", pool_spec(netprobe, 9653, nodeSelector={"netprobe.test/pool": "no-such-pool"}))
    cond = netprobe.wait_condition("nowhere", "Degraded", "True", "NoMatchingNodes")
    assert "{netprobe.test/pool=no-such-pool} matches none of the" in cond["message"]
    # applied all the same: nodes may join later
    netprobe.wait_child("DaemonSet", "netprobe-nowhere")
    netprobe.wait_condition("nowhere", "Ready", "False", "NoMatchingNodes")


# --- admission ----------------------------------------------------------------

INVALID = {
    "unknown-program": ({"programs": [{"name": "tcp_magic"}]}, "spec.programs[0].name",
                        "Unsupported value"),
    "bad-type": ({"programs": [{"name": "tcp_rtt", "maxEntries": "lots"}]}, "spec.programs[0].maxEntries",
                 "must be of type integer"),
    "out-of-range": ({"programs": [{"name": "tcp_rtt"}], "agent": {"metricsPort": 80}},
                     "spec.agent.metricsPort", "should be greater than or equal to 1024"),
    "attach-mode-of-another-program": ({"programs": [{"name": "tcp_rtt", "attach": "kprobe"}]},
                                       "spec.programs[0].attach",
                                       "attach of tcp_rtt must be one of auto, tp_btf, raw_tracepoint, tracepoint"),
    "option-of-another-program": ({"programs": [{"name": "tcp_rtt", "inflightEntries": 4096}]},
                                  "spec.programs[0].inflightEntries", "inflightEntries is an option of rx_latency only"),
    "duplicate-program": ({"programs": [{"name": "tcp_rtt"}, {"name": "tcp_rtt"}]},
                          "spec.programs[1]", "Duplicate value"),
    "no-programs": ({"programs": []}, "spec.programs", "should have at least 1 items"),
    "memlock-not-boolean": ({"programs": [{"name": "tcp_rtt"}], "agent": {"raiseMemlockLimit": "yes"}},
                            "spec.agent.raiseMemlockLimit", "must be of type boolean"),
    "bad-interval": ({"programs": [{"name": "tcp_rtt"}], "serviceMonitor": {"interval": "soon"}},
                     "spec.serviceMonitor.interval", "should match"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_probe_rejected_at_admission_naming_the_field(netprobe, case):
    spec, field, message = INVALID[case]
    body = {"apiVersion": "netprobe.io/v1alpha1", "kind": "NetworkProbe",
            "metadata": {"name": f"invalid-{case}"}, "spec": spec}
    result = netprobe.kubectl("create", "-f", "-", input=yaml.safe_dump(body), check=False)
    assert result.returncode != 0, "admitted"
    assert field in result.stderr and message in result.stderr, result.stderr
    assert netprobe.probe(f"invalid-{case}") is None


def test_overlong_probe_name_rejected(netprobe):
    name = "n" * 41
    body = {"apiVersion": "netprobe.io/v1alpha1", "kind": "NetworkProbe",
            "metadata": {"name": name}, "spec": {"programs": [{"name": "tcp_rtt"}]}}
    result = netprobe.kubectl("create", "-f", "-", input=yaml.safe_dump(body), check=False)
    assert result.returncode != 0 and "metadata.name: at most 40 characters" in result.stderr


def test_refused_object_applies_nothing_until_rbac_allows_it(netprobe, probes):
    # Dashboards in a namespace the operator has no Role in: the dry run is
    # refused, so not even the agent is half-applied; the documented Role fixes it.
    netprobe.kubectl("create", "namespace", "monitoring-np")
    try:
        probes("elsewhere", pool_spec(netprobe, 9661, dashboards={"namespace": "monitoring-np"}))
        cond = netprobe.wait_condition("elsewhere", "Degraded", "True", "ApplyRejected")
        assert "forbidden" in cond["message"] and "monitoring-np" in cond["message"]
        assert netprobe.children("elsewhere") == []
        role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "netprobe-operator-dashboards", "namespace": "monitoring-np"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                           "verbs": ["get", "list", "create", "patch", "delete"]}]}
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "netprobe-operator-dashboards", "namespace": "monitoring-np"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                               "name": "netprobe-operator-dashboards"},
                   "subjects": [{"kind": "ServiceAccount", "name": "netprobe-operator", "namespace": NAMESPACE}]}
        netprobe.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([role, binding]))
        # kopf retries the refused reconcile after 30 s
        netprobe.wait_condition("elsewhere", "Degraded", "False", timeout=90)
        dashboard = netprobe.child("ConfigMap", "netprobe-elsewhere-dashboard-overview", namespace="monitoring-np")
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        netprobe.wait_child("DaemonSet", "netprobe-elsewhere")
    finally:
        netprobe.delete_probe("elsewhere")
        netprobe.kubectl("delete", "namespace", "monitoring-np", "--wait=false")


def test_kubectl_explain_teaches_the_api(netprobe):
    text = " ".join(netprobe.kubectl("explain", "networkprobe.spec.programs").stdout.split())
    assert "rx_latency - time a received packet spends in the kernel stack" in text
    for spec in CATALOGUE.values():      # every option of every program, with its default
        for option in spec.options:
            assert crd_field(option.name) in text, option.name
    assert "Default: tcp_retransmit 8192" in text


def test_operator_restart_resumes_without_churn_and_watches_monitoring_children(
        netprobe, monitoring_crds, probes, tmp_path):
    probes("restart", pool_spec(netprobe, 9671))
    netprobe.mark_agents_ready("restart")
    netprobe.wait_condition("restart", "Ready", "True")
    before = {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
              for o in netprobe.children("restart")}

    netprobe.operator.stop()
    netprobe.operator = nc.start_operator(netprobe.cp, tmp_path)
    netprobe.wait("the restarted operator to resume the probe",
                  lambda: "[restart] Handler 'probe_changed' succeeded" in netprobe.operator.log_tail(400))
    after = {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
             for o in netprobe.children("restart")}
    assert after == before  # server-side apply of an unchanged set writes nothing
    assert netprobe.condition("restart", "Ready")["status"] == "True"

    # with the monitoring CRDs present at start, their objects are watched too
    old = netprobe.child("PrometheusRule", "netprobe-restart")
    netprobe.kubectl("delete", "prometheusrule", "-n", NAMESPACE, "netprobe-restart")
    netprobe.wait_child("PrometheusRule", "netprobe-restart",
                        lambda o: o["metadata"]["uid"] != old["metadata"]["uid"])
