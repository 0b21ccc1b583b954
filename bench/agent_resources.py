"""Agent memory and CPU: RSS after start and at steady state; CPU time at two packet rates.

The agent aggregates in the kernel and reads the maps only when scraped, so its
own CPU time should follow the scrapes, not the packets. Two windows of equal
length, the same scrape schedule (every SCRAPE_EVERY seconds, as a Prometheus
would, only more often), one sockperf ping-pong connection capped at a low
message rate in the first window and uncapped in the second. The packet rate is
counted on the server pod's veth; the agent's CPU time (user and system) comes
from /proc/<pid>/stat, its memory from /proc/<pid>/status.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bench.common import (Figure, interface_packets, log, process_cpu_ns, process_cpu_seconds,
                          process_memory_kib, running_agent)
from bench.traffic import sockperf_pingpong_argv, sockperf_round_trips_per_second, start_sockperf_server
from netprobe_testbed.netns import Lab

NAME = "agent_resources"
TARGET_RSS_MIB = 200
SCRAPE_EVERY = 2.0
LOW_RATE_MPS = 200  # messages/s in the low-rate window (each: a request and a response)


def _window(agent, client, server, seconds: float, mps: int | None) -> dict:
    """One measurement window: traffic for `seconds` while scraping on schedule."""
    cpu0, ns0 = process_cpu_seconds(agent.pid), process_cpu_ns(agent.pid)
    packets0, t0 = interface_packets(server.host_veth), time.monotonic()
    proc = client.popen(sockperf_pingpong_argv(server.ip4, seconds, mps=mps),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    next_scrape = t0
    while proc.poll() is None:
        if time.monotonic() >= next_scrape:
            agent.metrics_text()
            next_scrape += SCRAPE_EVERY
        time.sleep(0.05)
    output = proc.stdout.read()
    cpu1, ns1 = process_cpu_seconds(agent.pid), process_cpu_ns(agent.pid)
    packets1, t1 = interface_packets(server.host_veth), time.monotonic()
    return {"seconds": t1 - t0, "user": cpu1[0] - cpu0[0], "system": cpu1[1] - cpu0[1],
            "cpu": (ns1 - ns0) / 1e9,
            "packets_per_second": (packets1 - packets0) / (t1 - t0),
            "round_trips_per_second": sockperf_round_trips_per_second(output)}


def run(workdir: Path, seconds: float, **_) -> list[Figure]:
    window_seconds = max(2 * seconds, 10)
    with Lab(["client", "server"], prefix="npr") as lab:
        client, server = lab.pods["client"], lab.pods["server"]
        resolver = lab.write_static_resolver(workdir / "pods-resources.yaml", {
            "client": ("bench", "client-1", "client"), "server": ("bench", "server-1", "server")})
        start_sockperf_server(server, server.ip4)
        with running_agent(workdir, resolver, "resources") as agent:
            at_start = process_memory_kib(agent.pid)
            log(f"RSS after start: {at_start['VmRSS'] / 1024:.1f} MiB")
            low = _window(agent, client, server, window_seconds, LOW_RATE_MPS)
            log(f"low rate:  {low['packets_per_second']:,.0f} packets/s, agent CPU "
                f"{low['user']:.2f}s user + {low['system']:.2f}s system in {low['seconds']:.1f}s")
            high = _window(agent, client, server, window_seconds, None)
            log(f"high rate: {high['packets_per_second']:,.0f} packets/s, agent CPU "
                f"{high['user']:.2f}s user + {high['system']:.2f}s system in {high['seconds']:.1f}s")
            steady = process_memory_kib(agent.pid)

    scrapes = int(window_seconds // SCRAPE_EVERY) + 1

    def cpu_detail(w):
        return (f"{w['cpu']:.3f}s on CPU ({w['user']:.2f}s user + {w['system']:.2f}s system in clock "
                f"ticks) over {w['seconds']:.1f}s, "
                f"{w['packets_per_second']:,.0f} packets/s, ~{scrapes} scrapes")

    return [
        Figure(NAME, "agent RSS after start", at_start["VmRSS"] / 1024, "MiB", f"<= {TARGET_RSS_MIB}",
               f"peak so far {at_start['VmHWM'] / 1024:.1f} MiB (BCC compile included)"),
        Figure(NAME, "agent RSS at steady state", steady["VmRSS"] / 1024, "MiB", f"<= {TARGET_RSS_MIB}",
               f"after both traffic windows; peak {steady['VmHWM'] / 1024:.1f} MiB"),
        Figure(NAME, "packet rate high/low", high["packets_per_second"] / low["packets_per_second"], "ratio",
               detail=f"{low['packets_per_second']:,.0f} vs {high['packets_per_second']:,.0f} packets/s "
                      f"on the server's veth"),
        Figure(NAME, "agent CPU, low packet rate", low["cpu"] / low["seconds"] * 100, "% of a CPU",
               detail=cpu_detail(low)),
        Figure(NAME, "agent CPU, high packet rate", high["cpu"] / high["seconds"] * 100, "% of a CPU",
               detail=cpu_detail(high)),
        Figure(NAME, "agent CPU high/low rate", (high["cpu"] / high["seconds"]) / max(low["cpu"] / low["seconds"], 1e-9),
               "ratio", detail="about 1: independent of the packet rate (CPU time from schedstat)"),
    ]
