"""The end-to-end stack: control plane, operator, agent, lab, Prometheus.

Each piece is started the way production starts it, and the places where this
machine must stand in for a kubelet are explicit:
- pods are API objects bound to a Node named after this host and reported
  Running (status subresource) with the addresses of lab network namespaces;
- the agent pod of the DaemonSet is played by a process started from that
  pod's spec: its command and arguments, its environment with the downward-API
  values a kubelet would fill in, its ConfigMap and Secret volumes written to
  directories (Secrets the way the kubelet's atomic writer does, and rewritten
  by sync_volumes() as the kubelet's periodic sync would; paths under the
  mount points, in the arguments and in the agent's config file, are mapped
  there) and the agent ServiceAccount's token as its credentials;
- Prometheus gets a scrape job equivalent to the ServiceMonitor (same job name,
  path, port, interval, honorLabels, scheme, TLS settings and bearer token
  file, the token being the one kube-prometheus-stack's Prometheus
  ServiceAccount would have) and the PrometheusRule's groups.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from netprobe_testbed.agent import AgentProcess
from netprobe_testbed.kube import mark_pod_running, register_node, wait_for
from netprobe_testbed import dns_server
from netprobe_testbed.netns import Lab
from netprobe_testbed.processes import free_port
from netprobe_testbed.prometheus import PROMETHEUS_SA, PrometheusServer, servicemonitor_tls
from netprobe_testbed.volumes import write_volume

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
CONNECTIONS = {("cart", "api"): 20, ("web", "api"): 16, ("cart", "db"): 8}
# The lossy pair moves 1 MB each way per connection with 10 % of what arrives
# at db dropped: TSO/GSO packets of many segments, so a retransmission carries
# several segments, and the alert must see segments to fire (docs/agent.md).
LOSSY_PAYLOAD, LOSSY_DROP_PERCENT = 1_000_000, 10
# Traffic is spread over several scrape intervals: a series born with its final
# value shows no increase to rate(), exactly as in a real Prometheus.
ROUNDS, ROUND_PAUSE = 4, 2.5
# DNS from two client pods to the server in db: (name, qtype, transport, rcode), each asked once.
# (cart's TCP to db crosses the lossy pair's drop rule: its DNS is UDP only.)
DNS_ASKED = {
    "web": [("a.ok.test", "A", "udp", "NOERROR"), ("b.ok.test", "A", "udp", "NOERROR"),
            ("fail.test", "A", "udp", "SERVFAIL"), ("c.ok.test", "AAAA", "tcp", "NOERROR")],
    "cart": [("nx.test", "A", "udp", "NXDOMAIN"), ("d.ok.test", "A", "udp", "NOERROR")],
}
# Room for every name this machine asks while the e2e runs (the cap is per node, and the
# agent sees the whole host's DNS): the names above get their own label.
QUERY_NAMES = 256
# UDP datagrams web sends api on a port an nftables rule (with a counter) drops: NETFILTER_DROP of api.
DROPPED_DATAGRAMS, DROPPED_PORT = 5, 9999
# kube-prometheus-stack's Prometheus ServiceAccount, as manifests/prometheus-rbac.yaml names it.


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
        self.agent: AgentProcess | None = None
        self.prom: PrometheusServer | None = None
        self.metrics_port = free_port()
        self.secret_volumes: dict[str, tuple[str, list, Path]] = {}   # volume -> (secret, items, dir)
        self.server_name: str | None = None   # the ServiceMonitor's tlsConfig.serverName
        self.ca_file: Path | None = None
        self.prometheus_token: str | None = None

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
                # dns with query names: the CRD's camelCase option reaches the agent
                "programs": [{"name": p, **({"queryNames": QUERY_NAMES} if p == "dns" else {})} for p in CATALOGUE],
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
        mounts = self._materialize_volumes(spec, container)
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
        (port,) = [p.container_port for p in container.ports if p.name == "metrics"]
        assert port == self.metrics_port
        self.agent = AgentProcess(None, self.workdir / "agent.log", f"127.0.0.1:{port}",
                                  command=argv, env=env, cwd=self.workdir).start()
        self.agent.wait_ready(timeout=180)
        # Now the kubelet would see the readiness probe pass.
        mark_pod_running(self.api, NAMESPACE, pod.metadata.name, pod_ip=self.lab.host_ip4)

    def _read_daemonset(self, name: str):
        try:
            return self.apps.read_namespaced_daemon_set(name, NAMESPACE)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def _materialize_volumes(self, spec, container) -> dict[str, Path]:
        mounts = {}
        volumes = {v.name: v for v in spec.volumes}
        configmaps = []
        for vm in container.volume_mounts:
            volume = volumes[vm.name]
            target = self.workdir / "volumes" / vm.name
            if volume.secret is not None:
                self.secret_volumes[vm.name] = (volume.secret.secret_name, volume.secret.items or [], target)
                mounts[vm.mount_path] = target
            elif volume.config_map is not None:
                configmaps.append((volume.config_map.name, target))
                mounts[vm.mount_path] = target
            # host paths are this host's own paths already
        self.sync_volumes()
        for name, target in configmaps:
            cm = self.core.read_namespaced_config_map(name, NAMESPACE)
            target.mkdir(parents=True, exist_ok=True)
            for key, text in (cm.data or {}).items():
                (target / key).write_text(self._map_paths_in(text, mounts))
        return mounts

    def sync_volumes(self) -> None:
        """The kubelet's sync of Secret volumes: rewrite the ones whose Secret changed."""
        for name, (secret_name, items, target) in self.secret_volumes.items():
            secret = self.core.read_namespaced_secret(secret_name, NAMESPACE)
            data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
            files = {i.path: data[i.key] for i in items} if items else data
            current = {f: (target / f).read_bytes() for f in files if (target / f).exists()}
            if current != files:
                write_volume(target, files)

    @staticmethod
    def _map_paths_in(text: str, mounts: dict[str, Path]) -> str:
        for mount_path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
            text = re.sub(re.escape(mount_path.rstrip("/")) + r"(?=/)", str(local), text)
        return text

    @staticmethod
    def _map_path(arg: str, mounts: dict[str, Path]) -> str:
        for mount_path, local in mounts.items():
            if arg == mount_path or arg.startswith(mount_path.rstrip("/") + "/"):
                return str(local / os.path.relpath(arg, mount_path))
        return arg

    def agent_metrics(self) -> str:
        """/metrics as Prometheus gets it (HTTPS, its token, the CA and server name of the ServiceMonitor)."""
        if self.server_name is None:   # spec.agent.secureMetrics false
            return self.agent.metrics_text()
        status, body = self.https_get("/metrics", token=self.prometheus_token)
        assert status == 200, (status, body[:300])
        return body

    def https_get(self, path: str, token: str | None = None, ca_file: Path | None = None,
                  server_name: str | None = None) -> tuple[int, str]:
        """One GET to the agent over TLS, verifying `ca_file` and `server_name` (default: the ServiceMonitor's)."""
        ctx = ssl.create_default_context(cafile=str(ca_file or self.ca_file))
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=server_name or self.server_name) as tls:
                auth = f"Authorization: Bearer {token}\r\n" if token else ""
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.server_name}\r\n{auth}"
                            f"Connection: close\r\n\r\n".encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode(errors="replace")

    def served_certificate(self) -> bytes:
        """The DER certificate a new TLS connection to the agent gets."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=self.server_name) as tls:
                return tls.getpeercert(binary_form=True)

    def agent_log_tail(self, lines: int = 60) -> str:
        return self.agent.log_tail(lines) if self.agent else "(no agent log)"

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
        if endpoint.get("scheme") == "https":
            scrape.update(self._prometheus_tls(endpoint))
        self.prom = PrometheusServer([scrape], rule["spec"]["groups"])
        self.prom.start()

    def _prometheus_tls(self, endpoint: dict) -> dict:
        """The endpoint's TLS settings as a kube-prometheus-stack Prometheus pod has them."""
        namespace, name = PROMETHEUS_SA
        self.core.create_namespace({"metadata": {"name": namespace}})
        self.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        self.prometheus_token = self.cp.token_for(namespace, name)
        ca_ref = endpoint["tlsConfig"]["ca"]["configMap"]
        ca_pem = self.core.read_namespaced_config_map(ca_ref["name"], NAMESPACE).data[ca_ref["key"]]
        scrape = servicemonitor_tls(endpoint, self.prometheus_token, ca_pem, self.workdir)
        self.ca_file, self.server_name = Path(scrape["tls_config"]["ca_file"]), scrape["tls_config"]["server_name"]
        return scrape

    def wait_query(self, promql: str, ok=lambda r: bool(r), what: str = "", timeout: float = 60) -> list:
        return self.prom.wait_query(promql, ok, what, timeout)

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
        self.lab.add_random_drop(dst, LOSSY_DROP_PERCENT, from_ip=self.lab.pods[src].ip4)
        for round_ in range(ROUNDS):
            for (a, b), count in CONNECTIONS.items():
                lossy = (a, b) == LOSSY_PAIR
                made = self.lab.connect_many(a, self.lab.pods[b].ip4, PORT, count // ROUNDS,
                                             payload=b"x" * (LOSSY_PAYLOAD if lossy else 64),
                                             timeout=30 if lossy else 10)
                self.connections_made[(a, b)] = self.connections_made.get((a, b), 0) + made
            time.sleep(ROUND_PAUSE)
        assert all(self.connections_made[p] == CONNECTIONS[p] for p in CLEAN_PAIRS), self.connections_made
        # A refused connection: a reset, so the resets panel has something to show.
        self.lab.connect_many("web", self.lab.pods["api"].ip4, PORT + 1, 2, timeout=2)
        # DNS for the DNS panels: a server in db, answered queries and a SERVFAIL from web.
        dns = self.lab.pods["db"].popen([sys.executable, dns_server.__file__, "53"], stdout=subprocess.PIPE,
                                        text=True)
        assert dns.stdout.readline().strip() == "ready", "the DNS server did not start"
        for client_pod, asked in DNS_ASKED.items():
            for name, qtype, transport, rcode in asked:
                out = self.lab.pods[client_pod].run(["dig", f"@{self.lab.pods['db'].ip4}", "+tries=1", "+timeout=2",
                                                     f"+{'' if transport == 'tcp' else 'no'}tcp", name, qtype]).stdout
                assert f"status: {rcode}" in out, out
        # Drops with the kernel's own count: datagrams an nftables rule with a counter drops at api.
        ruleset = ("table inet e2e_drops {\n  chain input { type filter hook input priority 0; policy accept;\n"
                   f"    ip saddr {self.lab.pods['web'].ip4} udp dport {DROPPED_PORT} counter drop\n  }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", self.lab.pods["api"].netns, "nft", "-f", "-"], input=ruleset,
                       text=True, check=True, capture_output=True)
        send = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "for _ in range(int(sys.argv[3])): s.sendto(b'x', (sys.argv[1], int(sys.argv[2])))\n")
        self.lab.pods["web"].run([sys.executable, "-c", send, self.lab.pods["api"].ip4, str(DROPPED_PORT),
                                  str(DROPPED_DATAGRAMS)])

    def rule_counter(self, lab_pod: str) -> int:
        """Packets the e2e_drops table's rule dropped in a pod (nftables' own counter)."""
        out = json.loads(self.lab.pods[lab_pod].run(["nft", "-j", "list", "table", "inet", "e2e_drops"]).stdout)
        (packets,) = [e["counter"]["packets"] for item in out["nftables"] if "rule" in item
                      for e in item["rule"]["expr"] if "counter" in e]
        return packets

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
        if self.agent and self.agent.stop(30) == -signal.SIGKILL:
            raise AssertionError("the agent did not stop within 30s of SIGTERM")

    def _remove_api_objects(self) -> None:
        if not self.netprobe:
            return
        try:
            self.netprobe.delete_probe(PROBE)
            for ns in {ns for ns, _ in POD_PLAN.values()} | ({PROMETHEUS_SA[0]} if self.prometheus_token else set()):
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
