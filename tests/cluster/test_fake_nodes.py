"""Fake nodes: the scheduler and the workload controllers treat them as real ones."""
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from netprobe_testbed.kube import mark_pod_running, register_node, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def nodes(kube_api):
    """Three fresh nodes carrying a label unique to this test."""
    core = client.CoreV1Api(kube_api)
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    names = [f"{pool}-node-{i}" for i in range(3)]
    for i, name in enumerate(names):
        register_node(kube_api, name, labels={"testbed.netprobe.io/pool": pool},
                      internal_ip=f"192.0.2.{i + 1}")
    yield pool, names
    for name in names:
        core.delete_node(name)


@pytest.fixture
def namespace(kube_api):
    name = f"nodes-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name}})
    wait_for("the default ServiceAccount",
             lambda: _has_default_service_account(core, name), timeout=30)
    yield name
    core.delete_namespace(name)


def _has_default_service_account(core, namespace):
    try:
        return core.read_namespaced_service_account("default", namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def test_registered_node_is_ready_and_schedulable(kube_api, nodes):
    _, names = nodes
    node = client.CoreV1Api(kube_api).read_node(names[0])
    ready = [c for c in node.status.conditions if c.type == "Ready"]
    assert ready and ready[0].status == "True"
    assert node.status.allocatable["cpu"] == "4"
    assert not node.spec.taints, "the not-ready taint admission added must be gone"
    assert node.metadata.labels["kubernetes.io/hostname"] == names[0]


def test_daemonset_gets_one_pod_per_node_bound_by_the_scheduler(kube_api, nodes, namespace):
    pool, node_names = nodes
    apps = client.AppsV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    apps.create_namespaced_daemon_set(namespace, {
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "nodeSelector": {"testbed.netprobe.io/pool": pool},
                    "containers": [{"name": "agent", "image": "example.invalid/agent:1"}],
                },
            },
        },
    })

    def bound_pods():
        pods = core.list_namespaced_pod(namespace, label_selector="app=agent").items
        return pods if len(pods) == 3 and all(p.spec.node_name for p in pods) else None
    pods = wait_for("three DaemonSet pods bound to nodes", bound_pods, timeout=60)

    assert sorted(p.spec.node_name for p in pods) == sorted(node_names)
    for pod in pods:
        # The DaemonSet controller only pins the pod with node affinity; the binding
        # itself is the scheduler's.
        terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
        assert terms.node_selector_terms[0].match_fields[0].values == [pod.spec.node_name]
        assert pod.spec.scheduler_name == "default-scheduler"
    events = core.list_namespaced_event(namespace).items
    scheduled = {e.involved_object.name for e in events
                 if e.reason == "Scheduled" and e.reporting_component == "default-scheduler"}
    assert scheduled == {p.metadata.name for p in pods}

    daemon_set = wait_for("DaemonSet status to count 3 desired",
                          lambda: _status_if(apps.read_namespaced_daemon_set("agent", namespace),
                                             lambda s: s.desired_number_scheduled == 3))
    assert daemon_set.status.current_number_scheduled == 3


def _status_if(obj, predicate):
    return obj if obj.status and predicate(obj.status) else None


def test_marked_running_pods_count_as_ready_for_their_deployment(kube_api, nodes, namespace):
    apps = client.AppsV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": {"testbed.netprobe.io/pool": nodes[0]},
                    "initContainers": [{"name": "init", "image": "example.invalid/init:1"}],
                    "containers": [{"name": "web", "image": "example.invalid/web:1"}],
                },
            },
        },
    })

    def bound_pods():
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        return pods if len(pods) == 2 and all(p.spec.node_name for p in pods) else None
    pods = wait_for("two Deployment pods bound to nodes", bound_pods, timeout=60)

    for i, pod in enumerate(pods):
        running = mark_pod_running(kube_api, namespace, pod.metadata.name, f"198.51.100.{i + 1}")
        assert running.status.phase == "Running"
        assert running.status.pod_ip == f"198.51.100.{i + 1}"
        node = core.read_node(pod.spec.node_name)
        assert running.status.host_ip == node.status.addresses[0].address
        assert running.status.container_statuses[0].state.running is not None
        assert running.status.init_container_statuses[0].state.terminated.reason == "Completed"

    deployment = wait_for("the Deployment to count 2 ready replicas",
                          lambda: _status_if(apps.read_namespaced_deployment("web", namespace),
                                             lambda s: s.ready_replicas == 2), timeout=60)
    assert deployment.status.available_replicas == 2

    # A readiness flip is seen by the controllers too.
    mark_pod_running(kube_api, namespace, pods[0].metadata.name, "198.51.100.1", ready=False)
    wait_for("the Deployment to count 1 ready replica",
             lambda: _status_if(apps.read_namespaced_deployment("web", namespace),
                                lambda s: (s.ready_replicas or 0) == 1), timeout=60)


def test_unbound_pod_cannot_be_marked_running(kube_api, namespace):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "nowhere"},
        "spec": {"nodeSelector": {"testbed.netprobe.io/pool": "no-such-pool"},
                 "containers": [{"name": "c", "image": "example.invalid/c:1"}]},
    })
    with pytest.raises(ValueError, match="not bound to a node"):
        mark_pod_running(kube_api, namespace, "nowhere", "198.51.100.9")
