"""What every benchmark needs: an agent to run, its process figures, a place for results."""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from netprobe_testbed.agent import ALL_LABELS, ALL_PROGRAMS, AgentProcess, agent_config, write_config
from netprobe_testbed.processes import free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Figure:
    """One reported number, with the target it is judged against (if any)."""
    benchmark: str
    what: str
    value: float
    unit: str
    target: str = ""          # e.g. "<= 100"; empty: informational
    detail: str = ""          # how it was obtained, spread of the runs, ...

    def meets(self) -> bool | None:
        m = re.fullmatch(r"\s*(<=|>=)\s*([0-9.]+)\s*", self.target)
        if not m or self.value != self.value:   # no target, or no value (nan)
            return None
        bound = float(m.group(2))
        return self.value <= bound if m.group(1) == "<=" else self.value >= bound


def log(msg: str) -> None:
    print(f"  {msg}", flush=True)


def machine_state() -> str:
    """Kernel, CPUs and load, for the record next to the figures."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return f"{platform.node()} Linux {platform.release()}, {os.cpu_count()} CPUs; uptime: {uptime}"


@contextmanager
def running_agent(workdir: Path, resolver_file: Path, tag: str, programs=ALL_PROGRAMS,
                  labels=ALL_LABELS):
    """Start the agent (its own free port, log in workdir), yield it once ready, stop it."""
    listen = f"127.0.0.1:{free_port()}"
    config = write_config(workdir / f"agent-{tag}.yaml", agent_config(listen, resolver_file, programs, labels))
    agent = AgentProcess(config, workdir / f"agent-{tag}.log", listen).start()
    try:
        took = agent.wait_ready(progress=lambda t: log(f"... agent not ready yet ({t:.0f}s)"), every=10)
        log(f"agent ready after {took:.1f}s (pid {agent.pid}, {agent.base_url})")
        yield agent
    finally:
        agent.stop()


# Program types that sit on the paths these benchmarks load (packets, TCP events).
PATH_PROGRAM_TYPES = {"tracepoint", "raw_tracepoint", "kprobe", "tracing", "sched_cls", "xdp", "socket_filter"}


def bpf_programs_on_path(exclude: set[int] = frozenset()) -> int:
    """How many BPF programs of those types are loaded, besides `exclude` (ids).

    Other engineers' tests load agents too; their programs cost the same on the
    "off" and the "on" side, but a reader of the figures should know they were there.
    """
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True)
    return sum(1 for p in json.loads(out.stdout) if p.get("type") in PATH_PROGRAM_TYPES and p["id"] not in exclude)


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS  # utime, stime


class CpuAccount:
    """CPU time of one process and all its threads, ended ones included, in ns.

    A threaded HTTP server runs each scrape in a short-lived thread, and
    /proc/<pid>/stat counts in clock ticks (10 ms): too coarse for a quiet
    agent. So the process is moved into its own cpuacct cgroup (v1 or v2)
    whose counters are exact; without one, clock ticks it is (`precise` False).
    """

    V1 = Path("/sys/fs/cgroup/cpuacct")
    V2 = Path("/sys/fs/cgroup/unified")

    def __init__(self, pid: int):
        self.pid, self.group, self.precise = pid, None, False
        for root, procs in ((self.V1, "cgroup.procs"), (self.V2, "cgroup.procs")):
            if (root / "cpuacct.usage").exists() or (root / "cgroup.controllers").exists():
                group = root / f"netprobe-bench-{os.getpid()}-{pid}"
                try:
                    group.mkdir()
                    (group / procs).write_text(str(pid))
                except OSError:
                    self._remove(group, root)
                    continue
                self.group, self.root, self.precise = group, root, True
                return

    def total_ns(self) -> int:
        """User + system time; exact with a cgroup (v1 cpuacct.usage sums the scheduler's runtime)."""
        if self.group is not None:
            if (self.group / "cpuacct.usage").exists():
                return int((self.group / "cpuacct.usage").read_text())
            stat = dict(line.split() for line in (self.group / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) * 1000
        return sum(self.user_system_ns())

    def user_system_ns(self) -> tuple[int, int]:
        """The split into user and system time (v1 samples it per clock tick: coarse)."""
        if self.group is not None:
            if (self.group / "cpuacct.usage_user").exists():  # v1
                return (int((self.group / "cpuacct.usage_user").read_text()),
                        int((self.group / "cpuacct.usage_sys").read_text()))
            stat = dict(line.split() for line in (self.group / "cpu.stat").read_text().splitlines())
            return int(stat["user_usec"]) * 1000, int(stat["system_usec"]) * 1000
        user, system = process_cpu_seconds(self.pid)
        return int(user * 1e9), int(system * 1e9)

    def close(self) -> None:
        if self.group is not None:
            self._remove(self.group, self.root)
            self.group = None

    def _remove(self, group: Path, root: Path) -> None:
        if not group.exists():
            return
        for pid in (group / "cgroup.procs").read_text().split():  # still running: back to the root
            try:
                (root / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        try:
            group.rmdir()
        except OSError:
            pass


def process_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def interface_packets(ifname: str) -> int:
    """rx + tx packets of an interface in the root network namespace."""
    stats = Path(f"/sys/class/net/{ifname}/statistics")
    return int((stats / "rx_packets").read_text()) + int((stats / "tx_packets").read_text())


def spread(values: list[float], fmt: str = "{:.3g}") -> str:
    """'runs 1.2, 1.3 (median 1.25, spread 8.0 %)' for the detail column;
    the spread is (max - min) / median of the repetitions."""
    median = statistics.median(values)
    rel = f", spread {(max(values) - min(values)) / abs(median) * 100:.1f} %" if len(values) > 1 and median else ""
    return f"runs {', '.join(fmt.format(v) for v in values)} (median {fmt.format(median)}{rel})"


def wait_listening(pod, port: int, timeout: float = 15) -> None:
    """Wait until something listens on TCP `port` inside a lab pod (servers we start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pod.run(["ss", "-Hltn", f"sport = :{port}"]).stdout.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} in {pod.name} after {timeout}s")
