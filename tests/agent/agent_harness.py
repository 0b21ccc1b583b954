"""Driving the agent in tests: an agent process run through its CLI, a
scrape parser, bpftool views of what a process holds in the kernel."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from netprobe_testbed.netns import wait_until

AGENT = [sys.executable, "-m", "node_agent.cli"]
ALL_PROGRAMS = {"tcp_retransmit": {}, "tcp_connections": {}, "tcp_rtt": {}, "rx_latency": {}}
LABELS = ["namespace", "pod", "workload", "peer_namespace", "peer_pod", "peer_workload"]


def need_root():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs and making network namespaces needs root")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scrape:
    """One /metrics response, queried by metric name and a subset of labels."""

    def __init__(self, text: str):
        self.samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def all(self, name: str, **labels) -> list:
        return [s for s in self.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels) -> float:
        """Sum over every series matching; 0 when none does."""
        return sum(s.value for s in self.all(name, **labels))


class AgentProcess:
    def __init__(self, workdir: Path, programs: dict, pods_file: Path, labels=LABELS, prefix=None, env=None):
        self.workdir = workdir
        self.port = free_port()
        self.config_path = workdir / "agent.yaml"
        self.pods_file = pods_file
        self.labels = labels
        self.log_path = workdir / "agent.log"
        self.write_config(programs)
        self.prefix = prefix or []
        self.env = env            # extra environment variables of the agent process
        self.proc: subprocess.Popen | None = None

    def config_text(self, programs: dict, **extra) -> str:
        data = {"listen": f"127.0.0.1:{self.port}", "log_level": "info", "labels": self.labels,
                "resolver": {"static": {"file": str(self.pods_file)}}, "programs": programs}
        data.update(extra)
        return yaml.safe_dump(data, sort_keys=False)

    def write_config(self, programs: dict | None = None, text: str | None = None) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text if text is not None else self.config_text(programs))
        tmp.replace(self.config_path)

    def start(self, timeout: float = 120) -> "AgentProcess":
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.prefix + AGENT + ["--config", str(self.config_path)],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2],
                                     env=dict(os.environ, **self.env) if self.env else None)
        wait_until(self._ready, timeout=timeout, interval=0.3, what=f"agent ready (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"agent exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def scrape(self) -> Scrape:
        r = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=30)
        r.raise_for_status()
        return Scrape(r.text)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        return self.proc.returncode if self.proc else 0


def expected_attach(programs: dict) -> dict[str, str]:
    """The attach mode each program gets on this kernel with these options, by
    the agent's own feature detection (node_agent/kernel/features.py): the
    first candidate strategy the kernel offers. The same tests then hold on a
    kernel with kprobes (rx_latency: kprobe) and one without (its fallback)."""
    from node_agent.kernel.features import KernelFeatures
    from node_agent.programs import CATALOGUE

    features, attach = KernelFeatures(), {}
    for name, options in programs.items():
        spec = CATALOGUE[name]
        candidates = spec.candidate_strategies({**spec.defaults(), **options})
        attach[name] = next((s.name for s in candidates if not features.unmet(s)), candidates[-1].name)
    return attach


def bpf_objects_of(pid: int) -> dict[str, set[int]]:
    """Ids of the BPF programs and maps a process holds open, from the
    kernel's own fdinfo (prog_id: / map_id: lines)."""
    held = {"prog": set(), "map": set()}
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for entry in fdinfo.iterdir():
        try:
            text = entry.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                held["prog"].add(int(line.split()[1]))
            elif line.startswith("map_id:"):
                held["map"].add(int(line.split()[1]))
    return held


def bpf_ids() -> dict[str, set[int]]:
    ids = {}
    for kind in ("prog", "map", "link"):
        out = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True, check=True).stdout
        ids[kind] = {obj["id"] for obj in json.loads(out or "[]")}
    return ids


