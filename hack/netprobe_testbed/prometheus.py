"""A real Prometheus server (Debian's `prometheus` package) for tests.

Started on loopback with its own storage in a temporary directory, a scrape
config the caller gives (e.g. one equivalent to a rendered ServiceMonitor) and
rule files (e.g. the groups of a rendered PrometheusRule). Queried through its
HTTP API, exactly as Grafana would.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from netprobe_testbed.polling import wait_for
from netprobe_testbed.processes import free_port, log_tail, stop_process

# The ServiceAccount kube-prometheus-stack's Prometheus runs as; manifests/prometheus-rbac.yaml
# grants it get on the agents' /metrics.
PROMETHEUS_SA = ("monitoring", "kube-prometheus-stack-prometheus")
POD_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def servicemonitor_tls(endpoint: dict, token: str, ca_pem: str, workdir: Path) -> dict:
    """The scrape settings the Prometheus Operator makes of a ServiceMonitor endpoint's TLS
    settings, with the files a kube-prometheus-stack Prometheus pod has: its ServiceAccount's
    `token` (the endpoint names the pod's token file) and the CA of the endpoint's ConfigMap."""
    assert endpoint["bearerTokenFile"] == POD_TOKEN_FILE, endpoint
    token_file, ca_file = workdir / "prometheus-token", workdir / "prometheus-ca.crt"
    token_file.write_text(token)
    ca_file.write_text(ca_pem)
    return {"scheme": "https", "bearer_token_file": str(token_file),
            "tls_config": {"ca_file": str(ca_file), "server_name": endpoint["tlsConfig"]["serverName"]}}


class PrometheusServer:
    def __init__(self, scrape_configs: list[dict], rule_groups: list[dict] | None = None,
                 evaluation_interval: str = "1s", binary: str = "prometheus"):
        self.binary = shutil.which(binary) or binary
        self.scrape_configs = scrape_configs
        self.rule_groups = rule_groups or []
        self.evaluation_interval = evaluation_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "PrometheusServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> None:
        if not shutil.which(self.binary):
            raise FileNotFoundError("prometheus not found: install Debian's `prometheus` package (make setup)")
        self.workdir = Path(tempfile.mkdtemp(prefix="netprobe-prom-"))
        config = {
            "global": {"evaluation_interval": self.evaluation_interval},
            "scrape_configs": self.scrape_configs,
        }
        if self.rule_groups:
            rules = self.workdir / "rules.yaml"
            rules.write_text(yaml.safe_dump({"groups": self.rule_groups}, sort_keys=False))
            config["rule_files"] = [str(rules)]
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = self.workdir / "prometheus.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--web.enable-lifecycle"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"prometheus not ready after {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        stop_process(self.proc, 15)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines, missing="(no log)")

    def _get(self, path: str, params: dict) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} failed: {body}")
        return body["data"]

    def wait_query(self, promql: str, ok=lambda r: bool(r), what: str = "", timeout: float = 60) -> list:
        """The query's result once `ok` accepts it; TimeoutError with the last result."""
        last = []

        def probe():
            nonlocal last
            last = self.query(promql)
            return last if ok(last) else False
        try:
            return wait_for(what or promql, probe, timeout=timeout, interval=1)
        except TimeoutError:
            raise TimeoutError(f"{what}: {promql} -> {last}") from None

    def query(self, promql: str) -> list[dict]:
        """Instant query; returns the result vector (list of {metric, value})."""
        return self._get("/api/v1/query", {"query": promql})["result"]

    def alerts(self) -> list[dict]:
        return self._get("/api/v1/alerts", {})["alerts"]

    def targets(self) -> list[dict]:
        return self._get("/api/v1/targets", {})["activeTargets"]
