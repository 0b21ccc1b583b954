"""The resolver against the real control plane (kube-apiserver, etcd, controllers).

Nodes are fake (netprobe_testbed.kube.register_node) and pods are marked Running
with chosen addresses, as a kubelet would report them; everything else is the
real API server: field selectors, watches, resource versions, RBAC, the
Deployment and ReplicaSet controllers.
"""
from __future__ import annotations

import time
import uuid

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from netprobe_testbed.kube import mark_pod_running, register_node, wait_for
from node_agent.resolver.base import PodRef, normalize_ip
from node_agent.resolver.kubernetes import KubernetesResolver

pytestmark = pytest.mark.cluster

NODE_A, NODE_A_IP = "resolver-node-a", "192.168.213.1"
NODE_B, NODE_B_IP = "resolver-node-b", "192.168.213.2"


def ip(text):
    return normalize_ip(text)


# ---- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def core(kube_api):
    api = client.CoreV1Api(kube_api)
    for name, address in ((NODE_A, NODE_A_IP), (NODE_B, NODE_B_IP)):
        register_node(api, name, internal_ip=address)
    yield api
    # The control plane is shared by the session: other tests count Nodes (DaemonSets).
    for name in (NODE_A, NODE_B):
        api.delete_node(name)


@pytest.fixture
def namespace(core):
    name = f"resolver-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    # Pods are refused until the ServiceAccount controller made "default".
    wait_for(f"ServiceAccount {name}/default",
             lambda: _exists(lambda: core.read_namespaced_service_account("default", name)))
    yield name
    # No kubelet finishes a graceful deletion: remove the pods at once, then the namespace.
    core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
    core.delete_namespace(name)


@pytest.fixture
def start_resolver(control_plane):
    started = []

    def start(node=NODE_A, kubeconfig=None, **kwargs) -> KubernetesResolver:
        resolver = KubernetesResolver(node, kubeconfig=str(kubeconfig or control_plane.kubeconfig),
                                      **kwargs)
        started.append(resolver)
        resolver.start()
        assert resolver.wait_until_ready(60), "the resolver did not complete its first list"
        return resolver

    yield start
    for resolver in started:
        resolver.stop()


def _exists(read) -> bool:
    try:
        read()
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def run_pod(core, namespace, name, node, ips, *, host_network=False, labels=None):
    """Creates a pod bound to `node` and reports it Running with `ips`."""
    spec = {"nodeName": node, "containers": [{"name": "app", "image": "registry.invalid/app"}],
            "automountServiceAccountToken": False}
    if host_network:
        spec["hostNetwork"] = True
    core.create_namespaced_pod(namespace, {"apiVersion": "v1", "kind": "Pod",
                                           "metadata": {"name": name, "labels": labels or {}},
                                           "spec": spec})
    mark_pod_running(core, namespace, name, ips[0], pod_ips=list(ips))


def delete_pod(core, namespace, name):
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def metric(resolver, name, **labels) -> float | None:
    for family in resolver.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def resolved_as(resolver, address, expected):
    return wait_for(f"{address} to resolve to {expected}",
                    lambda: resolver.lookup(ip(address)) == expected, timeout=30)


# ---- tests ------------------------------------------------------------------------------

def test_local_pods_from_the_node_watch_and_peers_from_the_cluster_watch(core, namespace, start_resolver):
    run_pod(core, namespace, "local", NODE_A, ["10.213.1.1", "fd13::1:1"])
    run_pod(core, namespace, "peer", NODE_B, ["10.213.2.1"])
    run_pod(core, namespace, "hostnet", NODE_A, [NODE_A_IP], host_network=True)

    cluster = start_resolver(peers="cluster")
    node_only = start_resolver(peers="node")

    local = PodRef(namespace, "local", "")
    for resolver in (cluster, node_only):
        assert resolver.lookup(ip("10.213.1.1")) == local
        assert resolver.lookup(ip("fd13::1:1")) == local       # IPv6 podIPs entry
        assert resolver.lookup(ip(NODE_A_IP)) is None            # host-network: the agent says "host"
    assert cluster.lookup(ip("10.213.2.1")) == PodRef(namespace, "peer", "")
    assert node_only.lookup(ip("10.213.2.1")) is None

    # The server-side field selector: the node watch holds only this node's pods.
    node_watch = node_only.watches[0]
    assert node_watch.index.lookup(ip("10.213.2.1"), time.monotonic()) is None
    assert metric(cluster, "netprobe_resolver_pods", watch="node", state="live") >= 1
    assert metric(cluster, "netprobe_resolver_pods", watch="cluster", state="live") >= 2
    assert metric(cluster, "netprobe_resolver_stale", watch="cluster") == 0
    assert metric(cluster, "netprobe_resolver_last_sync_timestamp_seconds", watch="node") > time.time() - 120

    # Pods arriving after the list come through the watches.
    run_pod(core, namespace, "late-local", NODE_A, ["10.213.1.2"])
    run_pod(core, namespace, "late-peer", NODE_B, ["fd13::2:2"])
    resolved_as(cluster, "10.213.1.2", PodRef(namespace, "late-local", ""))
    resolved_as(cluster, "fd13::2:2", PodRef(namespace, "late-peer", ""))
    resolved_as(node_only, "10.213.1.2", PodRef(namespace, "late-local", ""))
    assert node_only.lookup(ip("fd13::2:2")) is None


