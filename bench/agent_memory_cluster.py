"""The whole agent's memory with a cluster-wide pod watch (issue 5's limit).

Starts the Go-built control plane, creates N pods (default 5,000) spread over
fake nodes, then runs the real agent — all four programs compiled by BCC and
loaded, the Kubernetes resolver watching every pod — and prints its RSS once
the resolver has synced, next to the same agent with a node-only watch.

    python -m bench.agent_memory_cluster [--pods 5000]
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from bench.resolver_memory import OWN_NODE, create_pods
from netprobe_testbed.agent import ALL_LABELS, ALL_PROGRAMS, AgentProcess, write_config
from netprobe_testbed.cluster import ControlPlane
from netprobe_testbed.polling import wait_for
from netprobe_testbed.processes import free_port

TARGET_MIB = 250


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024


def run_agent(kubeconfig: str, peers: str, workdir: Path, expected_pods: int) -> float:
    listen = f"127.0.0.1:{free_port()}"
    config = {
        "listen": listen,
        "node_name": OWN_NODE,
        "labels": list(ALL_LABELS),
        "resolver": {"kubernetes": {"peers": peers}},
        "programs": {p: {} for p in ALL_PROGRAMS},
    }
    path = write_config(workdir / f"agent-{peers}.yaml", config)
    agent = AgentProcess(path, workdir / f"agent-{peers}.log", listen,
                         env={"KUBECONFIG": kubeconfig, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).start()
    try:
        def synced():
            try:
                text = agent.metrics_text(timeout=5)
            except OSError:
                agent.check_running()
                return False
            cached = max((float(v) for v in re.findall(
                r'^netprobe_resolver_pods\{[^}]*state="live"[^}]*\} (\S+)$', text, re.M)), default=0)
            return cached >= expected_pods
        wait_for(f"the agent's resolver to cache {expected_pods} pods", synced, timeout=300, interval=1)
        time.sleep(3)  # let the list pages be freed
        return _rss_mib(agent.pid)
    finally:
        agent.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=5000)
    args = parser.parse_args(argv)
    with ControlPlane() as cp, tempfile.TemporaryDirectory(prefix="netprobe-bench-") as tmp:
        print(f"creating {args.pods} pods ...", flush=True)
        seconds = create_pods(str(cp.kubeconfig), args.pods, threads=8)
        print(f"created in {seconds:.1f}s; starting the agent (4 programs, BCC compile) ...", flush=True)
        node_pods = sum(1 for i in range(args.pods) if i % 50 == 0)
        node_rss = run_agent(str(cp.kubeconfig), "node", Path(tmp), node_pods)
        cluster_rss = run_agent(str(cp.kubeconfig), "cluster", Path(tmp), args.pods)
    verdict = "meets" if cluster_rss <= TARGET_MIB else "MISSES"
    print(f"agent RSS, 4 programs, node-only watch ({node_pods} pods):  {node_rss:6.1f} MiB")
    print(f"agent RSS, 4 programs, cluster watch ({args.pods} pods):   {cluster_rss:6.1f} MiB"
          f"   target <= {TARGET_MIB} MiB: {verdict}")
    print(f"cluster watch costs {cluster_rss - node_rss:+.1f} MiB "
          f"({(cluster_rss - node_rss) * 1024 / max(args.pods - node_pods, 1):.2f} KiB per extra pod)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
