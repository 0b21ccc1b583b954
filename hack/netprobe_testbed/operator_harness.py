"""The operator against the real control plane: set-up and helpers for the operator and end-to-end tests.

`kubectl apply -k manifests/` as a user would, then the operator as a real
process (`netprobe-operator`) authenticated as ITS ServiceAccount through a
TokenRequest token, so a missing RBAC rule in manifests/ fails the tests. No
kubelet runs: agent pods are scheduled onto fake nodes by kube-scheduler and
the tests report them ready the way a kubelet would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from kubernetes import client

from netprobe_testbed.kube import mark_pod_running, register_node, wait_for
from netprobe_testbed.processes import free_port, log_tail, stop_process

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "netprobe-system"
MONITORING_CRDS = REPO / "tests" / "operator" / "fixtures" / "monitoring-crds.yaml"
OPERATOR_BIN = Path(sys.executable).with_name("netprobe-operator")
CHILD_KINDS = {  # kind -> kubectl resource name
    "Secret": "secrets", "ConfigMap": "configmaps", "Service": "services", "DaemonSet": "daemonsets.apps",
    "ServiceMonitor": "servicemonitors.monitoring.coreos.com",
    "PrometheusRule": "prometheusrules.monitoring.coreos.com",
}
TIMEOUT = 60.0
# kube-controller-manager's garbage collector re-reads discovery every 30 s and
# holds collection until it watches newly installed resource types (the
# monitoring CRDs): right after they appear, deletions can wait that long.
GC_TIMEOUT = 150.0


@dataclass
class OperatorProcess:
    popen: subprocess.Popen
    log_path: Path
    liveness_url: str

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        stop_process(self.popen, 20)


@dataclass
class Netprobe:
    """The installed operator plus helpers; one per test module."""
    cp: Any                      # netprobe_testbed.cluster.ControlPlane
    api: client.ApiClient        # admin: the tests' own view
    operator: OperatorProcess
    pool: str                    # label value of this module's fake nodes
    nodes: dict[str, str] = field(default_factory=dict)   # name -> InternalIP

    # --- kubectl ------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, input: str | None = None):
        return self.cp.kubectl(*args, check=check, input=input)

    def apply_probe(self, probe: dict | str) -> None:
        text = probe if isinstance(probe, str) else yaml.safe_dump(probe)
        self.kubectl("apply", "-f", "-", input=text)

    def get_json(self, *args: str) -> dict | None:
        result = self.kubectl("get", *args, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "the server doesn't have a resource type" in result.stderr:
                return None  # no such object, or no such kind (monitoring CRDs absent)
            raise AssertionError(result.stderr)
        return json.loads(result.stdout)

    def probe(self, name: str) -> dict | None:
        return self.get_json("networkprobe", name)

    # --- waiting ------------------------------------------------------------

    def wait(self, what: str, check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
        try:
            return wait_for(what, check, timeout=timeout, interval=0.3)
        except TimeoutError as err:
            raise AssertionError(f"{err}\n--- operator log ---\n{self.operator.log_tail()}") from None

    def condition(self, name: str, ctype: str) -> dict | None:
        probe = self.probe(name) or {}
        return next((c for c in (probe.get("status") or {}).get("conditions") or []
                     if c["type"] == ctype), None)

    def wait_condition(self, name: str, ctype: str, status: str, reason: str | None = None,
                       timeout: float = TIMEOUT) -> dict:
        def check():
            probe = self.probe(name) or {}
            st = probe.get("status") or {}
            cond = next((c for c in st.get("conditions") or [] if c["type"] == ctype), None)
            if (cond and cond["status"] == status and reason in (None, cond.get("reason"))
                    and st.get("observedGeneration") == probe["metadata"]["generation"]):
                return cond
            return False
        return self.wait(f"{name}: {ctype}={status} ({reason or 'any reason'})", check, timeout)

    # --- children -----------------------------------------------------------

    def children(self, probe_name: str, kinds=tuple(CHILD_KINDS), namespace: str = NAMESPACE) -> list[dict]:
        found = []
        for kind in kinds:
            listing = self.get_json(CHILD_KINDS[kind], "-n", namespace,
                                    "-l", f"netprobe.io/probe={probe_name}")
            found.extend(listing["items"] if listing else [])
        return found

    def child(self, kind: str, name: str, namespace: str = NAMESPACE) -> dict | None:
        return self.get_json(CHILD_KINDS[kind], name, "-n", namespace)

    def wait_child(self, kind: str, name: str, check: Callable[[dict], bool] = lambda _: True,
                   namespace: str = NAMESPACE) -> dict:
        def probe():
            obj = self.child(kind, name, namespace)
            return obj if obj is not None and check(obj) else False
        return self.wait(f"{kind} {namespace}/{name}", probe)

    def mark_agents_ready(self, probe_name: str) -> list[str]:
        """Play the kubelet: every agent pod of the probe, once scheduled, runs and is ready."""
        core = client.CoreV1Api(self.api)
        daemonset = self.wait_child("DaemonSet", f"netprobe-{probe_name}",
                                    lambda d: (d.get("status") or {}).get("desiredNumberScheduled", 0) > 0)
        desired = daemonset["status"]["desiredNumberScheduled"]
        selector = f"netprobe.io/probe={probe_name}"

        def scheduled():
            pods = core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
            bound = [p for p in pods if p.spec.node_name and p.metadata.deletion_timestamp is None]
            return bound if len(bound) >= desired else False
        pods = self.wait(f"{desired} scheduled agent pods of {probe_name}", scheduled)
        for pod in pods:
            node = core.read_node(pod.spec.node_name)
            ip = next(a.address for a in node.status.addresses if a.type == "InternalIP")
            mark_pod_running(self.api, NAMESPACE, pod.metadata.name, pod_ip=ip)  # hostNetwork: the node's IP
        return [p.spec.node_name for p in pods]

    def delete_probe(self, name: str, wait: bool = True) -> None:
        self.kubectl("delete", "networkprobe", name, "--ignore-not-found", "--wait=true")
        if wait:
            self.wait(f"every object of {name} garbage-collected",
                      lambda: not self.children(name) and not self.finish_terminating_pods(name),
                      timeout=GC_TIMEOUT)

    def agent_pods(self, probe_name: str) -> list:
        core = client.CoreV1Api(self.api)
        return core.list_namespaced_pod(NAMESPACE, label_selector=f"netprobe.io/probe={probe_name}").items

    def finish_terminating_pods(self, probe_name: str) -> list:
        """Play the kubelet once more: a pod being deleted is stopped and removed.

        Without a kubelet a bound pod stays Terminating for ever (and keeps its
        host port on the node); returns the pods not yet being deleted.
        """
        core = client.CoreV1Api(self.api)
        alive = []
        for pod in self.agent_pods(probe_name):
            if pod.metadata.deletion_timestamp is None:
                alive.append(pod)
                continue
            try:
                core.delete_namespaced_pod(pod.metadata.name, NAMESPACE, grace_period_seconds=0)
            except client.ApiException as err:
                if err.status != 404:
                    raise
        return alive

    # --- monitoring CRDs ----------------------------------------------------

    def monitoring_crds_installed(self) -> bool:
        return self.get_json("crd", "servicemonitors.monitoring.coreos.com") is not None

    def install_monitoring_crds(self) -> None:
        self.kubectl("apply", "-f", str(MONITORING_CRDS))
        self.kubectl("wait", "--for", "condition=established", "--timeout=60s",
                     "crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com")

    def remove_monitoring_crds(self) -> None:
        self.kubectl("delete", "-f", str(MONITORING_CRDS), "--ignore-not-found", "--wait=true")
        self.wait("monitoring CRDs gone", lambda: not self.monitoring_crds_installed())


def operator_kubeconfig(cp, path: Path) -> Path:
    """The operator ServiceAccount's kubeconfig, with the namespace in its context as
    a pod would have it (kopf posts Events for cluster-scoped objects there)."""
    source = cp.kubeconfig_for(NAMESPACE, "netprobe-operator")
    config = yaml.safe_load(Path(source).read_text())
    for ctx in config["contexts"]:
        ctx["context"]["namespace"] = NAMESPACE
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def start_operator(cp, workdir: Path) -> OperatorProcess:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update({
        "KUBECONFIG": str(operator_kubeconfig(cp, workdir / "operator.kubeconfig")),
        "NETPROBE_NAMESPACE": NAMESPACE,
        "NETPROBE_AGENT_IMAGE": "registry.test/netprobe:test",
        "NETPROBE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{port}/healthz",
    })
    log_path = workdir / "operator.log"
    with open(log_path, "w") as log:
        popen = subprocess.Popen([str(OPERATOR_BIN), "--verbose"], env=env, stdout=log,
                                 stderr=subprocess.STDOUT, cwd=workdir)
    operator = OperatorProcess(popen, log_path, f"http://127.0.0.1:{port}/healthz")

    def alive():
        if popen.poll() is not None:
            raise AssertionError(f"netprobe-operator exited {popen.returncode}:\n{operator.log_tail()}")
        try:
            with urllib.request.urlopen(operator.liveness_url, timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False
    try:
        wait_for("the operator's liveness endpoint", alive, timeout=90, interval=0.5)
    except TimeoutError as err:
        operator.stop()
        raise AssertionError(f"{err}\n{operator.log_tail()}") from None
    return operator


def install(cp, api: client.ApiClient, workdir: Path) -> Netprobe:
    cp.kubectl("apply", "-k", str(REPO / "manifests"))
    cp.kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd/networkprobes.netprobe.io")
    # The operator runs here as a local process; without a kubelet the in-cluster
    # Deployment's pod would only sit Pending.
    cp.kubectl("scale", "-n", NAMESPACE, "deployment/netprobe-operator", "--replicas=0")
    pool = f"np-{uuid.uuid4().hex[:6]}"
    nodes = {}
    for i, suffix in enumerate(("a", "b")):
        name = f"{pool}-{suffix}"
        labels = {"netprobe.test/pool": pool}
        if suffix == "b":
            labels["netprobe.io/observe"] = "true"  # manifests/examples/edge-nodes.yaml selects it
        ip = f"192.0.2.{100 + i}"
        register_node(api, name, labels=labels, internal_ip=ip)
        nodes[name] = ip
    operator = start_operator(cp, workdir)
    return Netprobe(cp=cp, api=api, operator=operator, pool=pool, nodes=nodes)


def uninstall(netprobe: Netprobe) -> None:
    netprobe.operator.stop()
    core = client.CoreV1Api(netprobe.api)
    for name in netprobe.nodes:
        core.delete_node(name)
