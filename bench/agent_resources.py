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

import re
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import CpuAccount, Figure, interface_packets, log, process_memory_kib, running_agent
from bench.metrics_render import agent_collect_seconds, count_series
from bench.traffic import sockperf_pingpong_argv, sockperf_round_trips_per_second, start_sockperf_server
from netprobe_testbed.netns import Lab

NAME = "agent_resources"
TARGET_RSS_MIB = 200
SCRAPE_EVERY = 2.0
WARMUP_SCRAPES = 3
LOW_RATE_MPS = 200  # messages/s in the low-rate window (each: a request and a response)


def map_entries(exposition: str) -> int:
    """Entries in all the agent's BPF maps (netprobe_map_entries), what a scrape walks."""
    return int(sum(float(v) for v in re.findall(r"^netprobe_map_entries\{[^}]*\} (\S+)$", exposition, flags=re.M)))


def _window(agent, cpu: CpuAccount, client, server, seconds: float, mps: int | None, scrape: bool) -> dict:
    """One measurement window: traffic for `seconds`, scraping on schedule if `scrape`."""
    cpu0, total0 = cpu.user_system_ns(), cpu.total_ns()
    packets0, t0 = interface_packets(server.host_veth), time.monotonic()
    proc = client.popen(sockperf_pingpong_argv(server.ip4, seconds, mps=mps),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    next_scrape, expositions = t0, []
    while proc.poll() is None:
        if scrape and time.monotonic() >= next_scrape:
            expositions.append(agent.metrics_text())
            next_scrape += SCRAPE_EVERY
        time.sleep(0.05)
    output = proc.stdout.read()
    cpu1, total1 = cpu.user_system_ns(), cpu.total_ns()
    packets1, t1 = interface_packets(server.host_veth), time.monotonic()
    user, system = (cpu1[0] - cpu0[0]) / 1e9, (cpu1[1] - cpu0[1]) / 1e9
    scraped = {}
    if expositions:
        collect = [c for c in map(agent_collect_seconds, expositions) if c is not None]
        scraped = {"series": count_series(expositions[-1]), "map_entries": map_entries(expositions[-1]),
                   "collect_ms": statistics.median(collect) * 1e3 if collect else float("nan")}
    return {"seconds": t1 - t0, "user": user, "system": system, "cpu": (total1 - total0) / 1e9, **scraped,
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
            cpu = CpuAccount(agent.pid)
            for _ in range(WARMUP_SCRAPES):  # first scrapes build caches: not steady state
                agent.metrics_text()
                time.sleep(SCRAPE_EVERY)
            try:
                windows = {}
                for scrape in (False, True):
                    for rate, mps in (("low", LOW_RATE_MPS), ("high", None)):
                        w = _window(agent, cpu, client, server, window_seconds, mps, scrape)
                        windows[rate, scrape] = w
                        log(f"{rate:>4} rate, {'scraped every %gs' % SCRAPE_EVERY if scrape else 'no scrapes':<17}: "
                            f"{w['packets_per_second']:>9,.0f} packets/s, agent CPU {w['cpu']:.4f}s in {w['seconds']:.1f}s")
                steady = process_memory_kib(agent.pid)
            finally:
                cpu.close()
            how = "cpuacct cgroup" if cpu.precise else "clock ticks of /proc/<pid>/stat"

    scrapes = int(window_seconds // SCRAPE_EVERY) + 1

    def percent(w):
        return w["cpu"] / w["seconds"] * 100

    def detail(w, scrape):
        text = (f"{w['cpu']:.4f} CPU s ({w['user']:.2f}s user + {w['system']:.2f}s system in ticks) "
                f"over {w['seconds']:.1f}s at {w['packets_per_second']:,.0f} packets/s")
        if not scrape:
            return text + ", not scraped"
        return (text + f", {scrapes} scrapes of {w['series']:,} series from {w['map_entries']:,} map entries "
                f"(agent's collect time median {w['collect_ms']:.1f} ms)")

    low, high = windows["low", False], windows["high", False]
    figures = [
        Figure(NAME, "agent RSS after start", at_start["VmRSS"] / 1024, "MiB", f"<= {TARGET_RSS_MIB}",
               f"peak so far {at_start['VmHWM'] / 1024:.1f} MiB (BCC compile included)"),
        Figure(NAME, "agent RSS at steady state", steady["VmRSS"] / 1024, "MiB", f"<= {TARGET_RSS_MIB}",
               f"after {len(windows)} traffic windows; peak {steady['VmHWM'] / 1024:.1f} MiB"),
        Figure(NAME, "packet rate high/low", high["packets_per_second"] / low["packets_per_second"], "ratio",
               detail=f"{low['packets_per_second']:,.0f} vs {high['packets_per_second']:,.0f} packets/s "
                      f"on the server's veth"),
    ]
    for scrape in (False, True):
        low, high = windows["low", scrape], windows["high", scrape]
        suffix = "scraped" if scrape else "not scraped"
        figures += [
            Figure(NAME, f"agent CPU, low packet rate, {suffix}", percent(low), "% of a CPU",
                   detail=detail(low, scrape)),
            Figure(NAME, f"agent CPU, high packet rate, {suffix}", percent(high), "% of a CPU",
                   detail=detail(high, scrape)),
        ]
    for scrape in (False, True):
        figures.append(Figure(
            NAME, f"agent CPU high/low packet rate, {'scraped' if scrape else 'not scraped'}",
            percent(windows["high", scrape]) / max(percent(windows["low", scrape]), 1e-9), "ratio",
            detail=f"1 = independent of the packet rate; CPU time from the {how}"))
    return figures
