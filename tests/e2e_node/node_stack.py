"""The product as users install it, on a real node (issue 12).

`kubectl apply -k` of manifests/ (an overlay points the image at the one `make
image` built) -> the operator runs as the Deployment's pod -> a NetworkProbe ->
the agent runs as the DaemonSet's pod on a real node (containerd, runc, the
kubelet; its own securityContext, mounts and ServiceAccount token) -> workload
pods of a Deployment and plain Pods in two namespaces, with CNI addresses, make
traffic -> Debian's Prometheus scrapes the agent through the Service's endpoints
as the ServiceMonitor says -> PromQL.

Nothing stands in for the kubelet: readiness, addresses, logs and exec are the
kubelet's. Prometheus runs on the host (not as a pod): the Prometheus Operator
is not part of this test, so its scrape configuration for the ServiceMonitor is
written here the way the operator generates it; and Debian's Prometheus is
built without Kubernetes service discovery, so the Endpoints the endpoints
controller made are handed to it as file_sd targets with the same meta labels.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from netprobe_testbed.cluster import REPO_ROOT
from netprobe_testbed.kube import wait_for
from netprobe_testbed.node import BUSYBOX_IMAGE
from netprobe_testbed.processes import free_port
from netprobe_testbed.prometheus import PROMETHEUS_SA, PrometheusServer, servicemonitor_tls

NAMESPACE = "netprobe-system"
PROBE = "e2e"
PORT = 8080
MANIFEST_IMAGE = "ghcr.io/netprobe/netprobe"
MONITORING_CRDS = REPO_ROOT / "tests" / "operator" / "fixtures" / "monitoring-crds.yaml"
PROGRAMS = ("tcp_retransmit", "tcp_connections", "tcp_rtt", "rx_latency")

# name -> (namespace, pod name or None for the Deployment-owned one, serves)
POD_PLAN = {
    "cart": ("shop", None, False),       # Deployment shop/cart: workload label "cart"
    "web": ("shop", "web-0", False),
    "api": ("payments", "api-0", True),
    "db": ("payments", "db-0", True),
}
CLEAN_PAIRS = [("cart", "api"), ("web", "api")]
LOSSY_PAIR = ("cart", "db")
CONNECTIONS = {("cart", "api"): 20, ("web", "api"): 16, ("cart", "db"): 24}
DROP_PERCENT = 20
# Traffic spread over several scrape intervals: a series born with its final value
# shows no increase to rate(), exactly as in a real Prometheus.
ROUNDS, ROUND_PAUSE = 4, 2.5


@dataclass(frozen=True)
class Identity:
    namespace: str
    pod: str
    ip: str


class NodeStack:
    def __init__(self, cp, node, image_ref: str, workdir: Path):
        self.cp, self.node, self.image_ref, self.workdir = cp, node, image_ref, workdir
        self.identities: dict[str, Identity] = {}
        self.connections_made: dict[tuple[str, str], int] = {}
        self.metrics_port = free_port()
        self.prom: PrometheusServer | None = None

    def kubectl(self, *args, **kw):
        return self.cp.kubectl(*args, **kw)

    def get_json(self, *args):
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    # --- set-up ----------------------------------------------------------------
    def __enter__(self) -> "NodeStack":
        try:
            self.install()
            self.workloads()
            self.apply_probe()
            self.start_prometheus()
        except BaseException:
            self.dump_logs()
            self.__exit__(None, None, None)
            raise
        return self

    def overlay(self) -> Path:
        """A kustomization over manifests/ that swaps in the local image, as a user would."""
        overlay = self.workdir / "overlay"
        overlay.mkdir(exist_ok=True)
        name, tag = self.image_ref.rsplit(":", 1)
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(REPO_ROOT / "manifests", overlay)],
            "images": [{"name": MANIFEST_IMAGE, "newName": name, "newTag": tag}],
            "patches": [{"target": {"kind": "Deployment", "name": "netprobe-operator"},
                         "patch": yaml.safe_dump([{"op": "replace",
                                                   "path": "/spec/template/spec/containers/0/env/1/value",
                                                   "value": self.image_ref}])}],
        }))
        return overlay

    def install(self) -> None:
        self.kubectl("apply", "-f", str(MONITORING_CRDS))
        self.kubectl("apply", "-k", str(self.overlay()))
        self.kubectl("-n", NAMESPACE, "rollout", "status", "deploy/netprobe-operator", "--timeout=120s",
                     timeout=150)

    def workloads(self) -> None:
        for ns in sorted({ns for ns, _, _ in POD_PLAN.values()}):
            self.kubectl("create", "namespace", ns)
        # Each connection: the server reads the client's line (data the kernel delivers
        # to a reading process: rx latency) and answers.
        serve = ["nc", "-ll", "-p", str(PORT), "-e", "sh", "-c", "read line; echo pong"]
        idle = ["sleep", "3600"]
        objects = []
        for name, (ns, pod, serves) in POD_PLAN.items():
            container = {"name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                         "command": serve if serves else idle}
            spec = {"nodeName": self.node.name, "terminationGracePeriodSeconds": 1, "containers": [container]}
            if pod is None:
                objects.append({"apiVersion": "apps/v1", "kind": "Deployment",
                                "metadata": {"name": name, "namespace": ns},
                                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                                         "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}})
            else:
                objects.append({"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": pod, "namespace": ns, "labels": {"app": name}}, "spec": spec})
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
        for name, (ns, _pod, _serves) in POD_PLAN.items():
            self.kubectl("-n", ns, "wait", "--for=condition=Ready", "pod", "-l", f"app={name}", "--timeout=90s")
            (pod,) = self.get_json("-n", ns, "get", "pods", "-l", f"app={name}")["items"]
            self.identities[name] = Identity(ns, pod["metadata"]["name"], pod["status"]["podIP"])

    def probe_body(self) -> dict:
        return {
            "apiVersion": "netprobe.io/v1alpha1", "kind": "NetworkProbe", "metadata": {"name": PROBE},
            "spec": {
                "programs": [{"name": p} for p in PROGRAMS],
                "nodeSelector": {"netprobe.test/real-node": "true"},
                "labels": ["workload", "peer_namespace", "peer_pod", "peer_workload"],
                "resolver": {"peers": "cluster"},
                "agent": {"metricsPort": self.metrics_port, "logLevel": "info"},
                "serviceMonitor": {"interval": "2s", "labels": {"release": "kube-prometheus-stack"}},
                "prometheusRule": {"thresholds": {"retransmitsPerSecond": 0.001, "for": "0s"}},
            },
        }

    def apply_probe(self) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(self.probe_body()))
        wait_for("the agent DaemonSet", lambda: self.kubectl(
            "-n", NAMESPACE, "get", "ds", f"netprobe-{PROBE}", check=False).returncode == 0, timeout=60)
        # BCC compiles four programs in the pod: minutes on a busy 2-CPU machine.
        self.kubectl("-n", NAMESPACE, "rollout", "status", f"ds/netprobe-{PROBE}", "--timeout=300s", timeout=330)

    def agent_pod(self) -> dict:
        (pod,) = self.get_json("-n", NAMESPACE, "get", "pods", "-l", f"netprobe.io/probe={PROBE}")["items"]
        return pod

    def agent_logs(self) -> str:
        return self.kubectl("-n", NAMESPACE, "logs", f"ds/netprobe-{PROBE}", check=False).stdout

    # --- Prometheus, as the ServiceMonitor says --------------------------------
    def start_prometheus(self) -> None:
        sm = self.get_json("-n", NAMESPACE, "get", "servicemonitor", f"netprobe-{PROBE}")
        rule = self.get_json("-n", NAMESPACE, "get", "prometheusrule", f"netprobe-{PROBE}")
        (endpoint,) = sm["spec"]["endpoints"]
        # What the Prometheus Operator generates for one ServiceMonitor endpoint (role
        # endpoints, keep the selected Service and port; its relabelings after).
        keep = [{"source_labels": [f"__meta_kubernetes_service_label_{_label_name(k)}"], "regex": v,
                 "action": "keep"} for k, v in sm["spec"]["selector"]["matchLabels"].items()]
        relabel = keep + [
            {"source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": endpoint["port"], "action": "keep"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
        ] + [{"source_labels": r["sourceLabels"], "target_label": r["targetLabel"], "action": r["action"]}
             for r in endpoint.get("relabelings", [])]
        targets = self.workdir / "endpoints.json"
        targets.write_text(json.dumps(self.discover_endpoints(sm["spec"]["namespaceSelector"]["matchNames"])))
        scrape = {
            "job_name": f"serviceMonitor/{NAMESPACE}/{sm['metadata']['name']}/0",
            "scrape_interval": endpoint["interval"],
            "metrics_path": endpoint.get("path", "/metrics"),
            "honor_labels": endpoint.get("honorLabels", False),
            "file_sd_configs": [{"files": [str(targets)]}],
            "relabel_configs": relabel,
        }
        if endpoint.get("scheme") == "https":
            scrape.update(self.prometheus_tls(endpoint))
        self.prom = PrometheusServer([scrape], rule["spec"]["groups"])
        self.prom.start()

    def prometheus_tls(self, endpoint: dict) -> dict:
        """The endpoint's TLS settings as a kube-prometheus-stack Prometheus pod has them."""
        namespace, name = PROMETHEUS_SA
        self.kubectl("create", "namespace", namespace)
        self.kubectl("-n", namespace, "create", "serviceaccount", name)
        ca_ref = endpoint["tlsConfig"]["ca"]["configMap"]
        ca_pem = self.get_json("-n", NAMESPACE, "get", "configmap", ca_ref["name"])["data"][ca_ref["key"]]
        return servicemonitor_tls(endpoint, self.cp.token_for(namespace, name), ca_pem, self.workdir)

    def discover_endpoints(self, namespaces: list[str]) -> list[dict]:
        """Kubernetes service discovery (role endpoints) done here: Debian's Prometheus is
        built without it. Every address of every Service's Endpoints, with the meta labels
        Prometheus would give it, so the ServiceMonitor's relabelings pick the agents."""
        groups = []
        for ns in namespaces:
            services = {s["metadata"]["name"]: s for s in self.get_json("-n", ns, "get", "services")["items"]}
            for eps in self.get_json("-n", ns, "get", "endpoints")["items"]:
                svc = services.get(eps["metadata"]["name"])
                if svc is None:
                    continue
                common = {"__meta_kubernetes_namespace": ns,
                          "__meta_kubernetes_service_name": svc["metadata"]["name"],
                          **{f"__meta_kubernetes_service_label_{_label_name(k)}": v
                             for k, v in (svc["metadata"].get("labels") or {}).items()}}
                for subset in eps.get("subsets") or []:
                    for port in subset.get("ports") or []:
                        for addr in subset.get("addresses") or []:
                            groups.append({"targets": [f"{addr['ip']}:{port['port']}"], "labels": {
                                **common, "__meta_kubernetes_endpoint_port_name": port.get("name", ""),
                                "__meta_kubernetes_pod_name": (addr.get("targetRef") or {}).get("name", ""),
                                "__meta_kubernetes_pod_node_name": addr.get("nodeName", "")}})
        if not groups:
            raise AssertionError(f"no Service endpoints in {namespaces}")
        return groups

    def wait_query(self, promql: str, ok=lambda r: bool(r), what: str = "", timeout: float = 90) -> list:
        return self.prom.wait_query(promql, ok, what, timeout)

    # --- traffic ---------------------------------------------------------------
    def exec_in(self, name: str, script: str, timeout: float = 120) -> str:
        ident = self.identities[name]
        return self.kubectl("-n", ident.namespace, "exec", ident.pod, "--", "sh", "-c", script,
                            timeout=timeout).stdout

    def connect(self, src: str, dst: str, count: int) -> int:
        """`count` connections src -> dst:PORT from inside src's pod; how many got the answer."""
        ip = self.identities[dst].ip
        out = self.exec_in(src, f"i=0; while [ $i -lt {count} ]; do echo ping | nc -w 3 {ip} {PORT}; "
                                f"i=$((i+1)); done; true")
        return out.split().count("pong")

    def add_random_drop(self, dst: str, src: str) -> None:
        """nftables in dst's network namespace drops DROP_PERCENT% of src's packets."""
        pid = self.node.pod_pid(self.identities[dst].namespace, self.identities[dst].pod)
        rules = (f"table inet netprobe_e2e_loss {{\n  chain input {{\n"
                 f"    type filter hook input priority 0; policy accept;\n"
                 f"    ip saddr {self.identities[src].ip} numgen random mod 100 < {DROP_PERCENT} drop\n  }}\n}}\n")
        result = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "nft", "-f", "-"], input=rules,
                                text=True, capture_output=True)
        assert result.returncode == 0, f"nft in {dst}'s network namespace: {result.stderr}"

    def make_traffic(self) -> None:
        self.add_random_drop(*reversed(LOSSY_PAIR))
        for _ in range(ROUNDS):
            for (a, b), count in CONNECTIONS.items():
                self.connections_made[(a, b)] = self.connections_made.get((a, b), 0) + \
                    self.connect(a, b, count // ROUNDS)
            time.sleep(ROUND_PAUSE)
        assert all(self.connections_made[p] == CONNECTIONS[p] for p in CLEAN_PAIRS), self.connections_made

    # --- tear-down -------------------------------------------------------------
    def dump_logs(self) -> None:
        for what, args in (("operator", ("-n", NAMESPACE, "logs", "deploy/netprobe-operator", "--tail=40")),
                           ("agent", ("-n", NAMESPACE, "logs", f"ds/netprobe-{PROBE}", "--tail=60")),
                           ("pods", ("get", "pods", "-A", "-o", "wide"))):
            try:
                print(f"--- {what} ---\n" + self.kubectl(*args, check=False).stdout)
            except Exception as err:  # noqa: BLE001 - diagnostics only
                print(f"--- {what}: {err}")
        if self.prom:
            print("--- prometheus log ---\n" + self.prom.log_tail())

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            self.dump_logs()
        errors = []
        steps = [
            lambda: self.prom and self.prom.stop(),
            lambda: self.kubectl("delete", "networkprobe", PROBE, "--ignore-not-found", "--timeout=60s"),
            lambda: self.kubectl("delete", "namespace", *sorted({ns for ns, _, _ in POD_PLAN.values()}),
                                 "--ignore-not-found", "--timeout=90s", timeout=120),
            lambda: self.kubectl("delete", "-k", str(self.overlay()), "--ignore-not-found", "--timeout=90s",
                                 timeout=120),
        ]
        for step in steps:
            try:
                step()
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(repr(err))
        if errors and exc_type is None:
            raise AssertionError("tear-down failed: " + "; ".join(errors))


def _label_name(key: str) -> str:
    """Kubernetes label key -> Prometheus meta label suffix (non-alphanumerics become _)."""
    return "".join(c if c.isalnum() else "_" for c in key)