def create_deployment(kube_api, namespace, name, node, replicas=2):
    apps = client.AppsV1Api(kube_api)
    labels = {"app": name}
    apps.create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "nodeSelector": {"kubernetes.io/hostname": node},
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "app", "image": "registry.invalid/app"}]}}}})


def run_deployment_pods(core, namespace, app, addresses):
    """Waits for the controllers and the scheduler, then plays the kubelet; returns pod names."""
    def scheduled():
        pods = core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
        if len(pods) == len(addresses) and all(p.spec.node_name for p in pods):
            return sorted(p.metadata.name for p in pods)
        return None

    names = wait_for(f"{len(addresses)} scheduled pods of {app}", scheduled, timeout=60)
    for name, address in zip(names, addresses):
        mark_pod_running(core, namespace, name, address)
    return names


def test_deployment_pods_are_named_after_the_deployment(kube_api, core, namespace, start_resolver):
    create_deployment(kube_api, namespace, "cart", NODE_A)
    names = run_deployment_pods(core, namespace, "cart", ["10.213.3.1", "10.213.3.2"])
    resolver = start_resolver()
    assert resolver.lookup(ip("10.213.3.1")) == PodRef(namespace, names[0], "cart")
    assert resolver.lookup(ip("10.213.3.2")) == PodRef(namespace, names[1], "cart")
    assert metric(resolver, "netprobe_resolver_owner_lookup_errors_total") == 0


def test_deleted_pod_resolves_for_the_grace_period_then_vanishes(core, namespace, start_resolver):
    grace = 5.0
    run_pod(core, namespace, "doomed", NODE_A, ["10.213.4.1"])
    resolver = start_resolver(deleted_pod_grace_seconds=grace)
    assert resolver.lookup(ip("10.213.4.1")) == PodRef(namespace, "doomed", "")

    delete_pod(core, namespace, "doomed")
    wait_for("the deletion to reach both watches", lambda: all(
        metric(resolver, "netprobe_resolver_pods", watch=w, state="departed") == 1
        for w in ("node", "cluster")), timeout=30)
    seen_departed = time.monotonic()
    ref = resolver.lookup(ip("10.213.4.1"))
    if time.monotonic() - seen_departed < grace:  # the machine may be slow; only assert inside the grace
        assert ref == PodRef(namespace, "doomed", "")
    wait_for("the grace period to end", lambda: resolver.lookup(ip("10.213.4.1")) is None,
             timeout=grace + 30)
    wait_for("the sweep to free the entries", lambda: all(
        metric(resolver, "netprobe_resolver_pods", watch=w, state="departed") == 0
        for w in ("node", "cluster")), timeout=30)


def test_reused_address_resolves_to_the_new_pod_at_once(core, namespace, start_resolver):
    run_pod(core, namespace, "old", NODE_A, ["10.213.5.1"])
    resolver = start_resolver(deleted_pod_grace_seconds=600)
    delete_pod(core, namespace, "old")
    wait_for("the deletion", lambda: metric(resolver, "netprobe_resolver_pods",
                                            watch="node", state="departed") == 1, timeout=30)
    assert resolver.lookup(ip("10.213.5.1")) == PodRef(namespace, "old", "")  # within the grace
    run_pod(core, namespace, "new", NODE_A, ["10.213.5.1"])
    resolved_as(resolver, "10.213.5.1", PodRef(namespace, "new", ""))


def test_finished_pod_releases_its_address(core, namespace, start_resolver):
    run_pod(core, namespace, "job-pod", NODE_A, ["10.213.6.1"])
    resolver = start_resolver(deleted_pod_grace_seconds=1)
    core.patch_namespaced_pod_status("job-pod", namespace, {"status": {"phase": "Succeeded"}})
    wait_for("the finished pod to be released", lambda: resolver.lookup(ip("10.213.6.1")) is None,
             timeout=30)


