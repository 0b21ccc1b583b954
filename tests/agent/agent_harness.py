"""Driving the agent in tests: the test bed's agent process on a config of the
test's programs, a scrape parser, bpftool views of what a process holds in the kernel."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from netprobe_testbed import agent as testbed
from netprobe_testbed.netns import TIME_SCALE, wait_until
from netprobe_testbed.processes import free_port

ALL_PROGRAMS = {name: {} for name in testbed.ALL_PROGRAMS}     # every program, default options
LABELS = list(testbed.ALL_LABELS)


def need_root():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs and making network namespaces needs root")


class Scrape:
    """One /metrics response, queried by metric name and a subset of labels."""

    def __init__(self, text: str):
        self.families = {fam.name: fam for fam in text_string_to_metric_families(text)}
        self.samples = [s for fam in self.families.values() for s in fam.samples]

    def family(self, name: str):
        """A metric family by its name (a counter's with or without _total), or None."""
        return self.families.get(name) or self.families.get(name.removesuffix("_total"))

    def all(self, name: str, **labels) -> list:
        return [s for s in self.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels) -> float:
        """Sum over every series matching; 0 when none does."""
        return sum(s.value for s in self.all(name, **labels))


class AgentProcess(testbed.AgentProcess):
    """The agent on `programs` with a static resolver of `pods_file`, its files in
    `workdir`; `env`: extra environment variables of the agent process."""

    def __init__(self, workdir: Path, programs: dict, pods_file: Path, labels=testbed.ALL_LABELS, prefix=(),
                 env=None):
        self.port = free_port()
        super().__init__(workdir / "agent.yaml", workdir / "agent.log", f"127.0.0.1:{self.port}",
                         prefix=prefix, env=dict(os.environ, **env) if env else None)
        self.pods_file, self.labels = pods_file, labels
        self.write_config(programs)

    def config_text(self, programs: dict, **extra) -> str:
        return yaml.safe_dump(testbed.agent_config(self.listen, self.pods_file, programs, self.labels, **extra),
                              sort_keys=False)

    def write_config(self, programs: dict | None = None, text: str | None = None) -> None:
        testbed.write_config(self.config_path, text if text is not None else self.config_text(programs))

    def start(self, timeout: float = 120) -> "AgentProcess":
        super().start()
        self.wait_ready(timeout * TIME_SCALE)     # BCC's compiles under a VM's emulation take longer
        return self

    def scrape(self) -> Scrape:
        return Scrape(self.metrics_text(timeout=30))

    def stop(self) -> int:
        code = super().stop(timeout=60)
        return 0 if code is None else code


def quiet_baseline(agent: AgentProcess, read_kernel, timeout: float = 10.0):
    """The kernel's counters (`read_kernel()`) and a scrape of `agent` with
    nothing counted between them: the kernel read before the scrape and the
    one after it agree. The last segments of an earlier test (a FIN sent
    again, the ACK that answers it) still leave after that test ended; one
    counted between a lone kernel read and the scrape sits in one baseline and
    not the other, and every delta compared after differs by it (seen: a
    pod's OutSegs one above its segments sent)."""
    readings = [read_kernel()]      # the last two kernel reads

    def held_still():
        scrape = agent.scrape()
        readings[:] = [readings[-1], read_kernel()]
        return (readings[1], scrape) if readings[0] == readings[1] else None
    try:
        return wait_until(held_still, timeout=timeout, interval=0.05,
                          what="the kernel's counters to hold still around a scrape")
    except TimeoutError as e:
        raise TimeoutError(f"{e}; the last two kernel reads: {readings}") from e


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


