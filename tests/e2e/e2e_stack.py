"""The end-to-end stack: control plane, operator, agent, lab, Prometheus.

Each piece is started the way production starts it, and the places where this
machine must stand in for a kubelet are explicit:
- pods are API objects bound to a Node named after this host and reported
  Running (status subresource) with the addresses of lab network namespaces;
- the agent pod of the DaemonSet is played by a process started from that
  pod's spec: its command and arguments, its environment with the downward-API
  values a kubelet would fill in, its ConfigMap volume written to a directory
  (paths under the mount point are mapped there) and the agent ServiceAccount's
  token as its credentials;
- Prometheus gets a scrape job equivalent to the ServiceMonitor (same job name,
  path, port, interval, honorLabels) and the PrometheusRule's groups.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from netprobe_testbed.kube import mark_pod_running, register_node, wait_for
from netprobe_testbed import dns_server
from netprobe_testbed.netns import Lab
from netprobe_testbed.prometheus import PrometheusServer, free_port

from netprobe_testbed import operator_harness as nc  # install, operator as its ServiceAccount
from node_agent.programs import CATALOGUE

NAMESPACE = nc.NAMESPACE
HOST = socket.gethostname()
PORT = 8080
GRACE_SECONDS = 5
PROBE = "e2e"
NODE_LABEL = {"netprobe.test/e2e": "true"}

# lab pod -> (namespace, pod name or None for the Deployment-owned one)
POD_PLAN = {
    "cart": ("shop", None),          # Deployment shop/cart: workload label "cart"
    "web": ("shop", "web-0"),
    "api": ("payments", "api-0"),
    "db": ("inventory", "db-0"),
}
LAB_PODS = [*POD_PLAN, "late"]       # "late" gets its API pod only after the API server restart
CLEAN_PAIRS = [("cart", "api"), ("web", "api")]
LOSSY_PAIR = ("cart", "db")
CONNECTIONS = {("cart", "api"): 20, ("web", "api"): 16, ("cart", "db"): 24}
# Traffic is spread over several scrape intervals: a series born with its final
# value shows no increase to rate(), exactly as in a real Prometheus.
ROUNDS, ROUND_PAUSE = 4, 2.5


@dataclass(frozen=True)
class Identity:
    namespace: str
    pod: str


class Stack:
    def __init__(self, cp, api: client.ApiClient, workdir: Path):
        self.cp, self.api, self.workdir = cp, api, workdir
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.lab = Lab(LAB_PODS, prefix="e2e", pin_cpu=0)  # clean pairs must show no retransmit
        self.identities: dict[str, Identity] = {}
        self.connections_made: dict[tuple[str, str], int] = {}
        self.netprobe = None
        self.agent: subprocess.Popen | None = None
        self.prom: PrometheusServer | None = None
        self.metrics_port = free_port()

    # --- set-up ----------------------------------------------------------------
    def __enter__(self) -> "Stack":
        try:
            self._start()
        except BaseException:
            self._dump_logs()
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self.lab.start()
        self.netprobe = nc.install(self.cp, self.api, self.workdir)
        self.netprobe.install_monitoring_crds()
        register_node(self.api, HOST, labels=NODE_LABEL, internal_ip=self.lab.host_ip4)
        for ns in {ns for ns, _ in POD_PLAN.values()}:
            self.core.create_namespace({"metadata": {"name": ns}})
        self._create_cart_deployment()
        for lab_pod, (ns, name) in POD_PLAN.items():
            if name is not None:
                self.create_lab_pod(lab_pod, ns, name)
        self.netprobe.apply_probe(self.probe_body())
        self._start_agent_as_daemonset_pod()
        self._start_prometheus()

    def probe_body(self) -> dict:
        return {
            "apiVersion": "netprobe.io/v1alpha1", "kind": "NetworkProbe", "metadata": {"name": PROBE},
            "spec": {
                "programs": [{"name": p} for p in CATALOGUE],
                "nodeSelector": NODE_LABEL,
                "labels": ["workload", "peer_namespace", "peer_pod", "peer_workload"],
                "resolver": {"peers": "cluster", "deletedPodGraceSeconds": GRACE_SECONDS},
                "agent": {"metricsPort": self.metrics_port, "logLevel": "info"},
                "serviceMonitor": {"interval": "2s", "labels": {"release": "kube-prometheus-stack"}},
                "prometheusRule": {"thresholds": {"retransmitsPerSecond": 0.001, "for": "0s"}},
            },
        }

    def _create_cart_deployment(self) -> None:
        labels = {"app": "cart"}
        self.apps.create_namespaced_deployment("shop", {
            "metadata": {"name": "cart"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"nodeName": HOST,
                                           "containers": [{"name": "cart", "image": "registry.test/cart:1"}]}}},
        })
        pod = wait_for("the cart Deployment's pod", lambda: next(
            iter(self.core.list_namespaced_pod("shop", label_selector="app=cart").items), None), timeout=60)
        self._mark_running("cart", "shop", pod.metadata.name)

    def create_lab_pod(self, lab_pod: str, namespace: str, name: str) -> Identity:
        self.core.create_namespaced_pod(namespace, {
            "metadata": {"name": name, "labels": {"app": name.rsplit("-", 1)[0]}},
            "spec": {"nodeName": HOST, "containers": [{"name": "main", "image": "registry.test/app:1"}]},
        })
        return self._mark_running(lab_pod, namespace, name)

    def _mark_running(self, lab_pod: str, namespace: str, name: str) -> Identity:
        pod = self.lab.pods[lab_pod]
        mark_pod_running(self.api, namespace, name, pod_ip=pod.ip4, pod_ips=[pod.ip4, pod.ip6])
        self.identities[lab_pod] = Identity(namespace, name)
        return self.identities[lab_pod]

    def identity(self, lab_pod: str) -> Identity:
        return self.identities[lab_pod]

    # --- the agent, as its DaemonSet pod ---------------------------------------
    def _start_agent_as_daemonset_pod(self) -> None:
        ds_name = f"netprobe-{PROBE}"
        wait_for("the agent DaemonSet", lambda: self._read_daemonset(ds_name), timeout=60)
        pod = wait_for("the agent pod bound to this host", lambda: next(
            (p for p in self.core.list_namespaced_pod(NAMESPACE, label_selector=f"netprobe.io/probe={PROBE}").items
             if p.spec.node_name == HOST), None), timeout=60)
        spec = pod.spec
        (container,) = spec.containers
        mounts = self._materialize_configmap_volumes(spec, container)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        downward = {"spec.nodeName": HOST, "metadata.name": pod.metadata.name,
                    "metadata.namespace": NAMESPACE}
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = var.value
            elif var.value_from and var.value_from.field_ref:
                env[var.name] = downward[var.value_from.field_ref.field_path]
            else:
                raise AssertionError(f"unsupported env source for {var.name}")
        # In the pod, the ServiceAccount token is mounted; here, a kubeconfig with that token.
        env["KUBECONFIG"] = str(self.cp.kubeconfig_for(NAMESPACE, spec.service_account_name))
        argv = [self._map_path(a, mounts) for a in [*container.command, *(container.args or [])]]
        argv[0] = shutil.which(argv[0], path=str(Path(sys.executable).parent)) or argv[0]
        self.agent_log = self.workdir / "agent.log"
        self.agent = subprocess.Popen(argv, env=env, stdout=open(self.agent_log, "w"),
                                      stderr=subprocess.STDOUT, cwd=self.workdir)
        (port,) = [p.container_port for p in container.ports if p.name == "metrics"]
        assert port == self.metrics_port
        wait_for("the agent's /readyz", self._agent_ready, timeout=180, interval=1)
        # Now the kubelet would see the readiness probe pass.
        mark_pod_running(self.api, NAMESPACE, pod.metadata.name, pod_ip=self.lab.host_ip4)

    def _read_daemonset(self, name: str):
        try:
            return self.apps.read_namespaced_daemon_set(name, NAMESPACE)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def _materialize_configmap_volumes(self, spec, container) -> dict[str, Path]:
        mounts = {}
        volumes = {v.name: v for v in spec.volumes}
        for vm in container.volume_mounts:
            volume = volumes[vm.name]
            if volume.config_map is None:
                continue  # host paths are this host's own paths already
            cm = self.core.read_namespaced_config_map(volume.config_map.name, NAMESPACE)
            target = self.workdir / "volumes" / vm.name
            target.mkdir(parents=True, exist_ok=True)
            for key, text in (cm.data or {}).items():
                (target / key).write_text(text)
            mounts[vm.mount_path] = target
        return mounts

    @staticmethod
    def _map_path(arg: str, mounts: dict[str, Path]) -> str:
        for mount_path, local in mounts.items():
            if arg == mount_path or arg.startswith(mount_path.rstrip("/") + "/"):
                return str(local / os.path.relpath(arg, mount_path))
        return arg

    def _agent_ready(self) -> bool:
        if self.agent.poll() is not None:
            raise AssertionError(f"agent exited {self.agent.returncode}:\n{self.agent_log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def agent_metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def agent_log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.agent_log.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return "(no agent log)"

    # --- Prometheus, as the ServiceMonitor says --------------------------------
    def _start_prometheus(self) -> None:
        sm = self.netprobe.wait_child("ServiceMonitor", f"netprobe-{PROBE}")
        svc = self.netprobe.wait_child("Service", f"netprobe-{PROBE}")
        rule = self.netprobe.wait_child("PrometheusRule", f"netprobe-{PROBE}")
        (endpoint,) = sm["spec"]["endpoints"]
        (svc_port,) = [p for p in svc["spec"]["ports"] if p["name"] == endpoint["port"]]
        assert svc_port["targetPort"] in (self.metrics_port, "metrics")
        scrape = {
            "job_name": svc["metadata"]["name"],  # a ServiceMonitor's job label is the Service's name
            "scrape_interval": endpoint["interval"],
            "metrics_path": endpoint.get("path", "/metrics"),
            "honor_labels": endpoint.get("honorLabels", False),
            # the relabeling the ServiceMonitor asks for, resolved: node = the agent pod's node
            "static_configs": [{"targets": [f"127.0.0.1:{self.metrics_port}"], "labels": {"node": HOST}}],
        }
        self.prom = PrometheusServer([scrape], rule["spec"]["groups"])
        self.prom.start()

    def wait_query(self, promql: str, ok=lambda r: bool(r), what: str = "", timeout: float = 60) -> list:
        last = []

        def probe():
            nonlocal last
            last = self.prom.query(promql)
            return last if ok(last) else False
        try:
            return wait_for(what or promql, probe, timeout=timeout, interval=1)
        except TimeoutError:
            raise TimeoutError(f"{what}: {promql} -> {last}") from None

    def dashboard_queries(self) -> list[tuple[str, str]]:
        """(panel title, PromQL) of every panel of the probe's dashboards, Grafana variables filled in."""
        out = []
        cms = self.core.list_config_map_for_all_namespaces(label_selector=f"netprobe.io/probe={PROBE}").items
        for cm in cms:
            for key, text in (cm.data or {}).items():
                if not key.endswith(".json"):
                    continue
                dash = json.loads(text)
                constants = {v["name"]: v["query"] for v in dash.get("templating", {}).get("list", [])
                             if v.get("type") == "constant"}
                for panel in _panels(dash.get("panels", [])):
                    for target in panel.get("targets", []):
                        if target.get("expr"):
                            out.append((f"{dash.get('title')}/{panel.get('title')}",
                                        _fill_grafana_variables(target["expr"], constants)))
        return out

    # --- traffic ---------------------------------------------------------------
    def make_traffic(self) -> None:
        for server in ("api", "db"):
            self.lab.serve_tcp(server, PORT)
        src, dst = LOSSY_PAIR
        self.lab.add_random_drop(dst, 20, from_ip=self.lab.pods[src].ip4)
        for round_ in range(ROUNDS):
            for (a, b), count in CONNECTIONS.items():
                made = self.lab.connect_many(a, self.lab.pods[b].ip4, PORT, count // ROUNDS)
                self.connections_made[(a, b)] = self.connections_made.get((a, b), 0) + made
            time.sleep(ROUND_PAUSE)
        assert all(self.connections_made[p] == CONNECTIONS[p] for p in CLEAN_PAIRS), self.connections_made
        # A refused connection: a reset, so the resets panel has something to show.
        self.lab.connect_many("web", self.lab.pods["api"].ip4, PORT + 1, 2, timeout=2)
        # DNS for the DNS panels: a server in db, answered queries and a SERVFAIL from web.
        dns = self.lab.pods["db"].popen([sys.executable, dns_server.__file__, "53"], stdout=subprocess.PIPE,
                                        text=True)
        assert dns.stdout.readline().strip() == "ready", "the DNS server did not start"
        for name in ("a.ok.test", "b.ok.test", "fail.test"):
            self.lab.pods["web"].run(["dig", f"@{self.lab.pods['db'].ip4}", "+tries=1", "+timeout=2", name, "A"])

    def wait_probe_ready(self) -> None:
        self.netprobe.wait_condition(PROBE, "Ready", "True", timeout=120)

    # --- tear-down -------------------------------------------------------------
    def _dump_logs(self) -> None:
        print("--- agent log ---\n" + self.agent_log_tail())
        if self.netprobe:
            print("--- operator log ---\n" + self.netprobe.operator.log_tail())
        if self.prom:
            print("--- prometheus log ---\n" + self.prom.log_tail())

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            self._dump_logs()
        # Every step runs even when an earlier one fails: a broken tear-down
        # must not leave namespaces, processes or API objects to the next test.
        errors = []
        for step in (self._stop_prometheus, self._stop_agent, self._remove_api_objects, self.lab.stop):
            try:
                step()
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(f"{step.__name__}: {err!r}")
        if errors and exc_type is None:
            raise AssertionError("tear-down failed: " + "; ".join(errors))

    def _stop_prometheus(self) -> None:
        if self.prom:
            self.prom.stop()

    def _stop_agent(self) -> None:
        if self.agent and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                raise

    def _remove_api_objects(self) -> None:
        if not self.netprobe:
            return
        try:
            self.netprobe.delete_probe(PROBE)
            for ns in {ns for ns, _ in POD_PLAN.values()}:
                self.core.delete_namespace(ns)
            self.core.delete_node(HOST)
            self.netprobe.remove_monitoring_crds()
        finally:
            nc.uninstall(self.netprobe)


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _fill_grafana_variables(expr: str, constants: dict[str, str]) -> str:
    """What Grafana sends for 'All' selections: constants as set, other variables match anything."""
    for name, value in constants.items():
        expr = re.sub(r"\$\{?%s\}?(?![A-Za-z0-9_])" % re.escape(name), value, expr)
    expr = re.sub(r'=~?"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?"', '=~".*"', expr)
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