def test_api_server_outage_serves_last_known_pods_and_recovers(control_plane, core, namespace,
                                                               start_resolver):
    run_pod(core, namespace, "before", NODE_A, ["10.213.7.1"])
    resolver = start_resolver()
    before = PodRef(namespace, "before", "")
    control_plane.stop_apiserver()
    try:
        wait_for("the resolver to notice the outage", lambda: all(
            metric(resolver, "netprobe_resolver_stale", watch=w) == 1 for w in ("node", "cluster")),
            timeout=60)
        assert resolver.lookup(ip("10.213.7.1")) == before
        assert resolver.is_ready()
    finally:
        control_plane.start_apiserver()
    run_pod(core, namespace, "after", NODE_A, ["10.213.7.2"])
    run_pod(core, namespace, "after-peer", NODE_B, ["10.213.7.3"])
    resolved_as(resolver, "10.213.7.2", PodRef(namespace, "after", ""))
    resolved_as(resolver, "10.213.7.3", PodRef(namespace, "after-peer", ""))
    assert resolver.lookup(ip("10.213.7.1")) == before
    for w in ("node", "cluster"):
        assert metric(resolver, "netprobe_resolver_stale", watch=w) == 0
        assert metric(resolver, "netprobe_resolver_watch_restarts_total", watch=w, reason="error") >= 1


# The exact rules docs/resolver.md gives the agent's ClusterRole.
AGENT_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
]


def service_account_with(kube_api, core, control_plane, namespace, name, rules):
    rbac = client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    role = f"{namespace}-{name}"
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": rules})
    rbac.create_cluster_role_binding({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})
    return control_plane.kubeconfig_for(namespace, name), role


def test_the_documented_rbac_rules_are_enough(control_plane, kube_api, core, namespace, start_resolver):
    kubeconfig, role = service_account_with(kube_api, core, control_plane, namespace, "agent", AGENT_RULES)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    try:
        create_deployment(kube_api, namespace, "api", NODE_B, replicas=1)
        [name] = run_deployment_pods(core, namespace, "api", ["10.213.8.1"])
        resolver = start_resolver(kubeconfig=kubeconfig)
        assert resolver.lookup(ip("10.213.8.1")) == PodRef(namespace, name, "api")
        assert metric(resolver, "netprobe_resolver_owner_lookup_errors_total") == 0
        run_pod(core, namespace, "watched", NODE_A, ["10.213.8.2"])
        resolved_as(resolver, "10.213.8.2", PodRef(namespace, "watched", ""))
        assert all(metric(resolver, "netprobe_resolver_stale", watch=w) == 0 for w in ("node", "cluster"))
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)


def test_without_replicaset_access_workloads_are_guessed_and_counted(control_plane, kube_api, core, namespace,
                                                                     start_resolver):
    kubeconfig, role = service_account_with(kube_api, core, control_plane, namespace, "weak",
                                            AGENT_RULES[:1])
    rbac = client.RbacAuthorizationV1Api(kube_api)
    try:
        create_deployment(kube_api, namespace, "web", NODE_A, replicas=1)
        [name] = run_deployment_pods(core, namespace, "web", ["10.213.9.1"])
        resolver = start_resolver(kubeconfig=kubeconfig)
        # The pod-template-hash suffix still gives the Deployment's name...
        assert resolver.lookup(ip("10.213.9.1")) == PodRef(namespace, name, "web")
        # ...but the missing permission shows.
        assert metric(resolver, "netprobe_resolver_owner_lookup_errors_total") >= 1
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)


def test_in_cluster_credentials_as_the_agent_pod_gets_them(control_plane, kube_api, core, namespace,
                                                          tmp_path, monkeypatch):
    """No kubeconfig and KUBERNETES_SERVICE_HOST set: the service account's token and CA
    files, exactly what the DaemonSet's pod has mounted (only their folder differs)."""
    import urllib.parse

    from kubernetes.config import incluster_config

    _, role = service_account_with(kube_api, core, control_plane, namespace, "incluster", AGENT_RULES)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    try:
        token = tmp_path / "token"
        token.write_text(control_plane.token_for(namespace, "incluster"))
        monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
        monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(control_plane.ca_file))
        server = urllib.parse.urlsplit(control_plane.server)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", server.hostname)
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
        run_pod(core, namespace, "seen-in-cluster", NODE_A, ["10.213.11.1"])

        resolver = KubernetesResolver(NODE_A)          # no kubeconfig: in-cluster
        resolver.start()
        try:
            assert resolver.wait_until_ready(60)
            assert resolver.lookup(ip("10.213.11.1")) == PodRef(namespace, "seen-in-cluster", "")
        finally:
            resolver.stop()
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)
