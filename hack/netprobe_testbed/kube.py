"""The kubelet's part, played by the test bed: fake Nodes and pod status.

The control plane has no kubelets, so nothing registers Nodes and nothing runs pods.
`register_node` creates a Ready Node with allocatable resources, so that the scheduler
binds pods to it and the DaemonSet controller counts it. `mark_pod_running` writes what
a kubelet reports once a pod's containers run: phase, IPs, conditions, container
statuses, through the pods/status subresource. Tests give those "pods" the IPs of
network namespaces they create.

Nodes get no heartbeat: the control plane does not run the node lifecycle controller
(it would mark them unreachable and evict their pods). That controller is also what
lifts the `node.kubernetes.io/not-ready` taint that admission puts on every new Node
once the Node is Ready; `register_node` does that step itself.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import uuid

from kubernetes import client

from .cluster import pinned_kubernetes_version
from .polling import wait_for  # noqa: F401  (re-exported: tests wait on controllers)

MERGE_PATCH = "application/merge-patch+json"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


def core_v1(api: client.ApiClient | client.CoreV1Api) -> client.CoreV1Api:
    """Accept either an ApiClient or a CoreV1Api."""
    if isinstance(api, client.CoreV1Api):
        return api
    if isinstance(api, client.ApiClient):
        return client.CoreV1Api(api)
    raise TypeError(f"expected kubernetes.client.ApiClient or CoreV1Api, got {type(api).__name__}")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def register_node(api: client.ApiClient | client.CoreV1Api, name: str,
                  labels: dict[str, str] | None = None, *, cpu: str = "4", memory: str = "8Gi",
                  pods: str = "110", internal_ip: str | None = None) -> client.V1Node:
    """Create a Ready, schedulable Node named `name` and return it.

    `labels` are added to the well-known ones a kubelet sets (kubernetes.io/hostname,
    kubernetes.io/os, kubernetes.io/arch). `internal_ip` becomes the Node's InternalIP
    address, which `mark_pod_running` uses as the default hostIP of its pods.
    """
    core = core_v1(api)
    node_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                   "kubernetes.io/arch": "amd64", **(labels or {})}
    core.create_node({"apiVersion": "v1", "kind": "Node",
                      "metadata": {"name": name, "labels": node_labels}})

    now = _now()
    resources = {"cpu": cpu, "memory": memory, "pods": pods, "ephemeral-storage": "100Gi"}
    addresses = [{"type": "Hostname", "address": name}]
    if internal_ip:
        addresses.insert(0, {"type": "InternalIP", "address": internal_ip})

    def condition(kind: str, status: str, reason: str) -> dict:
        return {"type": kind, "status": status, "reason": reason,
                "lastHeartbeatTime": now, "lastTransitionTime": now}

    status = {
        "capacity": resources,
        "allocatable": resources,
        "addresses": addresses,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            condition("Ready", "True", "KubeletReady"),
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "osImage": "netprobe test bed fake node",
            "kernelVersion": os.uname().release,
            "kubeletVersion": pinned_kubernetes_version(),
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "fake://0",
            "machineID": uuid.uuid4().hex,
            "systemUUID": str(uuid.uuid4()),
            "bootID": str(uuid.uuid4()),
        },
    }
    core.patch_node_status(name, {"status": status}, _content_type=MERGE_PATCH)

    taints = core.read_node(name).spec.taints or []
    kept = [t for t in taints if t.key != NOT_READY_TAINT]
    if len(kept) != len(taints):
        core.patch_node(name, {"spec": {"taints": [
            {"key": t.key, "value": t.value, "effect": t.effect} for t in kept]}},
            _content_type=MERGE_PATCH)
    return core.read_node(name)


def node_internal_ip(node: client.V1Node) -> str | None:
    for address in (node.status.addresses or []) if node.status else []:
        if address.type == "InternalIP":
            return address.address
    return None


def _fake_id(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def mark_pod_running(api: client.ApiClient | client.CoreV1Api, namespace: str, name: str,
                     pod_ip: str, host_ip: str | None = None, pod_ips: list[str] | None = None,
                     ready: bool = True) -> client.V1Pod:
    """Report the pod Running with `pod_ip` as a kubelet would, and return it.

    The pod must already be bound to a node (a kubelet only runs scheduled pods).
    host_ip defaults to that node's InternalIP; pod_ips (all of the pod's IPs, the
    first being pod_ip) to [pod_ip]. ready=False reports running but not Ready.
    """
    core = core_v1(api)
    pod = core.read_namespaced_pod(name, namespace)
    node_name = pod.spec.node_name
    if not node_name:
        raise ValueError(f"pod {namespace}/{name} is not bound to a node yet; "
                         "a kubelet only runs scheduled pods")
    if host_ip is None:
        host_ip = node_internal_ip(core.read_node(node_name))
        if host_ip is None:
            raise ValueError(f"node {node_name} has no InternalIP address; pass host_ip= "
                             "or register the node with internal_ip=")
    pod_ips = list(pod_ips) if pod_ips else [pod_ip]
    if pod_ips[0] != pod_ip:
        raise ValueError(f"pod_ips must start with pod_ip ({pod_ip}), got {pod_ips}")

    now = _now()
    started = pod.status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ") \
        if pod.status and pod.status.start_time else now
    readiness = "True" if ready else "False"

    def condition(kind: str, status: str) -> dict:
        return {"type": kind, "status": status, "lastTransitionTime": now}

    def container_status(container, *, init: bool) -> dict:
        status = {
            "name": container.name,
            "image": container.image,
            "imageID": f"{container.image}@sha256:{_fake_id(container.image)}",
            "containerID": f"containerd://{_fake_id(pod.metadata.uid, container.name)}",
            "restartCount": 0,
        }
        if init:
            status.update(ready=True, started=False, state={"terminated": {
                "exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": started}})
        else:
            status.update(ready=ready, started=True, state={"running": {"startedAt": started}})
        return status

    status = {
        "phase": "Running",
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": ip} for ip in pod_ips],
        "startTime": started,
        "conditions": [
            condition("PodReadyToStartContainers", "True"),
            condition("Initialized", "True"),
            condition("Ready", readiness),
            condition("ContainersReady", readiness),
            condition("PodScheduled", "True"),
        ],
        "containerStatuses": [container_status(c, init=False) for c in pod.spec.containers],
    }
    if pod.spec.init_containers:
        status["initContainerStatuses"] = [container_status(c, init=True)
                                           for c in pod.spec.init_containers]
    return core.patch_namespaced_pod_status(name, namespace, {"status": status},
                                            _content_type=MERGE_PATCH)
