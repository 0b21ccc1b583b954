"""Time to render /metrics at about 1,000 and 10,000 series, from real kernel maps.

Series come from real connections between many distinct pod pairs: two lab
pods get many extra IPv6 addresses each, the static resolver names every
address a pod of its own (bench-clients/client-N, bench-servers/server-N), and
one connection per (client, server) pair fills the agent's maps with that
pair's counters and histograms. Pairs are added until the exposition holds the
target number of series (sample lines, as Prometheus counts them), then
GET /metrics is timed GETS times: the figure is the median, next to the max.
"""
from __future__ import annotations

import math
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from itertools import product
from pathlib import Path

import yaml

from bench.common import Figure, log, running_agent
from netprobe_testbed.netns import Lab

NAME = "metrics_render"
TARGET_MS = 100
SERIES_TARGETS = (1_000, 10_000)
GETS = 10
PODS_PER_SIDE = 80        # up to 6,400 pairs: far more than 10,000 series need
ECHO_PORT = 8080

# One connection per "src dst" line on stdin, from src (bound) to dst; prints how many worked.
_CONNECT_PAIRS = r"""
import socket, sys
port = int(sys.argv[1])
ok = 0
for line in sys.stdin:
    src, dst = line.split()
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as c:
            c.settimeout(10)
            c.bind((src, 0))
            c.connect((dst, port))
            c.sendall(b"p")
            c.shutdown(socket.SHUT_WR)  # the lab's echo server answers once the request is complete
            while c.recv(65536):
                pass
        ok += 1
    except OSError as e:
        print("error:", src, dst, e, file=sys.stderr)
print(ok)
"""


def count_series(exposition: str) -> int:
    return sum(1 for line in exposition.splitlines() if line and not line.startswith("#"))


def _add_addresses(pod, addresses: list[str]) -> None:
    batch = "".join(f"address add {a}/64 dev eth0 nodad\n" for a in addresses)
    subprocess.run(["ip", "netns", "exec", pod.netns, "ip", "-6", "-batch", "-"], input=batch, text=True,
                   check=True, capture_output=True)


def _connect_pairs(pod, pairs: list[tuple[str, str]]) -> int:
    res = subprocess.run(["ip", "netns", "exec", pod.netns, sys.executable, "-c", _CONNECT_PAIRS,
                          str(ECHO_PORT)], input="".join(f"{s} {d}\n" for s, d in pairs),
                         capture_output=True, text=True, timeout=60 + 10 * len(pairs))
    return int(res.stdout.strip() or 0)


def _timed_get(url: str) -> tuple[float, str]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as resp:
        body = resp.read().decode()
    return time.perf_counter() - started, body


def agent_collect_seconds(exposition: str) -> float | None:
    """The agent's own figure for reading its maps and building the scrape (before formatting)."""
    m = re.search(r"^netprobe_agent_scrape_duration_seconds(?:\{[^}]*\})? (\S+)$", exposition, flags=re.M)
    return float(m.group(1)) if m else None


def run(workdir: Path, **_) -> list[Figure]:
    figures = []
    with Lab(["clients", "servers"], prefix="npm") as lab:
        clients, servers = lab.pods["clients"], lab.pods["servers"]
        prefix = lab.host_ip6.rsplit("::", 1)[0]
        client_ips = [f"{prefix}::1:{i:x}" for i in range(1, PODS_PER_SIDE + 1)]
        server_ips = [f"{prefix}::2:{i:x}" for i in range(1, PODS_PER_SIDE + 1)]
        _add_addresses(clients, client_ips)
        _add_addresses(servers, server_ips)
        pods = ([{"namespace": "bench-clients", "pod": f"client-{i}", "workload": "client", "ips": [ip]}
                 for i, ip in enumerate(client_ips, 1)]
                + [{"namespace": "bench-servers", "pod": f"server-{i}", "workload": "server", "ips": [ip]}
                   for i, ip in enumerate(server_ips, 1)])
        resolver = workdir / "pods-render.yaml"
        resolver.write_text(yaml.safe_dump({"pods": pods}, sort_keys=False))
        lab.serve_tcp("servers", ECHO_PORT)
        # Servers vary fastest: every pair is a distinct (pod, peer) on both sides.
        pending = list(product(client_ips, server_ips))
        with running_agent(workdir, resolver, "render") as agent:
            url = agent.base_url + "/metrics"
            baseline = count_series(agent.metrics_text())
            pairs_done, series = 0, baseline
            for target in SERIES_TARGETS:
                while series < target and pending:
                    # Estimate how many more pairs reach the target from what a pair added so far.
                    per_pair = (series - baseline) / pairs_done if pairs_done and series > baseline else None
                    want = 2 if per_pair is None else math.ceil((target - series) / per_pair * 1.05)
                    batch, pending = pending[:max(want, 1)], pending[max(want, 1):]
                    ok = _connect_pairs(clients, batch)
                    if ok < len(batch):
                        log(f"{len(batch) - ok} of {len(batch)} connections failed")
                    pairs_done += ok
                    series = count_series(agent.metrics_text())
                    log(f"{pairs_done} pod pairs connected: {series:,} series")
                if series < target:
                    log(f"could not reach {target:,} series (stopped at {series:,})")
                timings, collect = [], []
                for _ in range(GETS):
                    took, body = _timed_get(url)
                    timings.append(took)
                    if (own := agent_collect_seconds(body)) is not None:
                        collect.append(own)
                median_ms, max_ms = statistics.median(timings) * 1e3, max(timings) * 1e3
                own = f", agent's own collect time median {statistics.median(collect) * 1e3:.1f} ms" \
                    if collect else ""
                log(f"{series:,} series, {len(body) / 1024:.0f} KiB: GET /metrics median {median_ms:.1f} ms, "
                    f"max {max_ms:.1f} ms{own}")
                figures.append(Figure(
                    NAME, f"GET /metrics at {series:,} series", median_ms, "ms",
                    f"<= {TARGET_MS}" if target >= 10_000 else "",
                    f"median of {GETS}, max {max_ms:.1f} ms, {len(body) / 1024:.0f} KiB, "
                    f"{pairs_done} pod pairs{own}"))
    return figures
